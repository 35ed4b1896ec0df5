"""The generic loop of train/common.py on a toy regression trainer.

Run as a script (``python tests/test_train_common.py WORKDIR KILL_AT``), the
file trains the toy trainer and SIGKILLs itself when step ``KILL_AT`` is read,
for the kill-and-resume test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import common, distributed, flags, loop
from vae_attn.data import base, pipeline
from workflow import configs, runs, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ToyConfig(common.LoopConfig):
  num_steps: int = configs.field(10, "steps")
  log_every: int = 2
  checkpoint_every: int = 3
  learning_rate: float = dataclasses.field(
    default=0.1, metadata={"help": "Adam step size"}
  )
  width: int = 4
  mode: str = dataclasses.field(
    default="a", metadata={"choices": ("a", "b"), "help": "a choice"}
  )
  flag: bool = configs.field(False, "a switch")


TOY_PRESETS = {"default": ToyConfig(), "long": ToyConfig(num_steps=100)}


def _toy_source(width: int) -> base.ArraySource:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, width)).astype(np.float32)
  y = x @ np.arange(1, width + 1, dtype=np.float32)[:, None]
  return base.ArraySource({"x": x, "y": y}, name="toy")


def make_toy_trainer(
  config: ToyConfig, *, kill_at=None, poison_at=None, signal_at=None
) -> common.Trainer:
  """A linear regression with noise keys; hooks to inject failures."""
  source = _toy_source(config.width)
  tx = optax.adam(config.learning_rate)  # One object: states of runs match.

  def create(key):
    params = {"w": jax.random.normal(key, (config.width, 1))}
    return common.TrainState.create(apply_fn=None, params=params, tx=tx)

  def step(state, batch, key, hparams):
    del hparams
    key = jax.random.fold_in(key, state.step)
    noise = 0.01 * jax.random.normal(key, batch["y"].shape)

    def loss_fn(params):
      pred = batch["x"] @ params["w"]
      return jnp.mean((pred - batch["y"] - noise) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    if poison_at is not None:
      bad = state.step > poison_at
      state = state.replace(
        params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
      )
    return state, {"loss": loss}

  def batches(start_step, process_index, process_count):
    it = pipeline.batches(
      source,
      8 // process_count,
      seed=config.seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )
    for s, b in enumerate(it, start=start_step):
      if s == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      if s == signal_at:
        os.kill(os.getpid(), signal.SIGINT)
      yield b

  return common.Trainer(
    create_train_state=create,
    train_step=step,
    batches=batches,
    global_batch_size=8,
    eval_fn=lambda state, config: {
      "w_norm": jnp.linalg.norm(state.params["w"])
    },
  )


def _steps(workdir) -> list[int]:
  return sorted(
    int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit()
  )


def test_flags_are_generated_from_the_config():
  config, workdir, overwrite = flags.parse_flags(
    [
      "--num-steps=3e2",
      "--learning_rate",
      "0.5",
      "--mode=b",
      "--flag",
      "--workdir=/tmp/x",
    ],
    ToyConfig,
    TOY_PRESETS,
    prog="toy",
    default_preset="default",
  )
  assert config == ToyConfig(num_steps=300, learning_rate=0.5, mode="b", flag=1)
  assert (workdir, overwrite) == ("/tmp/x", False)
  config, _, overwrite = flags.parse_flags(
    ["--preset=long", "--no-flag", "--overwrite"],
    ToyConfig,
    TOY_PRESETS,
    prog="toy",
    default_preset="default",
  )
  assert config == ToyConfig(num_steps=100) and overwrite
  config, _, _ = flags.parse_flags(
    ["--mode=b"],
    ToyConfig,
    {"a": ToyConfig(width=2), "b": ToyConfig(width=3)},
    prog="toy",
    default_preset="a",
    preset_field="mode",
  )
  assert config == ToyConfig(width=3, mode="b")


@pytest.mark.parametrize(
  "argv", [["--mode=c"], ["--num-steps=1.5"], ["--width=x"], ["--bogus=1"]]
)
def test_bad_flags_exit_with_usage(argv, capsys):
  with pytest.raises(SystemExit):
    flags.parse_flags(
      argv, ToyConfig, TOY_PRESETS, prog="toy", default_preset="default"
    )
  assert "toy" in capsys.readouterr().err


def test_train_checkpoint_resume_and_no_retrace(tmp_path):
  config = ToyConfig(num_steps=6)
  trainer = make_toy_trainer(config)
  counted = chex.assert_max_traces(trainer.train_step, n=1)
  trainer = dataclasses.replace(trainer, train_step=counted)
  state = loop.train_and_evaluate(config, tmp_path / "a", trainer)
  assert int(state.step) == 6
  assert _steps(tmp_path / "a") == [3, 6]
  logs = writers.read_scalars(tmp_path / "a")
  assert [r["step"] for r in logs if "train/loss" in r] == [2, 4, 6]
  assert [r["step"] for r in logs if "eval/w_norm" in r] == [6]
  saved = json.loads((tmp_path / "a" / "config.json").read_text())
  assert saved == dataclasses.asdict(config)
  assert list((tmp_path / "a" / "tensorboard").iterdir())

  # A second invocation continues from step 6, not from zero.
  longer = dataclasses.replace(config, num_steps=10, eval_every=4)
  resumed = loop.train_and_evaluate(longer, tmp_path / "a", trainer)
  logs = writers.read_scalars(tmp_path / "a")
  assert [r["step"] for r in logs if "train/loss" in r] == [2, 4, 6, 8, 10]
  assert [r["step"] for r in logs if "eval/w_norm" in r] == [6, 8, 10]
  assert _steps(tmp_path / "a") == [6, 9, 10]

  straight = loop.train_and_evaluate(longer, tmp_path / "b", trainer)
  chex.assert_trees_all_equal(resumed.params, straight.params)
  chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
  # A finished run is not retrained.
  again = loop.train_and_evaluate(longer, tmp_path / "b", trainer)
  assert int(again.step) == 10


def test_other_config_in_workdir_is_a_clear_error(tmp_path):
  config = ToyConfig(num_steps=3)
  loop.train_and_evaluate(config, tmp_path, make_toy_trainer(config))
  other = dataclasses.replace(config, learning_rate=0.01)
  with pytest.raises(common.ConfigMismatchError, match="learning_rate"):
    loop.train_and_evaluate(other, tmp_path, make_toy_trainer(other))
  # The old run's config is untouched by the failed attempt.
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["learning_rate"] == 0.1
  state = loop.train_and_evaluate(
    other, tmp_path, make_toy_trainer(other), overwrite=True
  )
  assert int(state.step) == 3
  assert json.loads((tmp_path / "config.json").read_text())[
    "learning_rate"
  ] == (0.01)


def test_other_architecture_in_checkpoint_is_a_clear_error(tmp_path):
  config = ToyConfig(num_steps=3)
  loop.train_and_evaluate(config, tmp_path, make_toy_trainer(config))
  wider = make_toy_trainer(dataclasses.replace(config, width=5))
  with pytest.raises(common.ConfigMismatchError, match="does not fit"):
    loop.train_and_evaluate(config, tmp_path, wider)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = ToyConfig(num_steps=10, log_every=2, checkpoint_every=2)
  trainer = make_toy_trainer(config, poison_at=4)
  with pytest.raises(common.NonFiniteLossError) as info:
    loop.train_and_evaluate(config, tmp_path, trainer)
  message = str(info.value)
  assert "at step 6" in message and "last good checkpoint is step 4" in message
  assert _steps(tmp_path) == [2, 4]
  _, restored = runs.restore(tmp_path)
  chex.assert_tree_all_finite(restored["state"]["params"])
  assert restored["config"]["num_steps"] == 10


def test_sigint_saves_and_resumes(tmp_path):
  config = ToyConfig(num_steps=10, checkpoint_every=100)
  trainer = make_toy_trainer(config, signal_at=4)
  with pytest.raises(common.TrainingInterrupted) as info:
    loop.train_and_evaluate(config, tmp_path, trainer)
  assert info.value.step == 5 and info.value.signum == signal.SIGINT
  assert _steps(tmp_path) == [5]
  state = loop.train_and_evaluate(config, tmp_path, make_toy_trainer(config))
  assert int(state.step) == 10 and _steps(tmp_path) == [5, 10]
  # The previous handler is back.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigkill_resumes_to_the_same_params(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
    [sys.executable, __file__, str(tmp_path / "killed"), "7"],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  survived = _steps(tmp_path / "killed")
  assert survived and max(survived) <= 7
  config = ToyConfig()
  trainer = make_toy_trainer(config)
  resumed = loop.train_and_evaluate(config, tmp_path / "killed", trainer)
  straight = loop.train_and_evaluate(config, tmp_path / "straight", trainer)
  assert int(resumed.step) == 10
  chex.assert_trees_all_equal(resumed.params, straight.params)
  # The log holds every logged step exactly once, as the straight run's.
  logged = [
    [r["step"] for r in writers.read_scalars(tmp_path / name)]
    for name in ("killed", "straight")
  ]
  assert logged[0] == logged[1] == [2, 4, 6, 8, 10, 10]  # 10: train, eval.


class _FakeMesh:
  def __init__(self, num_devices):
    self.devices = np.zeros(num_devices)


def test_batch_must_split_over_devices():
  distributed.check_batch_size(6, _FakeMesh(3))
  with pytest.raises(ValueError, match="multiple of 3"):
    distributed.check_batch_size(8, _FakeMesh(3))


def test_metric_writer_roundtrip(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {"train/loss": np.float32(2.0), "x": jnp.ones(())})
    writer.write_scalars(2, {"train/loss": float("nan")})
    writer.write_images(2, {"img": np.zeros((2, 4, 4, 1))})
    with pytest.raises(ValueError, match="single number"):
      writer.write_scalars(3, {"bad": np.ones(3)})
    with pytest.raises(ValueError, match="NHWC|C in"):
      writer.write_images(3, {"bad": np.ones((4, 4))})
  records = writers.read_scalars(tmp_path)
  assert records[0] == {"step": 1, "train/loss": 2.0, "x": 1.0}
  assert records[1]["step"] == 2 and np.isnan(records[1]["train/loss"])
  events = list((tmp_path / writers.TENSORBOARD_DIR).iterdir())
  assert events and events[0].stat().st_size > 0


def test_metric_writer_log_lines_name_a_grid_member(tmp_path, caplog):
  # A grid logs one line per member and step: the member's folder says whose.
  with caplog.at_level(logging.INFO, logger="workflow.writers"):
    with writers.MetricWriter(
      tmp_path / "a", tensorboard=False, name="ad_seed0"
    ) as writer:
      writer.write_scalars(2, {"train/loss": 1.5})
    with writers.MetricWriter(tmp_path / "b", tensorboard=False) as w:
      w.write_scalars(2, {"train/loss": 1.5})
  lines = [r.getMessage() for r in caplog.records]
  assert "[ad_seed0 2] train/loss=1.5" in lines
  assert "[2] train/loss=1.5" in lines


if __name__ == "__main__":
  _workdir, _kill_at = sys.argv[1], int(sys.argv[2])
  _config = ToyConfig()
  loop.train_and_evaluate(
    _config, _workdir, make_toy_trainer(_config, kill_at=_kill_at)
  )
