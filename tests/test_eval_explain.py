"""Tests of ``python -m eval.explain`` (random models, embedded images)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from eval import explain, restore
from workflow import figures, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_flags_demo_writes_the_grid_under_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rc = explain.main(["--num-images=2", "--k=3", "--latent-dim=4"])
  assert rc == 0
  # Not explain/ in the current folder: runs/, which git ignores.
  assert not (tmp_path / "explain").exists()
  tmp_path = tmp_path / "runs" / "explain" / "factorvae_random"
  for name in ("attention_grid.png", "mean_overlay.png", "maps.npz"):
    assert (tmp_path / name).stat().st_size > 0
  maps = np.load(tmp_path / "maps.npz")
  assert maps["per_latent"].shape == (2, 4, 32, 32)  # [N, D, h, w] at conv1
  assert maps["mean"].shape == (2, 32, 32)
  np.testing.assert_allclose(
    maps["mean"], maps["per_latent"].mean(axis=1), rtol=1e-5, atol=1e-6
  )
  meta = json.loads((tmp_path / "explain.json").read_text())
  assert meta["layer"] == "encoder/conv1" and meta["workdir"] is None


def test_user_images_are_resized_to_the_model(tmp_path):
  paths = []
  for i, size in enumerate([(40, 30), (90, 90)]):
    path = tmp_path / f"img{i}.png"
    rgb = np.random.default_rng(i).integers(0, 255, (*size, 3), np.uint8)
    Image.fromarray(rgb).save(path)
    paths.append(str(path))
  out = tmp_path / "out"
  # The demo's model (same shapes: the compiled ops are reused).
  rc = explain.main(["--latent-dim=4", "--images", *paths, f"--out={out}"])
  assert rc == 0
  maps = np.load(out / "maps.npz")
  assert maps["images"].shape == (2, 64, 64, 1)  # Colour -> grey, resized.
  assert maps["per_latent"].shape == (2, 4, 32, 32)


def test_images_flag_without_files_is_refused(capsys):
  # It explained the demo images instead, silently.
  with pytest.raises(SystemExit) as e:
    explain.main(["--images"])
  assert e.value.code == 2
  assert "--images: name at least one image file." in capsys.readouterr().err


def test_more_maps_than_latents_is_refused(capsys):
  # -k 100 on a 32-latent model showed 32 maps without a word.
  assert explain.main(["--latent-dim=4", "--k=5", "--num-images=1"]) == 2
  err = capsys.readouterr().err
  assert "--k=5 is more than the model's 4 latents; pass --k=4 or less." in err


def test_missing_image_is_a_clear_error(tmp_path, capsys):
  rc = explain.main(["--images", str(tmp_path / "nope.png")])
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "is not a file" in err[-1] and err[-1].startswith("error:")


def test_a_file_that_is_not_an_image_is_a_clear_error(tmp_path, capsys):
  notes = tmp_path / "notes.txt"
  notes.write_text("my notes\n")
  argv = ["--latent-dim=4", "--images", str(notes), f"--out={tmp_path / 'o'}"]
  rc = explain.main(argv)
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (
    f"error: Cannot read image {notes}: it is not a readable PNG, JPEG, BMP "
    f"or TIFF image (cannot identify image file '{notes}'); pass image "
    "files, or replace a damaged one with an intact copy."
  )


def test_pick_latents():
  per_latent = np.zeros((2, 4, 2, 2))
  per_latent[0, 2] = 3.0
  per_latent[0, 1] = 1.0
  per_latent[1, 3] = 5.0
  np.testing.assert_array_equal(
    figures.pick_latents(per_latent, 2, "index"), [[0, 1], [0, 1]]
  )
  np.testing.assert_array_equal(
    figures.pick_latents(per_latent, 2, "response"), [[2, 1], [3, 0]]
  )


def test_difference_code_averages_eq5_draws_and_needs_statistics(capsys):
  from vae_attn import anomaly, attention

  run = restore.init_model("factorvae", latent_dim=4, seed=0)
  x, _, data = explain.demo_images(run, 2, seed=0)
  assert data == "procedural"
  rc = explain.main(["--latent-dim=4", "--num-images=2", "--code=difference"])
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "latent statistics" in err[-1] and err[-1].startswith("error:")
  stats = anomaly.LatentStats(jnp.zeros(4), jnp.ones(4), jnp.asarray(1.0))
  run = run._replace(latent_stats=stats)
  maps, layer = explain.explain(run, x, code="difference", num_samples=2)
  fn = attention.attention(run.encode_fn, layer, code="difference")
  draws = [
    fn(run.variables, jnp.asarray(x), key=k, stats=stats)
    for k in jax.random.split(jax.random.key(0), 2)
  ]
  np.testing.assert_allclose(
    maps.per_latent, (draws[0].per_latent + draws[1].per_latent) / 2, atol=1e-6
  )
  same = anomaly.difference_attention(
    run.encode_fn, layer, run.variables, x, stats, jax.random.key(0),
    num_samples=2,
  )  # fmt: skip
  np.testing.assert_allclose(maps.mean, same.mean, atol=1e-6)


def _digits_run(workdir, normal_digit):
  """A run directory of an (untrained) MNIST VAE whose spec says digits."""
  run = restore.init_model("mnist", latent_dim=4)
  spec = runs.RunSpec(
    trainer="oneclass",
    model="mnist",
    model_kwargs={"latent_dim": 4},
    input_shape=(28, 28, 1),
    data="digits",
    data_kwargs={"normal_digit": normal_digit},
  )
  workdir.mkdir(parents=True)
  runs.write_json(workdir / runs.SPEC_NAME, spec.to_dict())
  state = {"step": np.int32(1), "params": run.variables["params"]}
  with runs.checkpoint_manager(workdir) as mngr:
    runs.save(mngr, 1, state=state, wait=True)
  return workdir


def test_a_digits_run_explains_its_own_digits(tmp_path):
  from vae_attn.data import digits

  workdir = _digits_run(tmp_path / "run", normal_digit=3)
  rc = explain.main([f"--workdir={workdir}", "--num-images=3", "--k=2"])
  assert rc == 0
  meta = json.loads((workdir / "explain" / "explain.json").read_text())
  assert meta["images_from"] == "digits"
  assert meta["images"] == ["digit 3", "digit 4", "digit 5"]
  shown = np.load(workdir / "explain" / "maps.npz")["images"]
  test = digits.load("test")
  labels = test.get_batch(np.arange(len(test)))["label"]
  for image, digit in zip(shown, (3, 4, 5), strict=True):
    first = int(np.flatnonzero(labels == digit)[0])
    np.testing.assert_allclose(image, test[first]["image"], atol=1e-6)


@pytest.mark.parametrize("code", ["mu", "sample", "difference"])
def test_maps_fn_takes_parameters_and_images_as_arguments(code):
  # Arrays captured by the traced function become constants that XLA
  # folds at compile time ("Constant folding an instruction is taking >
  # 1s" with the ResNet); the maps function must capture none.
  from vae_attn import anomaly

  run = restore.init_model("mnist", latent_dim=4)
  stats = anomaly.LatentStats(jnp.zeros(4), jnp.ones(4), jnp.asarray(1.0))
  fn = explain.maps_fn(run, "encoder/conv2", code=code, num_samples=2)
  x = jnp.zeros((2, 28, 28, 1))
  jaxpr = jax.make_jaxpr(fn)(run.variables, x, stats, jax.random.key(0))
  sizes = [np.size(c) for c in jaxpr.consts]
  assert max(sizes, default=0) < 1000, sizes


def _texts(monkeypatch, draw):
  """The texts (string, font size in points) of the figure ``draw`` saves."""
  import matplotlib.figure
  import matplotlib.text

  saved = []
  savefig = matplotlib.figure.Figure.savefig

  def keep(fig, *args, **kwargs):
    saved.append(fig)
    return savefig(fig, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
  draw()
  (fig,) = saved
  return [
    (t.get_text(), t.get_fontsize())
    for t in fig.findobj(matplotlib.text.Text)
    if t.get_text().strip() and t.get_visible()
  ]


def test_figures_mark_all_zero_maps_and_share_a_scale(tmp_path, monkeypatch):
  from workflow import figures

  x = np.full((1, 8, 8, 1), 0.5, np.float32)
  per_latent = np.zeros((1, 3, 8, 8), np.float32)
  per_latent[0, 0] = 1.0
  per_latent[0, 1] = 0.01  # Weak, but not zero.
  np.testing.assert_array_equal(figures.is_zero(per_latent), [[0, 0, 1]])
  notes = {
    "figure": "one colour scale, 0 to 1",
    "image": "one colour scale per row",
    "map": "each map on its own scale",
  }
  assert set(figures.SCALES) == set(notes)
  for scale in figures.SCALES:

    def draw(scale=scale):
      figures.attention_grid(
        tmp_path / f"{scale}.png",
        x,
        per_latent.mean(1),
        per_latent,
        np.arange(3)[None],
        scale=scale,
        num_latents=32,
        row_labels=["a.png"],
        notes=["a.png: 300x200 RGB, shown as 8x8 grey"],
      )

    texts = _texts(monkeypatch, draw)
    strings = " | ".join(t for t, _ in texts)
    # The scale stated, every row and column labelled, the resize noted.
    for words in (
      notes[scale],
      "per-latent maps (3 of 32 latents)",
      "a.png",
      "z0",
      "z2",
      "mean map",
      "shown as 8x8 grey",
    ):
      assert words in strings, (words, strings)
    # Legible at the saved size: 8 points are 11 pixels at 100 dpi (the
    # colour-bar ticks were 5 points, about 7 pixels).
    assert min(size for _, size in texts) >= 8, texts
    assert (tmp_path / f"{scale}.png").stat().st_size > 0
  with pytest.raises(ValueError, match="scale"):
    figures.attention_grid(
      tmp_path / "x.png", x, per_latent[:, 0], per_latent, np.zeros((1, 3)),
      scale="global",
    )  # fmt: skip


def test_a_scalar_logged_once_is_a_labelled_marker(tmp_path, monkeypatch):
  from workflow import figures

  rows = [
    {"step": 2, "train/loss": 3.0, "eval/score": 0.8125},
    {"step": 4, "train/loss": 2.0},
  ]
  texts = _texts(
    monkeypatch, lambda: figures.scalar_curves(tmp_path / "c.png", rows)
  )
  strings = [t for t, _ in texts]
  assert "0.8125 at step 2 (logged once)" in strings
  assert not any("train/loss" in t and "once" in t for t in strings)


def test_user_images_are_named_and_their_resizing_noted(tmp_path, capsys):
  import PIL.Image

  rgb = tmp_path / "photo.png"
  PIL.Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(rgb)
  grey = tmp_path / "grey.png"
  PIL.Image.fromarray(np.zeros((64, 64), np.uint8)).save(grey)
  x, notes = explain.read_images([str(rgb), str(grey)], (64, 64, 1))
  assert x.shape == (2, 64, 64, 1)
  assert notes == [
    "photo.png: 300x200 RGB, shown as 64x64 grey (the model's input)"
  ]
  out = tmp_path / "out"
  rc = explain.main(
    ["--latent-dim=4", "--images", str(rgb), str(grey), f"--out={out}"]
  )
  assert rc == 0
  # Said on the console too (it was only in the figure and explain.json).
  assert f"resized: {notes[0]}" in capsys.readouterr().err
  meta = json.loads((out / "explain.json").read_text())
  assert meta["images"] == ["photo.png", "grey.png"]
  assert meta["input_notes"] == notes and meta["scale"] == "figure"


def test_drawing_changes_nothing_process_wide(tmp_path):
  # No pyplot: the caller's backend (a notebook's inline one) stays as it is.
  script = (
    "import sys, numpy as np\n"
    "from workflow import figures\n"
    "x = np.zeros((1, 8, 8, 1), np.float32)\n"
    "maps = np.ones((1, 2, 8, 8), np.float32)\n"
    f"figures.attention_grid({str(tmp_path / 'a.png')!r}, x, maps.mean(1),"
    " maps, np.arange(2)[None])\n"
    "print('matplotlib.pyplot' in sys.modules)\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ["False"]
  assert (tmp_path / "a.png").is_file()
