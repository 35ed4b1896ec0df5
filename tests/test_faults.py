"""The faults of issue 23, each with the value it must give.

Full disks, a kill before the first checkpoint, damaged bytes that still
read, fallbacks that must print one line, resume details and an evaluation
racing a trainer (``workflow.runs``, ``workflow.writers``, ``train.loop``).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import gc
import io
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_runs import ToyConfig, train_toy
from workflow import errors, runs, writers

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A toy run with good checkpoints at steps 3 and 6 (kept as a template)."""
  workdir = tmp_path_factory.mktemp("template")
  return workdir, train_toy(ToyConfig(), workdir)


def _copy(trained, tmp_path, name="run"):
  workdir = tmp_path / name
  shutil.copytree(trained[0], workdir)
  return workdir


def _logged_steps(workdir):
  return [r["step"] for r in writers.read_scalars(workdir) if "train/loss" in r]


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
    check=False,
  )


# --------------------------------------------------------------------------
# 1. A full disk during a save.

_Usage = collections.namedtuple("_Usage", "total used free")


def test_a_full_disk_is_one_line_and_the_rerun_resumes_exactly(
  trained, tmp_path, monkeypatch
):
  straight = train_toy(ToyConfig(num_steps=9), tmp_path / "straight")
  workdir = _copy(trained, tmp_path)
  monkeypatch.setattr(
    runs.shutil, "disk_usage", lambda path: _Usage(10**9, 10**9, 1000)
  )
  with pytest.raises(runs.CheckpointWriteError) as info:
    train_toy(ToyConfig(num_steps=9), workdir)
  line = errors.error_line(info.value)
  assert line.startswith("error: The disk is full (saving step 9 to ")
  assert "resumes from step 6, which is intact" in line
  assert "\n" not in line and "delete" not in line.lower()
  # Nothing of step 9 was written; step 6 is intact.
  assert sorted(p.name for p in (workdir / "ckpt").iterdir()) == ["3", "6"]
  monkeypatch.undo()
  state = train_toy(ToyConfig(num_steps=9), workdir)
  chex.assert_trees_all_equal(state.params, straight.params)
  # Steps 7-9, logged before the failed save, appear once after the rerun.
  assert _logged_steps(workdir) == list(range(1, 10))


ORBAX_FULL = (
  'RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database at local '
  'file "/w/ckpt/5.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
  'ocdbt.process_0/": Failed to write 29589504 bytes to file 19: No space '
  "left on device [os_error_code='28']"
)
WRITE_FAILURES = [  # (error raised inside orbax, key words of the one line)
  (ValueError(ORBAX_FULL), "The disk is full (saving step 9"),
  (ValueError("Failed: Disk quota exceeded"), "The disk is full"),
  (OSError(errno.ENOSPC, "No space left on device"), "The disk is full"),
  (ValueError("open: Read-only file system"), "Cannot write (saving step 9"),
]


@pytest.mark.parametrize("error, words", WRITE_FAILURES)
def test_a_failed_write_inside_orbax_is_one_line(
  error, words, trained, tmp_path, monkeypatch
):
  workdir = _copy(trained, tmp_path)

  def failing_save(*args, **kwargs):
    raise error

  with runs.checkpoint_manager(workdir) as mngr:
    monkeypatch.setattr(mngr, "save", failing_save)
    with pytest.raises(runs.CheckpointWriteError) as info:
      runs.save(mngr, 9, state={"x": np.zeros(2)})
  line = errors.error_line(info.value)
  assert line.startswith(f"error: {words}") and "\n" not in line
  assert "RESOURCE_EXHAUSTED" not in line
  assert runs.restore(workdir)[0] == 6


def test_a_full_disk_met_by_the_metric_log_names_the_file(tmp_path):
  class FullFile(io.StringIO):
    name = str(tmp_path / writers.JSONL_NAME)

    def write(self, text):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with writers.MetricWriter(tmp_path) as writer:
    writer._jsonl.close()
    writer._jsonl = FullFile()
    with pytest.raises(OSError) as info:
      writer.write_scalars(1, {"train/loss": 1.0})
  line = errors.error_line(info.value)
  assert line.startswith(f"error: The disk is full (writing {FullFile.name})")
  assert "run the same command again" in line and "\n" not in line
  assert "delete" not in line.lower()


FULL_DISK_SCRIPT = """
import sys
from tests.test_runs import ToyConfig, train_toy
from workflow import errors, runs
if sys.argv[-1] == "no-precheck":  # Let orbax meet the full disk itself.
  runs._free_bytes = lambda path: 1 << 40
try:
  train_toy(ToyConfig(num_steps=9, pad=1 << 18), sys.argv[-2])
except errors.USER_ERRORS as e:
  print(errors.error_line(e), file=sys.stderr)
  sys.exit(2)
"""


@pytest.mark.parametrize("precheck", [True, False])
def test_a_real_full_disk_prints_one_line(tmp_path, precheck):
  """A 1.5 MB tmpfs holds one checkpoint of the padded toy (1 MB of random
  parameters; about 1,035 KB on disk), not two; root only (mount)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mount = ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(disk)]
  if os.geteuid() != 0 or subprocess.run(mount, check=False).returncode:
    pytest.skip("mounting a small tmpfs needs root")
  mode = "precheck" if precheck else "no-precheck"
  script = [sys.executable, "-c", FULL_DISK_SCRIPT, str(disk / "run"), mode]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    done = subprocess.run(
      script, cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    # Without the check, orbax or the metric log meets the full disk first.
    assert lines[0].startswith("error: The disk is full (")
    if precheck:  # 3 MB of arrays (Adam's zeros compress) do not fit.
      assert "no checkpoint was saved yet" in lines[0]
    else:  # Orbax failed at step 6; step 3 is intact.
      assert runs.restore(disk / "run")[0] == 3
    # Space is freed (a larger disk): the same command finishes the run, and
    # the temporary folder of the failed save is gone.
    remount = ["mount", "-o", "remount,size=8m", str(disk)]
    subprocess.run(remount, check=True)
    done = subprocess.run(
      script, cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (disk / "run" / "ckpt").iterdir())
    assert names == ["3", "6", "9"]
    assert _logged_steps(disk / "run") == list(range(1, 10))
  finally:
    subprocess.run(["umount", str(disk)], check=False)


# --------------------------------------------------------------------------
# 2. A run killed before its first checkpoint.


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(
  tmp_path,
):
  # What a kill at step 4 leaves with --checkpoint-every beyond the run:
  # rows 1-4 (the last one torn) and no checkpoint.
  with writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    for step in range(1, 5):
      writer.write_scalars(step, {"train/loss": 100.0 + step})
  with open(tmp_path / writers.JSONL_NAME, "a") as f:
    f.write('{"step": 5, "train/lo')
  train_toy(ToyConfig(num_steps=6, checkpoint_every=100), tmp_path)
  rows = writers.read_scalars(tmp_path)
  assert _logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
  assert all(r["train/loss"] < 100 for r in rows if "train/loss" in r)


def test_a_writer_resumed_at_step_0_starts_an_empty_log(tmp_path):
  with writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(1, {"train/loss": 1.0})
  with writers.MetricWriter(tmp_path, tensorboard=False, resume_step=0):
    pass
  assert writers.read_scalars(tmp_path) == []


# --------------------------------------------------------------------------
# 3. Damaged bytes that still read.


def _save_steps(workdir, values):
  with runs.checkpoint_manager(workdir) as mngr:
    for step, state in values.items():
      runs.save(mngr, step, state=state, wait=True)


def test_nan_bytes_in_a_data_file_fall_back_to_the_step_before(
  tmp_path, caplog
):
  # Random int32 bits do not compress: orbax stores them as they are, so
  # bytes written over them still read (as in a real model's large arrays).
  bits = np.random.default_rng(0).integers(-(2**31), 2**31, 1 << 16)
  state = {"bits": jnp.asarray(bits, jnp.int32), "w": jnp.ones(3)}
  _save_steps(tmp_path, {1: state, 2: state})
  data = max(
    (tmp_path / "ckpt" / "2" / "state").rglob("d/*"),
    key=lambda p: p.stat().st_size,
  )
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle : middle + 4096] = np.full(1024, np.nan, np.float32).tobytes()
  data.write_bytes(bytes(raw))
  with caplog.at_level(logging.WARNING):
    step, restored = runs.restore(tmp_path)
  assert step == 1
  chex.assert_trees_all_equal(restored["state"]["bits"], state["bits"])
  (line,) = caplog.messages
  assert line.startswith("Skipped checkpoint step 2 in ")
  assert "the values of 'state' differ from those saved" in line
  # Without the checksums the damage reads silently: the check is needed.
  shutil.rmtree(tmp_path / "ckpt" / "2" / runs.CHECKSUMS)
  _, silent = runs.restore(tmp_path, step=2)
  assert not np.array_equal(silent["state"]["bits"], bits)


def test_damaged_values_fall_back_and_older_checkpoints_still_restore(
  trained, tmp_path, caplog
):
  workdir = _copy(trained, tmp_path)
  sums = tmp_path / "sums"
  shutil.copytree(workdir / "ckpt" / "6" / runs.CHECKSUMS, sums)
  _, good = runs.restore(workdir, step=6)
  changed = dict(good["state"])
  changed["params"] = {"w": good["state"]["params"]["w"] * 2}
  shutil.rmtree(workdir / "ckpt" / "6")
  _save_steps(workdir, {6: changed})
  shutil.rmtree(workdir / "ckpt" / "6" / runs.CHECKSUMS)
  # A step saved before checksums existed restores as it is.
  assert runs.restore(workdir)[0] == 6
  shutil.copytree(sums, workdir / "ckpt" / "6" / runs.CHECKSUMS)
  with caplog.at_level(logging.WARNING):
    assert runs.restore(workdir)[0] == 3
  assert "differ from those saved" in caplog.text


# --------------------------------------------------------------------------
# 4. Fallbacks print one line per skipped step.


def _flip(path):
  raw = bytearray(path.read_bytes())
  for i in range(0, len(raw), 7):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


def _nan_bytes(path):
  raw = bytearray(path.read_bytes())
  middle = len(raw) // 2
  raw[middle : middle + 64] = np.full(16, np.nan, np.float32).tobytes()
  path.write_bytes(bytes(raw))


DATA_DAMAGE = {
  "flipped": _flip,
  "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)),
  "emptied": lambda p: p.write_bytes(b""),
  "nan_bytes": _nan_bytes,
}


def test_fallbacks_print_one_line_per_skipped_step(tmp_path):
  # 64 KB of parameters: orbax keeps them in ocdbt.process_0 (small values
  # are inlined in its index).
  template = tmp_path / "template"
  train_toy(ToyConfig(pad=1 << 14), template)
  trained = (template, None)
  dirs = []
  for name, hurt in DATA_DAMAGE.items():
    workdir = _copy(trained, tmp_path, name)
    state = workdir / "ckpt" / "6" / "state"
    for path in state.rglob("d/*"):
      hurt(path)
    dirs.append(workdir)
  workdir = _copy(trained, tmp_path, "no_process_folder")
  shutil.rmtree(workdir / "ckpt" / "6" / "state" / "ocdbt.process_0")
  dirs.append(workdir)
  code = """
    import logging, sys
    from workflow import runs
    logging.basicConfig(format="%(levelname)s %(message)s", force=True)
    for workdir in sys.argv[1:]:
      print("BEGIN", workdir, file=sys.stderr, flush=True)
      step, _ = runs.restore(workdir)
      print("RESTORED", step, file=sys.stderr, flush=True)
  """
  done = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code), *map(str, dirs)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  blocks = done.stderr.split("BEGIN ")[1:]
  assert len(blocks) == len(dirs), done.stderr[-3000:]
  for block in blocks:
    lines = block.strip().splitlines()[1:]
    assert lines[-1] == "RESTORED 3", block[-3000:]
    (warning,) = lines[:-1]
    assert warning.startswith("WARNING Skipped checkpoint step 6 in ")
    assert "restored step 3" in warning and len(warning) < 500


def _abandon(message: str) -> None:
  async def abandon():
    future = asyncio.get_running_loop().create_future()
    future.set_exception(ValueError(message))
    del future
    gc.collect()

  asyncio.run(abandon())


def test_an_abandoned_tensorstore_read_logs_nothing(caplog):
  # 1 in 4 runs of the test above printed asyncio's "Future exception was
  # never retrieved" with a read orbax had given up (its spec in the text).
  runs.quiet_orbax()
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    _abandon("OUT_OF_RANGE: Error reading [tensorstore_spec='{}']")
  assert "never retrieved" not in caplog.text
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    _abandon("a bug of someone else's")
  assert "never retrieved" in caplog.text


QUIET_SCRIPT = """
import logging, os, sys
from workflow import runs
hook = sys.unraisablehook
runs.checkpoint_manager(sys.argv[1], read_only=True).close()
record = lambda path: logging.LogRecord("absl", 40, path, 1, "x", None, None)
absl = logging.getLogger("absl")
orbax = os.path.join(os.sep, "site-packages", "orbax", "manager.py")
other = os.path.join(os.sep, "site-packages", "tfds", "load.py")
print(bool(absl.filter(record(orbax))), bool(absl.filter(record(other))),
      sys.unraisablehook is hook)
"""


@pytest.mark.parametrize(
  "debug, shown", [("", "False True False"), ("1", "True True True")]
)
def test_orbax_records_are_dropped_unless_debug(debug, shown, tmp_path):
  done = subprocess.run(
    [sys.executable, "-c", QUIET_SCRIPT, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu", errors.DEBUG_ENV: debug},
    check=False,
  )
  assert done.stdout.strip() == shown, done.stderr[-2000:]


# --------------------------------------------------------------------------
# 5. Resume details.


def test_a_damaged_step_is_saved_again_when_the_run_reaches_it(
  tmp_path, caplog
):
  straight = train_toy(ToyConfig(num_steps=9), tmp_path / "straight")
  workdir = tmp_path / "run"
  train_toy(ToyConfig(num_steps=9), workdir)
  for path in (workdir / "ckpt" / "9" / "state").rglob("d/*"):
    path.write_bytes(b"")
  with caplog.at_level(logging.WARNING):
    state = train_toy(ToyConfig(num_steps=9), workdir)
  chex.assert_trees_all_equal(state.params, straight.params)
  (line,) = [m for m in caplog.messages if "Skipped" in m]
  aside = workdir / runs.DAMAGED_DIR / "9"
  assert f"moved to {aside}; the run saves step 9 again" in line
  assert aside.is_dir()
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    step, restored = runs.restore(workdir)
  assert step == 9 and caplog.messages == []
  chex.assert_trees_all_equal(restored["state"]["params"], straight.params)


def test_a_reader_never_moves_a_damaged_step(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(workdir / "ckpt" / "6" / "state")
  assert runs.restore(workdir)[0] == 3
  assert (workdir / "ckpt" / "6").is_dir()
  assert not (workdir / runs.DAMAGED_DIR).exists()


def test_lowering_max_to_keep_names_the_steps_it_deletes_first(
  tmp_path, caplog
):
  train_toy(ToyConfig(num_steps=9), tmp_path)
  with caplog.at_level(logging.WARNING):
    train_toy(ToyConfig(num_steps=12, max_to_keep=1), tmp_path)
  (line,) = [m for m in caplog.messages if "max-to-keep" in m]
  assert "--max-to-keep=1" in line and "steps [3, 6, 9]" in line
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["12"]


# --------------------------------------------------------------------------
# 6. Evaluation racing a trainer.


def test_evaluation_racing_a_trainer_reads_the_newest_step(tmp_path, caplog):
  """A trainer saves every step and keeps 2 while a reader restores."""
  state = {"w": jnp.arange(256.0)}
  with runs.checkpoint_manager(tmp_path, max_to_keep=2) as mngr:
    runs.save(mngr, 0, state=state, wait=True)
    done = threading.Event()

    def trainer():
      try:
        for step in range(1, 61):
          runs.save(mngr, step, state=state, wait=True)
      finally:
        done.set()

    thread = threading.Thread(target=trainer)
    thread.start()
    steps, failures = [], []
    with caplog.at_level(logging.WARNING):
      while not done.is_set():
        try:
          steps.append(runs.restore(tmp_path)[0])
        except Exception as e:  # noqa: BLE001 (counted)
          failures.append(errors.error_line(e))
    thread.join()
  assert failures == [] and len(steps) > 5
  assert steps == sorted(steps)
  assert "backup" not in caplog.text and "Skipped" not in caplog.text
