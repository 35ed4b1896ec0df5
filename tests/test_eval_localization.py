"""End-to-end tests of ``python -m eval.localization`` on tiny models."""

import dataclasses
import json
import os

import numpy as np
import pytest

from eval import localization, restore
from train import oneclass
from vae_attn import anomaly, runs
from vae_attn.data import textures


@pytest.fixture(scope="module")
def texture_root(tmp_path_factory):
  """A tiny textured-defect set (one category, MVTec-AD layout)."""
  return textures.ensure_dataset(
    tmp_path_factory.mktemp("data"),
    categories=("brick",),
    image_size=64,
    num_train=4,
    num_test=6,
  )


def _write_checkpoint(workdir, run, *, with_stats):
  """A one-class run directory as the trainers write it (vae_attn.runs)."""
  state = {"step": np.int32(2), "params": run.variables["params"]}
  if "batch_stats" in run.variables:
    state["batch_stats"] = run.variables["batch_stats"]
  extras = {}
  if with_stats:
    d = run.latent_dim
    extras["latent_stats"] = anomaly.LatentStats(
      np.zeros(d, np.float32), np.ones(d, np.float32), np.float32(4)
    )
  kwargs = {"latent_dim": run.latent_dim}
  if run.name == "resnet18":
    kwargs["image_size"] = run.input_shape[0]
  spec = runs.RunSpec(
    trainer="oneclass",
    model=run.name,
    model_kwargs=kwargs,
    input_shape=run.input_shape,
    data="textures",
    data_kwargs={"category": "brick"},
  )
  os.makedirs(workdir, exist_ok=True)
  runs.write_json(workdir / runs.SPEC_NAME, spec.to_dict())
  config = {"dataset": "textures", "category": "brick"}
  with runs.checkpoint_manager(workdir) as mngr:
    runs.save(
      mngr, 2, state=state, config=config, spec=spec, extras=extras, wait=True
    )
  return str(workdir)


def _table_rows(report):
  lines = report.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith("|"):
      break
    rows.append([c.strip() for c in line.strip("|").split("|")])
  return rows


@pytest.fixture(scope="module")
def oneclass_workdir(tmp_path_factory):
  """A ResNet one-class VAE trained 2 steps on the textured-defect set."""
  cache = tmp_path_factory.mktemp("cache")
  # The QUICK configuration of notebook 02 (and of test_train_oneclass's
  # textures run), so that the three share compiled programs.
  config = dataclasses.replace(
    oneclass.PRESETS["textures"],
    data_dir=str(cache),
    image_size=64,
    num_steps=2,
    log_every=1,
    checkpoint_every=2,
    eval_num_examples=0,
  )
  path = str(tmp_path_factory.mktemp("oneclass"))
  oneclass.train_and_evaluate(config, path)
  return path


def test_trained_resnet_on_textures_end_to_end(oneclass_workdir, tmp_path):
  out = tmp_path / "out"
  # Data options come from the training config (textures in its cache).
  rc = localization.main(
    [
      f"--workdir={oneclass_workdir}",
      "--num-samples=2",
      "--max-images=8",
      "--num-overlays=3",
      f"--out={out}",
    ]
  )
  assert rc == 0
  for name in ("report.md", "results.json", "roc.png", "overlays.png"):
    assert (out / name).stat().st_size > 0, name
  results = json.loads((out / "results.json").read_text())
  assert results["meta"]["latent_stats"] == "checkpoint"
  assert results["meta"]["dataset"] == "textures"
  assert results["meta"]["category"] == textures.CATEGORIES[0]
  methods = [(r["method"], r["code"], r["layer"]) for r in results["rows"]]
  assert methods == [
    ("attention", "mu", "stage2_block1/conv1"),
    ("attention", "difference", "stage2_block1/conv1"),
    ("residual", None, None),
  ]
  for row in results["rows"]:
    for key, _ in localization.COLUMNS:
      assert 0.0 <= row[key] <= 1.0, (row, key)
  rows = _table_rows((out / "report.md").read_text())
  assert len(rows) == 3
  for row in rows:
    assert all(cell not in ("", "-") for cell in row[3:]), row
  assert results["elapsed_time"] > 0


@pytest.fixture(scope="module")
def mnist_workdir(tmp_path_factory):
  """A two-conv (MNIST) encoder, without saved latent statistics."""
  run = restore.init_model("mnist", latent_dim=4)
  path = tmp_path_factory.mktemp("mnist") / "run"
  return _write_checkpoint(path, run, with_stats=False)


def test_ablation_and_computed_statistics(mnist_workdir, texture_root):
  # Grey 28x28 crops: conv1/conv2 vs residual; statistics from train/good.
  workdir = mnist_workdir
  rc = localization.main(
    [
      f"--workdir={workdir}",
      f"--root={texture_root}",
      "--ablation",
      "--codes",
      "mu",
      "--batch-size=4",
    ]
  )
  assert rc == 0
  out = os.path.join(workdir, "eval", "localization")
  results = json.load(open(os.path.join(out, "results.json")))
  assert results["meta"]["latent_stats"].startswith("computed")
  assert results["ablation"]["layers"] == ["encoder/conv1", "encoder/conv2"]
  table = "\n".join(results["ablation"]["table"])
  assert "| conv1 |" in table and "| conv2 |" in table
  assert "| residual |" in table
  assert os.path.getsize(os.path.join(out, "ablation.png")) > 0


def test_errors_name_the_fix(tmp_path, mnist_workdir, capsys):
  rc = localization.main([f"--workdir={tmp_path}"])
  assert rc == 2
  assert "No checkpoints" in capsys.readouterr().err
  workdir = mnist_workdir
  rc = localization.main([f"--workdir={workdir}", "--dataset=mvtec"])
  assert rc == 2
  assert "--root" in capsys.readouterr().err
  rc = localization.main([f"--workdir={workdir}", "--layers=conv9"])
  assert rc == 2
  assert "valid layers" in capsys.readouterr().err


def test_pick_overlay_images_cycles_defect_types():
  data = {
    "label": np.array([0, 1, 1, 1, 0, 1], bool),
    "has_mask": np.ones(6, bool),
    "defect_type": np.array(["good", "a", "a", "b", "good", "b"], object),
  }
  assert localization.pick_overlay_images(data, 4) == [1, 3, 2, 0]


def test_score_pools_masked_images_and_ranks_all_for_image_auroc():
  # Image 3 is anomalous without a pixel mask (a folder set without masks):
  # it enters image AUROC but not the pixel metrics.
  masks = np.zeros((4, 4, 4), bool)
  masks[1, :2, :2] = True
  masks[2, 2:, 2:] = True
  perfect = masks.astype(np.float32)
  perfect[3] = 0.5
  data = {
    "mask": masks,
    "label": np.array([0, 1, 1, 1], bool),
    "has_mask": np.array([1, 1, 1, 0], bool),
  }
  scores, curves = localization.score({"perfect": perfect}, data)
  got = scores["perfect"]
  assert got["pixel_auroc"] == 1.0 and got["best_iou"] == 1.0
  assert got["aupro"] == pytest.approx(1.0)
  assert got["image_auroc_max"] == 1.0
  fpr, tpr, auc = curves["perfect"]
  assert auc == 1.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0


def test_score_needs_anomalous_pixels():
  data = {
    "mask": np.zeros((2, 4, 4), bool),
    "label": np.array([0, 1], bool),
    "has_mask": np.ones(2, bool),
  }
  with pytest.raises(ValueError, match="No anomalous pixel"):
    localization.score({"m": np.zeros((2, 4, 4))}, data)


def test_subset_is_evenly_spaced():
  source = list(range(10))
  picked = localization.subset(source, 4)
  assert [picked[i] for i in range(len(picked))] == [0, 3, 6, 9]
  assert localization.subset(source, None) is source
