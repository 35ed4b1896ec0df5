"""A grid of runs (seeds x objectives) trains as one program and each member
equals the single run with the same seed and hyper-parameters."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import re

import chex
import jax
import numpy as np
import pytest

from eval import restore
from train import command, factorvae, loop, oneclass
from vae_attn import attention
from workflow import grid, writers


def _losses(workdir):
  rows = writers.read_scalars(workdir)
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


BASE = dataclasses.replace(
  factorvae.PRESETS["smoke"],
  num_steps=3,
  log_every=1,
  checkpoint_every=3,
  score=False,
)
MEMBERS = [
  dataclasses.replace(BASE, loss="tc", seed=0),
  dataclasses.replace(BASE, loss="ad", seed=1, lambda_ad=2.0),
]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
  """The single run of each member of MEMBERS: (final state, run folder)."""
  root = tmp_path_factory.mktemp("single")
  return [
    (
      factorvae.train_and_evaluate(c, root / str(k), report=False),
      root / str(k),
    )
    for k, c in enumerate(MEMBERS)
  ]


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_grid_members_equal_the_single_runs(
  mode, single_runs, tmp_path, caplog
):
  members = [dataclasses.replace(c, grid_mode=mode) for c in MEMBERS]
  with caplog.at_level(logging.INFO, logger="workflow.writers"):
    states = factorvae.train_and_evaluate(
      members, tmp_path / "grid", report=False
    )
  dirs = grid.member_dirs(tmp_path / "grid", members)
  names = [d.name for d in dirs]
  assert names == ["tc_lambda_ad1_seed0", "ad_lambda_ad2_seed1"]
  logged = [r.getMessage() for r in caplog.records]
  for name in names:  # Each member's log lines say whose they are.
    assert any(
      m.startswith(f"[{name} 3] ") and "train/loss=" in m for m in logged
    )
  for config, state, run_dir, (single, single_dir) in zip(
    members, states, dirs, single_runs, strict=True
  ):
    chex.assert_trees_all_close(
      jax.device_get(state.params), jax.device_get(single.params), atol=2e-5
    )
    got, want = _losses(run_dir), _losses(single_dir)
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
  # The step of a --loss=tc,ad grid was the AD step for every member (L_AD
  # computed, then multiplied by 0): each member now runs its own loss's
  # step, so the tc member of this mixed grid is the single tc run to the
  # last bit.
  chex.assert_trees_all_equal(
    jax.device_get(states[0].params), jax.device_get(single_runs[0][0].params)
  )
  assert _losses(dirs[0]) == _losses(single_runs[0][1])


def test_a_loss_list_makes_the_mixed_grid_of_the_members():
  # The grid of --loss=tc,ad: its tc member is MEMBERS[0], whose training
  # test_grid_members_equal_the_single_runs pins to the single run's bits.
  members = grid.expand(BASE, {"loss": ["tc", "ad"]})
  assert [c.loss for c in members] == ["tc", "ad"]
  assert members[0] == MEMBERS[0]


def test_only_ad_members_trace_the_attention(monkeypatch):
  # L_AD's maps are traced only for the steps of --loss=ad members.
  traced = []
  real = factorvae.losses.random_pair_ad
  monkeypatch.setattr(
    factorvae.losses,
    "random_pair_ad",
    lambda *a, **k: traced.append(1) or real(*a, **k),
  )
  config = dataclasses.replace(factorvae.PRESETS["smoke"], score=False)
  state = jax.eval_shape(
    functools.partial(factorvae.create_train_state, config=config),
    jax.random.key(0),
  )
  batch = {
    k: jax.ShapeDtypeStruct((8, 64, 64, 1), np.float32) for k in ("x", "x2")
  }
  for loss, calls in (("tc", 0), ("beta", 0), ("ad", 1)):
    c = dataclasses.replace(config, loss=loss)
    jax.eval_shape(
      functools.partial(factorvae.train_step, config=c),
      state,
      batch,
      jax.random.key(0),
      loop.weights(c),
    )
    assert len(traced) == calls, loss
    traced.clear()


def test_comma_lists_make_a_grid_with_named_members():
  configs, launch = command.parse_flags(
    ["--preset=smoke", "--loss=tc,ad", "--seeds=0,1,2", "--gamma=40"],
    factorvae.Config,
    factorvae.PRESETS,
    prog="python -m train.factorvae",
    default_preset="dsprites",
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
  dirs = [d.name for d in grid.member_dirs(pathlib.Path("w"), configs)]
  assert dirs[:2] == ["tc_seed0", "tc_seed1"] and dirs[-1] == "ad_seed2"
  assert factorvae.default_workdir(configs) == "runs/factorvae_tc-ad"
  # The Next: lines score every member and compare the two arms; each
  # pastes into a shell as it is (a note only after "#").
  assert factorvae.next_commands(configs, "G") == [
    "python -m eval.disentanglement --workdir=G --quick  # seconds; without "
    "--quick every metric at its published sizes, minutes",
    "python -m eval.aggregate G/ad_* --vs G/tc_*",
  ]


def test_expand_grid_from_a_config_built_in_python():
  base = factorvae.PRESETS["smoke"]
  configs = grid.expand(base, {"loss": ["tc", "ad"], "seed": [0, 1]})
  assert [(c.loss, c.seed) for c in configs] == [
    ("tc", 0),
    ("tc", 1),
    ("ad", 0),
    ("ad", 1),
  ]
  assert all(c.num_steps == base.num_steps for c in configs)


def test_grid_flags_are_refused_where_they_cannot_apply(capsys, tmp_path):
  with pytest.raises(SystemExit):
    command.parse_flags(
      ["--preset=smoke", "--num-steps=2,3"],
      factorvae.Config,
      factorvae.PRESETS,
      prog="python -m train.factorvae",
      default_preset="dsprites",
    )
  assert "--num-steps" in capsys.readouterr().err
  # The one-class trainer's textures are read by the host pipeline.
  configs = [
    dataclasses.replace(oneclass.PRESETS["quick"], seed=s) for s in (0, 1)
  ]
  with pytest.raises(ValueError, match="one by one"):
    oneclass.train_and_evaluate(configs, tmp_path, report=False)


PRECISION = r"precision (\w+)>|precision = \[(\w+)"


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_the_step_carries_the_configs_precision(precision):
  config = dataclasses.replace(
    factorvae.PRESETS["smoke"], precision=precision, score=False
  )
  state = jax.eval_shape(
    functools.partial(factorvae.create_train_state, config=config),
    jax.random.key(0),
  )
  batch = {k: np.zeros((8, 64, 64, 1), np.float32) for k in ("x", "x2")}

  def step(state, batch):
    with attention.matmul_precision(config.precision):
      return factorvae.train_step(
        state, batch, jax.random.key(0), loop.weights(config), config
      )

  text = jax.jit(step).lower(state, batch).as_text()
  ops = re.findall(r"stablehlo\.(?:convolution|dot_general)[^\n]*", text)
  assert len(ops) > 10
  names = {
    tuple(sorted({a or b for a, b in re.findall(PRECISION, op)})) for op in ops
  }
  assert names == {(precision.upper(),)}


def test_a_grid_trains_no_member_twice_for_a_weight_it_does_not_read(caplog):
  # tc reads gamma only: --loss=tc,ad --lambda-ad=0.5,1 trains one tc run
  # per seed, its unread lambda_ad recorded at the default (so it compares
  # with any other tc run), says so, and its Next: lines compare per lambda.
  base = factorvae.PRESETS["smoke"]
  tc = dataclasses.replace(base, loss="tc", lambda_ad=0.5, beta=4.0)
  assert (tc.lambda_ad, tc.beta, tc.gamma) == (1.0, 1.0, base.gamma)
  lists = {"loss": ["tc", "ad"], "lambda_ad": [0.5, 1.0], "seed": [0, 1]}
  with caplog.at_level(logging.WARNING):
    members = grid.expand(base, lists)
  assert [(c.loss, c.lambda_ad, c.seed) for c in members] == [
    ("tc", 1.0, 0),
    ("tc", 1.0, 1),
    ("ad", 0.5, 0),
    ("ad", 0.5, 1),
    ("ad", 1.0, 0),
    ("ad", 1.0, 1),
  ]
  messages = [r.getMessage() for r in caplog.records]
  assert sum("Not training the member" in m for m in messages) == 2
  assert any(
    "--lambda-ad=0.5 has no effect with --loss=tc" in m for m in messages
  )
  assert factorvae.next_commands(members, "W")[1:] == [
    "python -m eval.aggregate W/ad_lambda_ad0.5_* --vs W/tc_lambda_ad1_*",
    "python -m eval.aggregate W/ad_lambda_ad1_* --vs W/tc_lambda_ad1_*",
  ]
