"""A grid of runs (seeds x objectives) trains as one program and each member
equals the single run with the same seed and hyper-parameters."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re

import chex
import jax
import numpy as np
import pytest

from eval import restore
from train import factorvae, flags, loop, members, oneclass
from workflow import writers


def _losses(workdir):
  rows = writers.read_scalars(workdir)
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_grid_members_equal_the_single_runs(mode, tmp_path, caplog):
  base = dataclasses.replace(
    factorvae.PRESETS["smoke"],
    num_steps=3,
    log_every=1,
    checkpoint_every=3,
    score=False,
    grid_mode=mode,
  )
  members = [
    dataclasses.replace(base, loss="tc", seed=0),
    dataclasses.replace(base, loss="ad", seed=1, lambda_ad=2.0),
  ]
  with caplog.at_level(logging.INFO, logger="workflow.writers"):
    states = factorvae.train_and_evaluate(members, tmp_path / "grid")
  dirs = loop.member_dirs(tmp_path / "grid", members)
  names = [d.name for d in dirs]
  assert names == ["tc_lambda_ad1_seed0", "ad_lambda_ad2_seed1"]
  logged = [r.getMessage() for r in caplog.records]
  for name in names:  # Each member's log lines say whose they are.
    assert any(
      m.startswith(f"[{name} 3] ") and "train/loss=" in m for m in logged
    )
  for k, (config, state, run_dir) in enumerate(
    zip(members, states, dirs, strict=True)
  ):
    single = factorvae.train_and_evaluate(config, tmp_path / f"single{k}")
    chex.assert_trees_all_close(
      jax.device_get(state.params), jax.device_get(single.params), atol=2e-5
    )
    got, want = _losses(run_dir), _losses(tmp_path / f"single{k}")
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
    np.testing.assert_allclose(
      [v for _, v in got], [v for _, v in want], rtol=1e-5
    )
    # Each member is an ordinary run directory.
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["loss"], saved["seed"]) == (config.loss, config.seed)
    run = restore.load_run(run_dir)
    assert run.step == 3 and run.spec.model == "factorvae"
  # Rows of a run without L_AD carry no "ad".
  rows = writers.read_scalars(dirs[0])
  assert not any("train/ad" in r for r in rows)


def test_comma_lists_make_a_grid_with_named_members():
  configs, launch = flags.parse_flags(
    ["--preset=smoke", "--loss=tc,ad", "--seeds=0,1,2", "--gamma=40"],
    factorvae.Config,
    factorvae.PRESETS,
    prog="python -m train.factorvae",
    default_preset="dsprites",
    grid=True,
    launch=True,
  )
  assert [(c.loss, c.seed) for c in configs] == [
    ("tc", 0),
    ("tc", 1),
    ("tc", 2),
    ("ad", 0),
    ("ad", 1),
    ("ad", 2),
  ]
  assert {c.gamma for c in configs} == {40.0}
  assert launch.workdir is None
  dirs = [d.name for d in loop.member_dirs(pathlib.Path("w"), configs)]
  assert dirs[:2] == ["tc_seed0", "tc_seed1"] and dirs[-1] == "ad_seed2"
  assert factorvae.default_workdir(configs) == "runs/factorvae_tc-ad"


def test_expand_grid_from_a_config_built_in_python():
  base = factorvae.PRESETS["smoke"]
  grid = members.expand_grid(base, {"loss": ["tc", "ad"], "seed": [0, 1]})
  assert [(c.loss, c.seed) for c in grid] == [
    ("tc", 0),
    ("tc", 1),
    ("ad", 0),
    ("ad", 1),
  ]
  assert all(c.num_steps == base.num_steps for c in grid)


def test_grid_flags_are_refused_where_they_cannot_apply(capsys):
  with pytest.raises(SystemExit):
    flags.parse_flags(
      ["--preset=smoke", "--num-steps=2,3"],
      factorvae.Config,
      factorvae.PRESETS,
      prog="python -m train.factorvae",
      default_preset="dsprites",
      grid=True,
    )
  assert "--num-steps" in capsys.readouterr().err
  # The one-class trainer's textures are read by the host pipeline.
  configs = [
    dataclasses.replace(oneclass.PRESETS["textures"], seed=s) for s in (0, 1)
  ]
  trainer = dataclasses.replace(
    oneclass.make_trainer(
      dataclasses.replace(oneclass.PRESETS["smoke"], eval_num_examples=0)
    ),
    device_data=None,
  )
  with pytest.raises(ValueError, match="one by one"):
    loop.train_and_evaluate(configs, "/nonexistent", trainer)


PRECISION = r"precision (\w+)>|precision = \[(\w+)"


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_the_step_carries_the_configs_precision(precision):
  config = dataclasses.replace(
    factorvae.PRESETS["smoke"], precision=precision, score=False
  )
  text = loop.lowered_text(config, factorvae.make_trainer(config))
  ops = re.findall(r"stablehlo\.(?:convolution|dot_general)[^\n]*", text)
  assert len(ops) > 10
  names = {
    tuple(sorted({a or b for a, b in re.findall(PRECISION, op)})) for op in ops
  }
  assert names == {(precision.upper(),)}
