"""Data parallelism: 8 forced host devices give the 1-device run's numbers.

The device count must be fixed before jax starts, so the test runs this file
as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_eight_devices_match_one_device(tmp_path):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8",
    PYTHONPATH=str(ROOT),
  )
  proc = subprocess.run(
    [sys.executable, __file__, str(tmp_path)],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "8-device run matches" in proc.stdout
  # This process has one device: the 8-device run restores and evaluates
  # here (its target comes from the saved metadata and the current devices).
  from eval import restore

  run = restore.load_run(tmp_path / "eight")
  assert run.step == 3 and run.name == "factorvae"
  leaf = jax.tree.leaves(run.variables)[0]
  assert len(leaf.devices()) == 1
  mu, _ = jax.jit(run.encode_fn)(run.variables, np.zeros((2, 64, 64, 1)))
  assert mu.shape == (2, 32) and np.isfinite(np.asarray(mu)).all()


def _main(workdir: pathlib.Path) -> None:
  import chex
  import jax
  import numpy as np
  import pytest
  from jax.sharding import NamedSharding

  from train import distributed, factorvae
  from workflow import writers

  assert len(jax.devices()) == 8, jax.devices()
  config = dataclasses.replace(
    factorvae.PRESETS["smoke"],
    num_steps=3,
    log_every=1,
    checkpoint_every=3,
    score=False,
  )
  train = functools.partial(factorvae.train_and_evaluate, report=False)
  one = train(
    config, workdir / "one", mesh=distributed.make_mesh(jax.devices()[:1])
  )
  eight = train(config, workdir / "eight")

  leaf = jax.tree.leaves(eight.params)[0]
  assert isinstance(leaf.sharding, NamedSharding)
  assert (
    leaf.sharding.mesh.devices.size == 8 and leaf.sharding.is_fully_replicated
  )
  # Reductions run in another order on 8 devices. Adam's first steps move
  # each weight by about +-lr whatever the size of its gradient, so weights
  # with gradients near Adam's eps may differ by up to lr per step; all
  # others agree to float precision.
  bound = 2 * config.num_steps * max(config.vae_lr, config.disc_lr)
  chex.assert_trees_all_close(
    jax.device_get(one.params), jax.device_get(eight.params), atol=bound
  )
  diffs = np.concatenate(
    [
      np.abs(np.asarray(a) - np.asarray(b)).ravel()
      for a, b in zip(
        jax.tree.leaves(jax.device_get(one.params)),
        jax.tree.leaves(jax.device_get(eight.params)),
        strict=True,
      )
    ]
  )
  assert np.mean(diffs > 1e-6) < 1e-4, np.mean(diffs > 1e-6)
  logs = [writers.read_scalars(workdir / n) for n in ("one", "eight")]
  for name in ("train/loss", "train/ad", "train/tc", "train/disc_loss"):
    a = [r[name] for r in logs[0] if name in r]
    b = [r[name] for r in logs[1] if name in r]
    assert len(a) == len(b) == 3, (a, b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)

  odd = dataclasses.replace(config, batch_size=4)
  with pytest.raises(ValueError, match="multiple of 8"):
    train(odd, workdir / "odd")
  print("8-device run matches the 1-device run")


if __name__ == "__main__":
  _main(pathlib.Path(sys.argv[1]))
