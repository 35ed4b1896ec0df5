"""The shared loop (train/loop.py) on a toy regression trainer.

Run as a script (``python tests/test_train_loop.py WORKDIR KILL_AT EVERY``), the
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

from train import command, distributed, loop
from vae_attn.data import base, pipeline
from workflow import configs, errors, runs, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ToyConfig(loop.LoopConfig):
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


def train_toy(
  config: ToyConfig,
  workdir,
  *,
  kill_at=None,
  poison_at=None,
  signal_at=None,
  signals=1,
  width=None,
  step_fn=None,
  **kwargs,
):
  """Trains a linear regression with noise keys; hooks inject failures."""
  source = _toy_source(config.width)
  width = config.width if width is None else width

  def create(key, config):
    params = {"w": jax.random.normal(key, (width, 1))}
    tx = optax.adam(config.learning_rate)
    return loop.TrainState.create(apply_fn=None, params=params, tx=tx)

  def step(state, batch, key, weights, config):
    del weights, config
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
        for _ in range(signals):
          os.kill(os.getpid(), signal.SIGINT)
      yield b

  return loop.train_and_evaluate(
    config,
    workdir,
    create_train_state=create,
    train_step=step if step_fn is None else step_fn(step),
    batch_size=8,
    host_batches=batches,
    evaluate=lambda state, config: {
      "w_norm": jnp.linalg.norm(state.params["w"])
    },
    **kwargs,
  )


def _steps(workdir) -> list[int]:
  return sorted(
    int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit()
  )


def test_flags_are_generated_from_the_config():
  (config,), launch = command.parse_flags(
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
  assert (launch.workdir, launch.overwrite) == ("/tmp/x", False)
  (config,), launch = command.parse_flags(
    ["--preset=long", "--no-flag", "--overwrite"],
    ToyConfig,
    TOY_PRESETS,
    prog="toy",
    default_preset="default",
  )
  assert config == ToyConfig(num_steps=100) and launch.overwrite
  (config,), _ = command.parse_flags(
    ["--mode=b"],
    ToyConfig,
    {"a": ToyConfig(width=2), "b": ToyConfig(width=3)},
    prog="toy",
    default_preset="a",
    preset_field="mode",
  )
  assert config == ToyConfig(width=3, mode="b")


@pytest.mark.parametrize(
  ("argv", "words"),
  [
    (["--mode=c"], ["--mode", "'c'"]),
    (["--num-steps=1.5"], ["whole number", "1.5"]),
    (["--width=x"], ["--width", "'x'"]),
    (["--bogus=1"], ["--bogus"]),
    (["--num-step=3"], ["--num-step", "--num-steps"]),
    (["--learning-rat=1"], ["--learning-rat", "--learning-rate"]),
  ],
)
def test_bad_flags_exit_with_one_line(argv, words, capsys):
  with pytest.raises(SystemExit) as e:
    command.parse_flags(
      argv, ToyConfig, TOY_PRESETS, prog="toy", default_preset="default"
    )
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and all(w in err for w in words), err


def _counted(step):
  return chex.assert_max_traces(step, n=1)


def test_train_checkpoint_resume_and_no_retrace(tmp_path, caplog):
  config = ToyConfig(num_steps=6)
  # One trace per run: every call of the run reuses the compiled step.
  state = train_toy(config, tmp_path / "a", step_fn=_counted)
  assert int(state.step) == 6
  assert _steps(tmp_path / "a") == [3, 6]
  logs = writers.read_scalars(tmp_path / "a")
  assert [r["step"] for r in logs if "train/loss" in r] == [2, 4, 6]
  assert [r["step"] for r in logs if "eval/w_norm" in r] == [6]
  saved = json.loads((tmp_path / "a" / "config.json").read_text())
  assert saved == dataclasses.asdict(config)
  assert list((tmp_path / "a" / "tensorboard").iterdir())

  # A second invocation continues from step 6, not from zero; a lower
  # --max-to-keep says which checkpoints it will delete before it does.
  longer = dataclasses.replace(config, num_steps=10, eval_every=4)
  with caplog.at_level(logging.WARNING, logger="train.loop"):
    resumed = train_toy(
      dataclasses.replace(longer, max_to_keep=1), tmp_path / "a"
    )
  assert any(
    "--max-to-keep=1" in m and "deletes steps [3, 6]" in m
    for m in caplog.messages
  )
  logs = writers.read_scalars(tmp_path / "a")
  assert [r["step"] for r in logs if "train/loss" in r] == [2, 4, 6, 8, 10]
  assert [r["step"] for r in logs if "eval/w_norm" in r] == [6, 8, 10]
  assert _steps(tmp_path / "a") == [10]

  straight = train_toy(longer, tmp_path / "b")
  chex.assert_trees_all_equal(resumed.params, straight.params)
  chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
  # A finished run is not retrained.
  again = train_toy(longer, tmp_path / "b")
  assert int(again.step) == 10
  # Nor does a lower --num-steps rewrite its recorded config (two equal runs
  # were then refused as incomparable).
  shorter = dataclasses.replace(longer, num_steps=4)
  assert int(train_toy(shorter, tmp_path / "b").step) == 10
  saved = json.loads((tmp_path / "b" / "config.json").read_text())
  assert saved["num_steps"] == 10


def test_other_config_in_workdir_is_a_clear_error(tmp_path, caplog):
  config = ToyConfig(num_steps=3)
  train_toy(config, tmp_path)
  other = dataclasses.replace(config, learning_rate=0.01)
  with pytest.raises(runs.ConfigMismatchError, match="learning-rate"):
    train_toy(other, tmp_path)
  # The old run's config is untouched by the failed attempt.
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["learning_rate"] == 0.1
  # --overwrite removes all of the old run, its evaluations and report too
  # (they would be read as the new run's), and says what it removed.
  for name in ("eval/disentanglement_quick/results.json", "report/report.md"):
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text("{}")
  (tmp_path / "my_notes.txt").write_text("kept")
  with caplog.at_level(logging.WARNING, logger="train.loop"):
    state = train_toy(other, tmp_path, overwrite=True)
  assert int(state.step) == 3
  assert json.loads((tmp_path / "config.json").read_text())[
    "learning_rate"
  ] == (0.01)
  assert not (tmp_path / "eval").exists()
  assert not (tmp_path / "report").exists()
  assert (tmp_path / "my_notes.txt").read_text() == "kept"
  (removed,) = [
    r.getMessage() for r in caplog.records if "--overwrite" in r.getMessage()
  ]
  assert "'eval'" in removed and "'ckpt'" in removed and "'report'" in removed


def test_a_damaged_config_or_spec_is_one_line_naming_the_file(tmp_path):
  train_toy(ToyConfig(num_steps=2), tmp_path)
  (tmp_path / runs.CONFIG_NAME).write_text("{bad")
  (tmp_path / runs.SPEC_NAME).write_text("{bad")
  with pytest.raises(ValueError) as resumed:
    train_toy(ToyConfig(num_steps=3), tmp_path)
  with pytest.raises(ValueError) as read:
    runs.read_spec(tmp_path)
  for info, name in ((resumed, runs.CONFIG_NAME), (read, runs.SPEC_NAME)):
    line = errors.error_line(info.value)
    assert str(tmp_path / name) in line and "repair the JSON" in line
    assert "\n" not in line and "delete" not in line.lower()


def test_other_architecture_in_checkpoint_is_a_clear_error(tmp_path):
  config = ToyConfig(num_steps=3)
  train_toy(config, tmp_path)
  with pytest.raises(runs.ConfigMismatchError, match="does not fit"):
    train_toy(config, tmp_path, width=5)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = ToyConfig(num_steps=10, log_every=2, checkpoint_every=2)
  with pytest.raises(loop.NonFiniteLossError) as info:
    train_toy(config, tmp_path, poison_at=4)
  message = str(info.value)
  assert "at step 6" in message and "last good checkpoint is step 4" in message
  # A deterministic rerun meets the same loss: no advice to rerun.
  assert "new --workdir" in message and "resumes" not in message
  assert _steps(tmp_path) == [2, 4]
  _, restored = runs.restore(tmp_path)
  chex.assert_tree_all_finite(restored["state"]["params"])
  assert runs.read_config(tmp_path)["num_steps"] == 10


def test_a_second_sigint_stops_at_once_and_says_so(tmp_path):
  # The entry point printed "Interrupted before training started" for it.
  config = ToyConfig(num_steps=10, checkpoint_every=100)
  with pytest.raises(KeyboardInterrupt) as info:
    train_toy(config, tmp_path, signal_at=4, signals=2)
  assert not isinstance(info.value, loop.TrainingInterrupted)
  assert str(info.value).startswith("Interrupted again (SIGINT)")
  assert not (tmp_path / "ckpt").exists() or _steps(tmp_path) == []


def test_sigint_saves_and_resumes(tmp_path):
  # Under nohup or in a background job SIGINT may be ignored (SIG_IGN):
  # whatever the handler was, it is back afterwards.
  before = signal.getsignal(signal.SIGINT)
  config = ToyConfig(num_steps=10, checkpoint_every=100)
  with pytest.raises(loop.TrainingInterrupted) as info:
    train_toy(config, tmp_path, signal_at=4)
  assert info.value.step == 5 and info.value.signum == signal.SIGINT
  assert _steps(tmp_path) == [5]
  assert signal.getsignal(signal.SIGINT) == before
  state = train_toy(config, tmp_path)
  assert int(state.step) == 10 and _steps(tmp_path) == [5, 10]
  assert signal.getsignal(signal.SIGINT) == before
  # The row after the resume averages step 6 alone, and says so.
  rows = [r for r in writers.read_scalars(tmp_path) if "train/loss" in r]
  assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
  assert [r.get("train/steps_in_mean") for r in rows] == [
    None,
    None,
    1,
    None,
    None,
  ]


@pytest.mark.parametrize(
  ("kill_at", "checkpoint_every"),
  [(7, 3), (5, 100)],  # After a checkpoint; before the first one.
)
def test_sigkill_resumes_to_the_same_params(
  kill_at, checkpoint_every, tmp_path
):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
    [
      sys.executable,
      __file__,
      str(tmp_path / "killed"),
      str(kill_at),
      str(checkpoint_every),
    ],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  survived = _steps(tmp_path / "killed") if checkpoint_every < 10 else []
  assert all(s <= kill_at for s in survived)
  killed_rows = writers.read_scalars(tmp_path / "killed")
  assert [r["step"] for r in killed_rows] == [2, 4, 6][: (kill_at - 1) // 2]
  config = ToyConfig(checkpoint_every=checkpoint_every)
  resumed = train_toy(config, tmp_path / "killed")
  straight = train_toy(config, tmp_path / "straight")
  assert int(resumed.step) == 10
  chex.assert_trees_all_equal(resumed.params, straight.params)
  # The log holds every logged step exactly once, as the straight run's
  # (also when the kill came before the first checkpoint: issue 23).
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
  _workdir, _kill_at, _every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  train_toy(ToyConfig(checkpoint_every=_every), _workdir, kill_at=_kill_at)
