"""Tests of ``python -m eval.explain`` (random models, embedded images)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from eval import explain, restore
from vae_attn import runs


def test_no_flags_demo_writes_the_grid(tmp_path):
  rc = explain.main(
    [f"--out={tmp_path}", "--num-images=2", "--k=3", "--latent-dim=8"]
  )
  assert rc == 0
  for name in ("attention_grid.png", "mean_overlay.png", "maps.npz"):
    assert (tmp_path / name).stat().st_size > 0
  maps = np.load(tmp_path / "maps.npz")
  assert maps["per_latent"].shape == (2, 8, 32, 32)  # [N, D, h, w] at conv1
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
  rc = explain.main(["--latent-dim=8", "--images", *paths, f"--out={out}"])
  assert rc == 0
  maps = np.load(out / "maps.npz")
  assert maps["images"].shape == (2, 64, 64, 1)  # Colour -> grey, resized.
  assert maps["per_latent"].shape == (2, 8, 32, 32)


def test_missing_image_is_a_clear_error(tmp_path, capsys):
  rc = explain.main(["--images", str(tmp_path / "nope.png")])
  assert rc == 2
  assert "is not a file" in capsys.readouterr().err


def test_pick_latents():
  per_latent = np.zeros((2, 4, 2, 2))
  per_latent[0, 2] = 3.0
  per_latent[0, 1] = 1.0
  per_latent[1, 3] = 5.0
  np.testing.assert_array_equal(
    explain.pick_latents(per_latent, 2, "index"), [[0, 1], [0, 1]]
  )
  np.testing.assert_array_equal(
    explain.pick_latents(per_latent, 2, "response"), [[2, 1], [3, 0]]
  )


def test_a_run_is_rebuilt_from_its_spec_not_its_parameters(tmp_path):
  from train import factorvae, loop

  config = dataclasses.replace(
    factorvae.PRESETS["smoke"], num_steps=2, latent_dim=3, score=False
  )
  loop.train_and_evaluate(config, tmp_path, factorvae.make_trainer(config))
  run = restore.load_run(tmp_path)
  assert (run.name, run.latent_dim, run.input_shape) == (
    "factorvae",
    3,
    (64, 64, 1),
  )
  assert run.spec.data == "procedural" and run.default_layer == "encoder/conv1"
  (tmp_path / runs.SPEC_NAME).unlink()
  with pytest.raises(FileNotFoundError, match="spec.json is missing"):
    restore.load_run(tmp_path)


def test_difference_code_averages_eq5_draws_and_needs_statistics(capsys):
  from vae_attn import anomaly, attention

  run = restore.init_model("factorvae", latent_dim=4, seed=0)
  x = explain.demo_images(run, 2, seed=0)
  rc = explain.main(["--latent-dim=4", "--num-images=2", "--code=difference"])
  assert rc == 2
  assert "latent statistics" in capsys.readouterr().err
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
  mean, _ = anomaly.anomaly_maps(
    run.encode_fn, layer, run.variables, x, stats, jax.random.key(0),
    num_samples=2,
  )  # fmt: skip
  np.testing.assert_allclose(maps.mean, mean, atol=1e-6)
