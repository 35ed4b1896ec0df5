"""End-to-end test of ``python -m eval.disentanglement`` on a tiny run."""

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import warnings

import numpy as np
import pytest

from eval import disentanglement, restore
from eval.metrics import sampling
from tests import ground_truth
from train import factorvae
from workflow import runs


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
  factorvae.train_and_evaluate(config, path, report=False)
  return path


QUICK_FIGURES = ["--num-images=2", "--num-traversals=2", "--traversal-steps=3"]


def test_end_to_end_every_score_and_figure(workdir, tmp_path, capsys):
  out = tmp_path / "out"
  rc = disentanglement.main(
    [
      f"--workdir={workdir}",
      "--quick",  # Also picks the random-forest DCI, no code table.
      *QUICK_FIGURES,
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
  assert results["meta"]["tabulate"] is False
  assert results["meta"]["dci_importance"] == "random_forest"
  top = results["figures"]["attention"]["top_latents"]
  assert len(top) == 2 and all(len(set(t)) == 2 for t in top)
  # Every score names the sizes it was measured at (issue 14).
  assert results["sample_sizes"]["mig"] == {"num_train": 1000}
  assert results["sample_sizes"]["factor_vae/paper"]["num_per_vote"] == 20
  assert set(results["timings"]) >= {"mig", "dci", "figures"}
  report = (out / "report.md").read_text()
  for key, _ in disentanglement.SCORES:
    line = next(line for line in report.splitlines() if f"`{key}`" in line)
    assert "| - |" not in line, line
  mig_line = next(line for line in report.splitlines() if "| `mig` |" in line)
  assert "train=1,000" in mig_line
  dci_line = next(line for line in report.splitlines() if "`dci/" in line)
  assert "train=300, test=150, importance=random_forest" in dci_line
  # The training log's score (paper convention, the run's sizes) and why
  # the quick one differs.
  logged = results["training_log"]
  assert logged["convention"] == "paper"
  assert logged["sample_sizes"] == {
    "num_per_vote": 100,
    "num_train": 800,
    "num_eval": 10,
    "num_variance_estimate": 100,
  }
  assert "The training log ends with a FactorVAE score of" in report
  assert "L=100, train=800, eval=10, variance images=100" in report
  # A stage line per step (issue 14).
  err = capsys.readouterr().err
  for stage in (
    r"restoring \S+",
    r"metric 5/6: DCI \(num_train=300, num_test=150\)",
    r"metric 6/6: SAP done in [\d.]+ s",
    r"figure 2/2: latent traversals",
    r"writing \S+report.md",
  ):
    assert re.search(r"^\[\d\d:\d\d:\d\d\] " + stage + "$", err, re.M), stage


def test_a_run_is_rebuilt_from_its_spec_not_its_parameters(workdir, tmp_path):
  run = restore.load_run(workdir)
  assert (run.name, run.latent_dim, run.input_shape) == (
    "factorvae",
    4,
    (64, 64, 1),
  )
  assert run.spec.data == "procedural" and run.default_layer == "encoder/conv1"
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval"))
  (copy / runs.SPEC_NAME).unlink()
  with pytest.raises(FileNotFoundError, match="spec.json is missing"):
    restore.load_run(copy)


@pytest.fixture(scope="module")
def oneclass_workdir(tmp_path_factory):
  """A one-class run (MNIST VAE on textures): no ground-truth factors."""
  run = restore.init_model("mnist", latent_dim=4)
  path = tmp_path_factory.mktemp("oneclass") / "run"
  spec = runs.RunSpec(
    trainer="oneclass",
    model="mnist",
    model_kwargs={"latent_dim": 4},
    input_shape=run.input_shape,
    data="textures",
  )
  path.mkdir()
  runs.write_json(path / runs.SPEC_NAME, spec.to_dict())
  state = {"step": np.int32(1), "params": run.variables["params"]}
  with runs.checkpoint_manager(path) as mngr:
    runs.save(mngr, 1, state=state, wait=True)
  return str(path)


# (argv, exit status, key words of the one error line); {w}: the FactorVAE
# run, {o}: a one-class run, {t}: an empty folder, {f}: a file.
@pytest.mark.parametrize(
  "argv, status, words",
  [
    (["--workdir={t}", "--out={f}"], 2, ["cannot write", "--out="]),
    (["--workdir={t}/nope"], 2, ["does not exist", "--workdir="]),
    (["--workdir={w}", "--data=npz"], 2, ["--data-dir"]),
    (
      ["--workdir={w}", "--data=tfds", "--data-dir={t}"],
      2,
      ["tfds build dsprites"],
    ),
    # A run it does not apply to names the evaluators that do.
    (
      ["--workdir={o}"],
      2,
      ["train.oneclass run", "does not apply", "eval.localization --workdir="],
    ),
  ],
)
def test_errors_are_one_line_with_the_fix(
  workdir, oneclass_workdir, tmp_path, capsys, argv, status, words
):
  afile = tmp_path / "afile"
  afile.write_text("x")
  names = dict(w=workdir, o=oneclass_workdir, t=tmp_path, f=afile)
  argv = [a.format(**names) for a in argv]
  assert disentanglement.main([*argv, "--quick", *QUICK_FIGURES]) == status
  err = [
    line for line in capsys.readouterr().err.splitlines() if line[:1] != "["
  ]
  assert len(err) == 1 and err[0].startswith("error: "), err
  for word in words:
    assert word in err[0], (word, err[0])
  assert not (tmp_path / "nope").exists()  # Its default --out is inside.
  assert not os.path.exists(os.path.join(oneclass_workdir, "eval"))


def test_a_grid_folder_scores_every_member_sharing_one_encoding_pass(
  workdir, tmp_path, monkeypatch, capsys
):
  # A grid folder (member runs in sub-folders) and one of its members again:
  # one command scores each run once and prints where each report is. With
  # the code table on, the members' encoders share one rendering pass of the
  # ground-truth data (here a spy that keeps the data as it is).
  calls = []

  def spy(data, functions, random_state, **kwargs):
    calls.append(len(functions))
    return data, list(functions)

  monkeypatch.setattr(disentanglement.suite, "tabulate_all", spy)
  grid = tmp_path / "grid"
  grid.mkdir()
  for name in ("tc_seed0", "tc_seed1"):
    (grid / name).symlink_to(workdir)
  argv = [str(grid), str(grid / "tc_seed0"), "--quick", "--tabulate"]
  assert disentanglement.main(["--workdir", *argv, *QUICK_FIGURES]) == 0
  assert calls == [2]
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3  # Two runs (the repeat counts once), then how
  assert "eval.aggregate" in lines[-1]  # to compare them.
  for name in ("tc_seed0", "tc_seed1"):
    report = grid / name / "eval" / "disentanglement_quick" / "report.md"
    assert any(str(report) in line for line in lines), name
  # --quick writes to its own folder, not the full evaluation's.
  quick = pathlib.Path(workdir, "eval", "disentanglement_quick")
  assert json.loads((quick / "results.json").read_text())["meta"]["quick"]
  full = pathlib.Path(disentanglement.default_out(workdir, quick=False))
  assert full == pathlib.Path(workdir, "eval", "disentanglement")
  assert not full.exists()


@pytest.mark.parametrize(
  "argv, status, words",
  [
    (["--workdir", "{grid}", "--out={tmp}/o"], 2, ["--out", "2 runs"]),
    (["--workdir={tmp}/empty"], 2, ["holds no run", "--workdir"]),
  ],
)
def test_grid_errors(workdir, tmp_path, capsys, argv, status, words):
  grid = tmp_path / "grid"
  grid.mkdir()
  (tmp_path / "empty").mkdir()
  for name in ("a", "b"):
    (grid / name).symlink_to(workdir)
  argv = [a.format(grid=grid, tmp=tmp_path) for a in argv]
  assert disentanglement.main([*argv, "--quick"]) == status
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  for word in words:
    assert word in err[0], (word, err[0])


def test_representation_function_gives_mu_and_the_kl_per_dimension(workdir):
  run = restore.load_run(workdir)
  x = np.random.default_rng(0).random((3, 64, 64, 1)).astype(np.float32)
  out = disentanglement.representation_function(run)(x)
  mu, logvar = (np.asarray(a) for a in run.encode_fn(run.variables, x))
  d = run.latent_dim
  np.testing.assert_allclose(out[:, :d], mu, rtol=1e-5, atol=1e-6)
  kl = 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0)
  np.testing.assert_allclose(out[:, d:], kl, rtol=1e-4, atol=1e-6)


def test_metric_warnings_become_notes_once():
  data = ground_truth.IdentityData((4, 1, 5))

  def mu_and_kl(observations):  # Identity codes, 1 nat of KL each.
    codes = ground_truth.identity_representation(observations)
    return np.concatenate([codes, np.ones_like(codes)], axis=1)

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    scored = disentanglement.score(
      mu_and_kl, 3, data, seed=0, quick=True, tabulate=True
    )
  assert not [w for w in caught if w.category is sampling.ConstantFactorWarning]
  assert len(scored.notes) == 1 and "Dropping factor 1" in scored.notes[0]
  assert scored.scores["factor_vae/paper/eval_accuracy"] == 1.0
  assert scored.sample_sizes["sap"] == {"num_train": 500, "num_test": 250}
  assert "encode all images" in scored.timings


def test_training_log_score_reads_the_last_logged_score(tmp_path):
  rows = [
    {"step": 10, "train/loss": 1.0},
    {"step": 10, "eval/factor_vae_eval_accuracy": 0.5},
    {"step": 20, "eval/factor_vae_eval_accuracy": 0.68},
  ]
  text = "\n".join(json.dumps(r) for r in rows) + "\n{broken"
  (tmp_path / "metrics.jsonl").write_text(text)
  config = {
    "score_convention": "disentanglement_lib",
    "score_num_train": 200,
    "score_num_eval": 0,
    "score_num_variance": 0,
    "seed": 3,
  }
  logged = disentanglement.training_log_score(str(tmp_path), config)
  assert logged == {
    "eval_accuracy": 0.68,
    "step": 20,
    "convention": "disentanglement_lib",
    "sample_sizes": {
      "num_per_vote": 64,
      "num_train": 200,
      "num_eval": 5000,
      "num_variance_estimate": 10000,
    },
    "seed": 3,
  }
  missing = str(tmp_path / "none")
  assert disentanglement.training_log_score(missing, config) is None
