"""Run directories (workflow.runs): damaged checkpoints, locks, full disks.

Each damage a crash or a bad disk can leave is tried on the newest step of a
real training run; the restore must fall back to the newest good step, say
which step it skipped and why, and never advise deleting anything.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eval import restore
from train import loop
from workflow import errors, runs, writers


@dataclasses.dataclass(frozen=True)
class ToyConfig(loop.LoopConfig):
  """A linear regression: 6 steps, a checkpoint every 3, a log every step."""

  num_steps: int = 6
  log_every: int = 1
  checkpoint_every: int = 3
  steps_per_call: int = 1
  pad: int = 0  # Size of an extra random parameter the loss ignores.


def train_toy(config: ToyConfig, workdir, **kwargs):
  """Trains the toy regression through the shared loop (``train.loop``)."""
  tx = optax.adam(0.1)
  x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  data = {"x": x, "y": x @ np.arange(1, 5, dtype=np.float32)[:, None]}

  def create(key, config):
    params = {"w": jax.random.normal(key, (4, 1))}
    if config.pad:
      params["pad"] = jax.random.normal(key, (config.pad,))
    return loop.TrainState.create(apply_fn=None, params=params, tx=tx)

  def sample(arrays, key, num):
    rows = jax.random.randint(key, (num,), 0, 64)
    return {k: v[rows] for k, v in arrays.items()}

  def step(state, batch, key, weights, config):
    del key, weights, config

    def loss_fn(params):
      return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}

  return loop.train_and_evaluate(
    config,
    workdir,
    create_train_state=create,
    train_step=step,
    batch_size=8,
    device_data=(data, sample),
    **kwargs,
  )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A toy run with good checkpoints at steps 3 and 6 (kept as a template)."""
  workdir = tmp_path_factory.mktemp("template")
  state = train_toy(ToyConfig(), workdir)
  return workdir, state


def _copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def _files(root, pattern):
  return sorted(p for p in root.rglob(pattern) if p.is_file())


def _truncate_data(step_dir):
  for path in _files(step_dir / "state", "d/*"):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGES = {
  "partial": (lambda d: shutil.rmtree(d / "state"), "partial"),
  "truncated": (_truncate_data, "unreadable"),
  "no_metadata": (
    lambda d: (d / "state" / "_METADATA").unlink(),
    "unreadable, state/_METADATA is missing",
  ),
  "no_manifest": (
    lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "unreadable, state/manifest.ocdbt is missing",
  ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_step_falls_back_to_the_last_good_one(
  damage, trained, tmp_path, caplog
):
  workdir = _copy(trained, tmp_path)
  hurt, reason = DAMAGES[damage]
  hurt(workdir / "ckpt" / "6")
  with caplog.at_level(logging.WARNING):
    step, restored = runs.restore(workdir)
  assert step == 3
  warning = caplog.text
  assert "Skipped checkpoint step 6" in warning and reason in warning
  assert "overwrite" not in warning.lower()
  # Training resumes from step 3 and reaches the same parameters.
  state = train_toy(ToyConfig(), workdir)
  chex.assert_trees_all_equal(state.params, trained[1].params)


def test_non_finite_step_is_skipped(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  _, good = runs.restore(workdir, step=6)
  poisoned = dict(good["state"])
  poisoned["params"] = {"w": jnp.full((4, 1), jnp.nan)}
  shutil.rmtree(workdir / "ckpt" / "6")
  with runs.checkpoint_manager(workdir) as mngr:
    runs.save(mngr, 6, state=poisoned, wait=True)
  with caplog.at_level(logging.WARNING):
    step, restored = runs.restore(workdir)
  assert step == 3
  assert "non-finite values in ['state']['params']['w']" in caplog.text
  chex.assert_tree_all_finite(restored["state"])


def test_no_usable_step_names_each_and_advises_no_deletion(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in (3, 6):
    shutil.rmtree(workdir / "ckpt" / str(step) / "state")
  with pytest.raises(runs.CheckpointError) as info:
    runs.restore(workdir)
  message = str(info.value)
  assert "step 6: partial" in message and "step 3: partial" in message
  assert "overwrite" not in message and "delete" not in message.lower()
  assert "\n" not in message


def test_a_missing_or_file_workdir_is_named_so(tmp_path):
  fix = "pass --workdir=<a training run folder>"
  nope, afile = tmp_path / "nope", tmp_path / "afile.txt"
  afile.write_text("notes")
  loaders = [runs.restore, runs.read_spec, restore.load_run]
  for load in loaders:
    with pytest.raises(FileNotFoundError) as info:
      load(nope)
    assert str(info.value) == f"the run folder {nope} does not exist; {fix}"
    with pytest.raises(NotADirectoryError) as info:
      load(afile)
    assert str(info.value) == f"{afile} is a file, not a run folder; {fix}"
  assert not nope.exists()
  # A folder without checkpoints still says so.
  with pytest.raises(FileNotFoundError, match=r"No checkpoints in .*/ckpt"):
    restore.load_run(tmp_path)


def test_the_config_is_stored_once_beside_the_checkpoints(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  # config.json is the one copy; checkpoints hold arrays only.
  assert runs.read_config(workdir)["num_steps"] == 6
  items = {p.name for p in (workdir / "ckpt" / "6").iterdir() if p.is_dir()}
  assert items == {"state", "checksums"}
  assert runs.read_config(tmp_path / "nothing-here") == {}
  for damaged in ("{not json", "[]"):
    (workdir / runs.CONFIG_NAME).write_text(damaged)
    with pytest.raises(ValueError, match="config.json is damaged"):
      runs.read_config(workdir)


def test_a_second_trainer_in_the_same_workdir_is_refused(tmp_path):
  with runs.lock(tmp_path):
    with pytest.raises(runs.WorkdirLockedError, match="in use by pid"):
      with runs.lock(tmp_path):
        pass
    with pytest.raises(runs.WorkdirLockedError, match="--workdir"):
      train_toy(ToyConfig(num_steps=2), tmp_path)
  # Released with its holder: the same workdir trains now.
  train_toy(ToyConfig(num_steps=2), tmp_path)


def test_a_workdir_that_cannot_be_a_folder_is_one_clear_line(tmp_path):
  afile = tmp_path / "afile.txt"
  afile.write_text("x")
  for workdir, train in (
    (afile, False),
    (afile / "sub", False),
    (afile, True),  # The trainer said "Not a directory: <file>/ckpt".
  ):
    with pytest.raises(runs.CheckpointWriteError) as info:
      if train:
        train_toy([ToyConfig(num_steps=2, seed=s) for s in (0, 1)], workdir)
      with runs.lock(workdir):
        pass
    line = errors.error_line(info.value)
    assert line.startswith(f"error: {workdir}") and line.endswith(
      "is a file, not a folder; pass --workdir=<a folder>."
    ), line
  # A folder that cannot be made (no parent there, e.g. under /proc).
  with pytest.raises(runs.CheckpointWriteError) as info:
    with runs.lock("/proc/vae_attn_no/run"):
      pass
  assert errors.error_line(info.value).startswith(
    "error: Cannot write (creating /proc/vae_attn_no/run): "
  )
  assert "Pass a --workdir you can write to." in str(info.value)


def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(
  trained, tmp_path, monkeypatch
):
  workdir = _copy(trained, tmp_path)

  def full(*args, **kwargs):
    raise RuntimeError("tensorstore write failed") from OSError(
      errno.ENOSPC, "No space left on device"
    )

  with runs.checkpoint_manager(workdir) as mngr:
    monkeypatch.setattr(mngr, "save", full)
    with pytest.raises(runs.CheckpointWriteError) as info:
      runs.save(mngr, 9, state={"x": np.zeros(2)})
  message = str(info.value)
  assert "disk is full" in message and "\n" not in message
  assert "intact" in message and "delete" not in message.lower()
  assert runs.restore(workdir)[0] == 6


def test_read_only_run_directory_is_restored(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for path in [workdir, *workdir.rglob("*")]:
    path.chmod(0o555 if path.is_dir() else 0o444)
  try:
    step, restored = runs.restore(workdir)
    assert step == 6 and runs.read_config(workdir)["num_steps"] == 6
  finally:
    for path in [workdir, *workdir.rglob("*")]:
      path.chmod(0o755 if path.is_dir() else 0o644)


def test_resume_truncates_log_rows_after_the_restored_step(tmp_path):
  with writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    for step in (2, 4, 6):
      writer.write_scalars(step, {"train/loss": step})
  # A torn last line, as a kill during a write leaves.
  with open(tmp_path / writers.JSONL_NAME, "a") as f:
    f.write('{"step": 8, "train/lo')
  with writers.MetricWriter(
    tmp_path, tensorboard=False, resume_step=4
  ) as writer:
    writer.write_scalars(6, {"train/loss": 6.5})
  rows = writers.read_scalars(tmp_path)
  assert [(r["step"], r["train/loss"]) for r in rows] == [
    (2, 2.0),
    (4, 4.0),
    (6, 6.5),
  ]


def test_software_names_every_version_and_the_commit():
  import importlib.metadata
  import platform
  import subprocess

  info = runs.software()
  assert info["python"] == platform.python_version()
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
    assert info[name] == importlib.metadata.version(name)
  for name in ("numpy", "scikit-learn"):
    assert info[name] == importlib.metadata.version(name)
  assert info["backend"] == "cpu" and info["device_kind"] == "cpu"
  assert info["device_count"] == 1
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"],
    cwd=runs.__file__.rsplit("/workflow/", 1)[0],
    capture_output=True,
    text=True,
    check=False,
  )
  if head.returncode == 0:
    assert info["git_commit"] == head.stdout.strip()
    assert isinstance(info["git_modified"], bool)
  json.dumps(info)  # JSON-ready.


def test_software_without_git_has_no_commit(monkeypatch):
  def no_git(*args, **kwargs):
    raise FileNotFoundError(2, "No such file or directory: 'git'")

  monkeypatch.setattr(runs.subprocess, "run", no_git)
  info = runs.software()
  assert info["git_commit"] is None and info["git_modified"] is None
  assert info["jax"] is not None


def test_every_run_folder_records_its_software(trained):
  saved = json.loads((trained[0] / runs.SOFTWARE_NAME).read_text())
  assert saved.keys() == runs.software().keys()
  assert saved["jax"] == runs.software()["jax"]
  assert json.loads((trained[0] / runs.CONFIG_NAME).read_text())["num_steps"]


def test_debug_flag_reaches_code_far_from_the_command_line(monkeypatch):
  # --debug sets VAE_ATTN_DEBUG while the entry point runs (orbax's own log
  # lines are shown then), and leaves the environment as it found it.
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
  with errors.debug_mode(True):
    assert errors.debug_requested()
  assert errors.DEBUG_ENV not in os.environ
  with errors.debug_mode(False):
    assert not errors.debug_requested()
  monkeypatch.setenv(errors.DEBUG_ENV, "1")
  with errors.debug_mode(True):
    pass
  assert os.environ[errors.DEBUG_ENV] == "1"


def test_overwrite_removes_the_members_of_an_earlier_grid(tmp_path, caplog):
  # Their scores would otherwise be read beside the new run's.
  grid = [ToyConfig(num_steps=2, seed=s) for s in (0, 1)]
  train_toy(grid, tmp_path)
  assert {p.name for p in tmp_path.iterdir()} >= {"seed0", "seed1"}
  (tmp_path / "notes").mkdir()  # Not a run: kept.
  with caplog.at_level(logging.WARNING, logger="train.loop"):
    train_toy(ToyConfig(num_steps=2, seed=3), tmp_path, overwrite=True)
  names = {p.name for p in tmp_path.iterdir()}
  assert "seed0" not in names and "seed1" not in names and "notes" in names
  assert runs.restore(tmp_path)[0] == 2
  (line,) = [
    r.getMessage() for r in caplog.records if "earlier" in r.getMessage()
  ]
  assert "'seed0'" in line and "'seed1'" in line


def test_a_changed_grid_is_refused_before_its_new_members_are_made(tmp_path):
  # A rerun with one more seed was refused, but only after it had made the
  # new member's folder (ckpt/, .lock), which evaluators then read as a run.
  train_toy([ToyConfig(num_steps=2, seed=s) for s in (0, 1)], tmp_path)
  grown = [ToyConfig(num_steps=2, seed=s) for s in (0, 1, 2)]
  trained = r"'seed2'.*\['seed0', 'seed1'\]\): the grid was changed"
  with pytest.raises(runs.CheckpointError, match=trained):
    train_toy(grown, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0", "seed1"]
  assert runs.restore(tmp_path / "seed1")[0] == 2


def test_an_interrupted_grid_says_every_member_saved(tmp_path, monkeypatch):
  # The line named the first member's ckpt/ only, though every member saved.
  write, sent = writers.MetricWriter.write_scalars, []

  def interrupt_at_step_2(self, step, scalars):
    write(self, step, scalars)
    if step == 2 and not sent:  # Once: a second SIGINT aborts at once.
      sent.append(os.kill(os.getpid(), signal.SIGINT))

  monkeypatch.setattr(
    writers.MetricWriter, "write_scalars", interrupt_at_step_2
  )
  grid = [ToyConfig(num_steps=6, seed=s) for s in (0, 1)]
  with pytest.raises(loop.TrainingInterrupted) as info:
    train_toy(grid, tmp_path)
  assert f"each member's ckpt/ under {tmp_path}" in str(info.value)
  step = info.value.step
  assert [runs.restore(tmp_path / f"seed{s}")[0] for s in (0, 1)] == [step] * 2


def test_a_run_and_a_grid_never_share_a_folder(tmp_path):
  # A grid's default folder held a single run: the members were written
  # beside it, and evaluating the folder read the old run.
  grid = [ToyConfig(num_steps=2, seed=s) for s in (0, 1)]
  train_toy(ToyConfig(num_steps=2), tmp_path / "run")
  with pytest.raises(runs.ConfigMismatchError, match="holds a single run"):
    train_toy(grid, tmp_path / "run")
  train_toy(grid, tmp_path / "grid")
  with pytest.raises(runs.ConfigMismatchError, match="member runs of a grid"):
    train_toy(ToyConfig(num_steps=2), tmp_path / "grid")
  # --overwrite replaces the single run by the grid.
  train_toy(grid, tmp_path / "run", overwrite=True)
  assert not (tmp_path / "run" / "ckpt").exists()
  assert runs.restore(tmp_path / "run" / "seed1")[0] == 2
