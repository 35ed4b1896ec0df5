"""End-to-end test of ``python -m eval.disentanglement`` on a tiny run."""

import dataclasses
import json
import math

import pytest

from eval import disentanglement
from train import factorvae


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2-step FactorVAE (D = 4) on the procedural dSprites."""
  config = dataclasses.replace(
    factorvae.PRESETS["smoke"],
    loss="tc",
    latent_dim=4,
    num_steps=2,
    score_num_train=0,
  )
  path = str(tmp_path_factory.mktemp("fv"))
  factorvae.train_and_evaluate(config, path)
  return path


def test_end_to_end_every_score_and_figure(workdir, tmp_path):
  out = tmp_path / "out"
  rc = disentanglement.main(
    [
      f"--workdir={workdir}",
      "--quick",  # Also picks the random-forest DCI.
      "--num-images=2",
      "--num-traversals=2",
      "--traversal-steps=3",
      f"--out={out}",
    ]
  )
  assert rc == 0
  for name in ("report.md", "results.json", "attention.png", "traversals.png"):
    assert (out / name).stat().st_size > 0, name
  results = json.loads((out / "results.json").read_text())
  for key, _ in disentanglement.SCORES:
    assert math.isfinite(results["scores"][key]), key
  assert set(results["conventions"]) == {"disentanglement_lib", "paper"}
  assert results["meta"]["objective"] == "FactorVAE (gamma=40.0)"
  assert results["meta"]["quick"] is True
  assert results["meta"]["dci_importance"] == "random_forest"
  top = results["figures"]["attention"]["top_latents"]
  assert len(top) == 2 and all(len(set(t)) == 2 for t in top)
  report = (out / "report.md").read_text()
  for key, _ in disentanglement.SCORES:
    line = next(line for line in report.splitlines() if f"`{key}`" in line)
    assert "| - |" not in line, line


def test_data_without_factors_is_refused(workdir, capsys):
  rc = disentanglement.main([f"--workdir={workdir}", "--data=npz"])
  assert rc == 2
  assert "--data-path" in capsys.readouterr().err
