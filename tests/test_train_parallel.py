"""Data parallelism: 8 forced host devices give the 1-device run's numbers.

The device count must be fixed before jax starts, so the test runs this file
as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which trains on 8
devices; this process (one device) trains the reference meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np

from eval import restore
from train import factorvae
from workflow import runs, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config():
  return dataclasses.replace(
    factorvae.PRESETS["smoke"],
    num_steps=3,
    log_every=1,
    checkpoint_every=3,
    score=False,
  )


def test_eight_devices_match_one_device(tmp_path):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8",
    PYTHONPATH=str(ROOT),
  )
  proc = subprocess.Popen(
    [sys.executable, __file__, str(tmp_path)],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    config = _config()
    one = factorvae.train_and_evaluate(config, tmp_path / "one", report=False)
    out, _ = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 0, out[-3000:]
  assert "8-device run done" in out

  # Reductions run in another order on 8 devices. Adam's first steps move
  # each weight by about +-lr whatever the size of its gradient, so weights
  # with gradients near Adam's eps may differ by up to lr per step; all
  # others agree to float precision.
  step, eight = runs.restore(tmp_path / "eight", items=("state",))
  assert step == 3
  params = [jax.device_get(one.params), eight["state"]["params"]]
  bound = 2 * config.num_steps * max(config.vae_lr, config.disc_lr)
  chex.assert_trees_all_close(*params, atol=bound)
  diffs = np.concatenate(
    [
      np.abs(np.asarray(a) - np.asarray(b)).ravel()
      for a, b in zip(*map(jax.tree.leaves, params), strict=True)
    ]
  )
  assert np.mean(diffs > 1e-6) < 1e-4, np.mean(diffs > 1e-6)
  logs = [writers.read_scalars(tmp_path / n) for n in ("one", "eight")]
  for name in ("train/loss", "train/ad", "train/tc", "train/disc_loss"):
    a = [r[name] for r in logs[0] if name in r]
    b = [r[name] for r in logs[1] if name in r]
    assert len(a) == len(b) == 3, (a, b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)

  # This process has one device: the 8-device run restores and evaluates
  # here (its target comes from the saved metadata and the current devices).
  run = restore.load_run(tmp_path / "eight")
  assert run.step == 3 and run.name == "factorvae"
  leaf = jax.tree.leaves(run.variables)[0]
  assert len(leaf.devices()) == 1
  mu, _ = jax.jit(run.encode_fn)(run.variables, np.zeros((2, 64, 64, 1)))
  assert mu.shape == (2, 32) and np.isfinite(np.asarray(mu)).all()


def _main(workdir: pathlib.Path) -> None:
  import pytest
  from jax.sharding import NamedSharding

  assert len(jax.devices()) == 8, jax.devices()
  config = _config()
  eight = factorvae.train_and_evaluate(config, workdir / "eight", report=False)
  leaf = jax.tree.leaves(eight.params)[0]
  assert isinstance(leaf.sharding, NamedSharding)
  assert (
    leaf.sharding.mesh.devices.size == 8 and leaf.sharding.is_fully_replicated
  )
  odd = dataclasses.replace(config, batch_size=4)
  with pytest.raises(ValueError, match="multiple of 8"):
    factorvae.train_and_evaluate(odd, workdir / "odd", report=False)
  print("8-device run done")


if __name__ == "__main__":
  _main(pathlib.Path(sys.argv[1]))
