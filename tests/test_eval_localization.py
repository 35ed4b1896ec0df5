"""End-to-end tests of ``python -m eval.localization`` on tiny models."""

import argparse
import dataclasses
import errno
import json
import os

import chex
import jax
import numpy as np
import pytest
import sklearn.metrics

from eval import cli, localization, restore
from train import oneclass
from vae_attn import attention
from vae_attn.data import textures
from workflow import runs


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


def _write_checkpoint(workdir, run, *, trainer="oneclass"):
  """A run directory as the trainers write it (workflow.runs), without
  latent statistics."""
  one_class = trainer == "oneclass"
  spec = runs.RunSpec(
    trainer=trainer,
    model=run.name,
    model_kwargs={"latent_dim": run.latent_dim},
    input_shape=run.input_shape,
    data="textures" if one_class else "procedural",
    data_kwargs={"category": "brick"} if one_class else {},
  )
  os.makedirs(workdir, exist_ok=True)
  config = {"dataset": "textures", "category": "brick"}
  runs.write_run_files(workdir, config, spec)
  state = {"step": np.int32(2), "params": run.variables["params"]}
  with runs.checkpoint_manager(workdir) as mngr:
    runs.save(mngr, 2, state=state, wait=True)
  return str(workdir)


def _error_lines(err):
  """stderr without the progress lines (``[HH:MM:SS] ...``)."""
  return [line for line in err.strip().splitlines() if not line[:1] == "["]


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
  """The default one-class run (a ResNet-18 with BatchNorm on the textured
  defects) trained for 2 steps at 64x64, notebook 02's QUICK input size;
  training it to a useful model and evaluating that is notebook 02's run."""
  config = dataclasses.replace(
    oneclass.PRESETS["textures"],
    data_dir=str(tmp_path_factory.mktemp("cache")),
    image_size=64,
    num_steps=2,
    log_every=1,
    checkpoint_every=2,
    eval_num_examples=0,
  )
  workdir = tmp_path_factory.mktemp("oneclass")
  state = oneclass.train_and_evaluate(config, str(workdir), report=False)
  assert int(state.step) == 2
  return workdir


def test_the_default_resnet_trains_with_batchnorm(oneclass_workdir):
  _, restored = runs.restore(oneclass_workdir, items=("state", "latent_stats"))
  state = restored["state"]
  chex.assert_tree_all_finite(state["params"])
  # Running means start at zero; training steps update them.
  means = [
    np.abs(np.asarray(leaf)).max()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["batch_stats"])
    if "mean" in jax.tree_util.keystr(path)
  ]
  assert means and max(means) > 0
  assert np.asarray(restored["latent_stats"]["mean"]).shape == (32,)


def test_trained_resnet_on_textures_end_to_end(oneclass_workdir, tmp_path):
  out = tmp_path / "out"
  # Data options come from the run spec (textures in its cache).
  rc = localization.main(
    [
      f"--workdir={oneclass_workdir}",
      "--num-samples=2",
      "--max-images=4",
      "--num-overlays=3",
      f"--out={out}",
    ]
  )
  assert rc == 0
  for name in ("report.md", "results.json", "roc.png", "overlays.png"):
    assert (out / name).stat().st_size > 0, name
  results = json.loads((out / "results.json").read_text())
  meta = results["meta"]
  assert meta["latent_stats"] == "checkpoint"
  assert meta["dataset"] == meta["trained_on"] == "textures"
  assert meta["category"] == textures.CATEGORIES[0]
  # The MVTec-AD protocol by default: the textures' masks are 128x128.
  assert meta["resolution"] == "original" and "128x128" in meta["protocol"]
  methods = [(r["method"], r["code"], r["layer"]) for r in results["rows"]]
  assert methods == [
    ("attention", "mu", "stage2_block1/conv1"),
    ("attention", "difference", "stage2_block1/conv1"),
    ("residual", None, None),
  ]
  for row in results["rows"]:
    for key, _ in localization.COLUMNS:
      assert 0.0 <= row[key] <= 1.0, (row, key)
    assert row["pixel_auroc_error_bound"] < 1e-3
  report = (out / "report.md").read_text()
  assert "--resolution=original" in report and "128x128" in report
  assert "Model `resnet18` trained on textures data" in report
  rows = _table_rows(report)
  assert len(rows) == 3
  for row in rows:
    assert all(cell not in ("", "-") for cell in row[3:]), row
  assert results["elapsed_time"] > 0


@pytest.fixture(scope="module")
def mnist_workdir(tmp_path_factory):
  """A two-conv (MNIST) encoder, without saved latent statistics."""
  run = restore.init_model("mnist", latent_dim=4)
  path = tmp_path_factory.mktemp("mnist") / "run"
  return _write_checkpoint(path, run)


def test_ablation_model_resolution_and_every_defect_shown(
  mnist_workdir, texture_root, capsys
):
  # Grey 28x28 crops: conv1/conv2 vs residual; statistics from train/good.
  workdir = mnist_workdir
  rc = localization.main(
    [
      f"--workdir={workdir}",
      f"--root={texture_root}",  # The old name of --data-dir still works.
      "--ablation",
      "--layers=conv2",  # A unique suffix of encoder/conv2.
      "--batch-size=4",
      "--num-samples=2",
      "--num-overlays=5",
      "--resolution=model",
    ]
  )
  assert rc == 0
  out = os.path.join(workdir, "eval", "localization")
  results = json.load(open(os.path.join(out, "results.json")))
  assert results["meta"]["latent_stats"].startswith("computed")
  assert results["meta"]["resolution"] == "model"
  assert "28x28" in results["meta"]["protocol"]
  assert results["ablation"]["layers"] == ["encoder/conv1", "encoder/conv2"]
  table = "\n".join(results["ablation"]["table"])
  assert "| conv1 |" in table and "| conv2 |" in table
  assert "| residual |" in table
  assert os.path.getsize(os.path.join(out, "ablation.png")) > 0
  # Five rows: every defect type of the set once, then a normal image.
  shown = results["figures"]["overlay_rows"]
  assert sorted(shown[:4]) == sorted(textures.DEFECT_TYPES)
  assert shown[4] == "good"
  # Progress on stderr: a line for each stage, the last naming the figures.
  err = capsys.readouterr().err.strip().splitlines()
  assert any("computing maps of 6 test images" in line for line in err)
  assert "overlays.png" in err[-1] and out in err[-1]


@pytest.fixture(scope="module")
def factorvae_workdir(tmp_path_factory):
  """A FactorVAE run on dSprites (not a one-class model)."""
  run = restore.init_model("factorvae", latent_dim=4)
  path = tmp_path_factory.mktemp("factorvae") / "run"
  return _write_checkpoint(path, run, trainer="factorvae")


@pytest.mark.parametrize(
  "argv, status, words",
  [
    (["--workdir={tmp}"], 2, ["No checkpoints", "--workdir"]),
    (["--workdir={mnist}", "--dataset=mvtec"], 2, ["mvtec", "--data-dir="]),
    (
      ["--workdir={mnist}", "--layers=conv9"],
      2,
      ["--layers:", "encoder/conv2"],
    ),
    (["--workdir={mnist}", "--num-samples=0"], 2, ["--num-samples", "--help"]),
    # A run it does not apply to: one line naming the evaluator that does,
    # also when a data set with masks is forced (no report is written).
    (
      ["--workdir={factorvae}"],
      2,
      ["train.factorvae run", "does not apply", "eval.disentanglement"],
    ),
    (
      ["--workdir={factorvae}", "--dataset=textures"],
      2,
      ["does not apply", "eval.disentanglement --workdir="],
    ),
  ],
)
def test_errors_are_one_line_with_the_fix(
  tmp_path, mnist_workdir, factorvae_workdir, capsys, argv, status, words
):
  argv = [
    a.format(tmp=tmp_path, mnist=mnist_workdir, factorvae=factorvae_workdir)
    for a in argv
  ]
  try:
    rc = localization.main(argv)
  except SystemExit as e:  # Flag values are refused by the parser.
    rc = e.code
  assert rc == status
  err = _error_lines(capsys.readouterr().err)
  assert len(err) == 1, err
  for word in words:
    assert word in err[0], (word, err[0])
  assert not os.path.exists(os.path.join(factorvae_workdir, "eval"))


def test_scoring_another_data_set_than_the_run_trained_on_is_said(
  texture_root, capsys
):
  spec = runs.RunSpec(
    trainer="oneclass",
    model="mnist",
    model_kwargs={"latent_dim": 4},
    input_shape=(28, 28, 1),
    data="digits",
  )
  with pytest.raises(ValueError, match="'digits' has none.*train.oneclass"):
    localization.load_splits(spec, (28, 28), data_dir=texture_root)
  test, _, options = localization.load_splits(
    spec, (28, 28), dataset="textures", data_dir=texture_root
  )
  assert options.dataset == "textures" and len(test)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "WARNING: this run trained on digits, scored on textures" in err[0]


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    localization.main([f"--workdir={tmp_path}", "--debug"])
  monkeypatch.setenv("VAE_ATTN_DEBUG", "1")
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    localization.main([f"--workdir={tmp_path}"])


def test_a_workdir_that_cannot_be_written_names_out(
  mnist_workdir, texture_root, monkeypatch, capsys
):
  makedirs = os.makedirs

  def read_only(path, *args, **kwargs):
    if str(path).startswith(str(mnist_workdir) + os.sep):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return makedirs(path, *args, **kwargs)

  monkeypatch.setattr(os, "makedirs", read_only)
  rc = localization.main(
    [f"--workdir={mnist_workdir}", f"--data-dir={texture_root}"]
  )
  assert rc == 2
  err = _error_lines(capsys.readouterr().err)
  assert len(err) == 1
  assert "Read-only file system" in err[0] and "--out=" in err[0]


def test_run_report_names_out_for_a_write_refused_in_the_workdir(
  tmp_path, capsys
):
  # The path eval.disentanglement takes: it makes its folder itself.
  def evaluate(args):
    path = os.path.join(args.workdir, "eval", "x")
    raise PermissionError(errno.EACCES, "Permission denied", path)

  args = argparse.Namespace(workdir=str(tmp_path), out=None)
  assert cli.run_main(evaluate, args) == 2
  assert "pass --out=" in capsys.readouterr().err

  # eval.disentanglement's --workdir is a tuple of runs.
  def evaluate_second(args):
    return evaluate(argparse.Namespace(workdir=args.workdir[1]))

  args = argparse.Namespace(workdir=("elsewhere", str(tmp_path)), out=None)
  assert cli.run_main(evaluate_second, args) == 2
  assert "pass --out=" in capsys.readouterr().err


def test_original_resolution_keeps_a_defect_that_resizing_deletes():
  # A 64x64 image whose 2x2 defect vanishes when the mask is resized to the
  # model's 8x8 by nearest neighbour (the loaders' resize).
  original = np.zeros((2, 64, 64), bool)
  original[1, 30:32, 30:32] = True
  at_model = np.zeros((2, 8, 8), bool)  # Nearest picks rows 4, 12, ...
  assert not original[:, 4::8, 4::8].any()
  data = {
    "mask": at_model,
    "label": np.array([0, 1], bool),
    "has_mask": np.ones(2, bool),
  }
  maps = {"m": np.zeros((2, 8, 8), np.float32)}
  maps["m"][1, 3:5, 3:5] = 1.0  # The defect's neighbourhood at 8x8.
  with pytest.raises(ValueError, match="No anomalous pixel"):
    localization.score(maps, data, resolution="model")
  masks = {0: original[0], 1: original[1]}
  scores, _ = localization.score(maps, data, resolution="original", masks=masks)
  # The upsampled map peaks on the defect: every defect pixel outranks
  # almost every normal pixel.
  assert scores["m"]["pixel_auroc"] > 0.99
  upsampled = np.asarray(attention.upsample(maps["m"], (64, 64)))
  exact = sklearn.metrics.roc_auc_score(original.ravel(), upsampled.ravel())
  bound = scores["m"]["pixel_auroc_error_bound"]
  assert abs(scores["m"]["pixel_auroc"] - exact) <= bound


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
  # The same maps at the original resolution (here the model's).
  originals = {i: masks[i] for i in range(3)}
  binned, _ = localization.score(
    {"perfect": perfect}, data, resolution="original", masks=originals
  )
  for key in ("pixel_auroc", "aupro", "image_auroc_max"):
    assert binned["perfect"][key] == pytest.approx(got[key], abs=1e-6)


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


def test_ctrl_c_in_an_evaluator_is_one_line_with_status_130(capsys):
  # It was a traceback of about 75 lines from inside jax.
  def interrupted(config):
    raise KeyboardInterrupt

  assert cli.run_main(interrupted, None) == 130
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Interrupted" in err


def test_a_grid_folder_given_as_a_run_names_its_members(tmp_path):
  # It said "No checkpoints in <grid>/ckpt" (eval.explain, eval.localization).
  for name in ("ad_seed0", "tc_seed0"):
    (tmp_path / name / "ckpt").mkdir(parents=True)
  with pytest.raises(
    FileNotFoundError, match=r"grid folder.*ad_seed0, tc_seed0"
  ):
    restore.load_run(tmp_path)
