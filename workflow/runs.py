"""Run directories: the one place that writes and reads what training knows.

A run directory holds::

  config.json      the trainer's config (every field)
  spec.json        what evaluation needs to rebuild model and data (RunSpec)
  software.json    the software that trained it (:func:`software`)
  ckpt/<step>/     orbax items ``state``, ``checksums`` (a CRC-32 of every
                   array) and final extras such as ``latent_stats``
  damaged_checkpoints/<step>/   steps a resumed trainer found damaged (kept)
  metrics.jsonl, tensorboard/   the logs (``workflow.writers``)
  .lock            held (``fcntl.flock``) while a trainer writes the run

Restoring builds its target from the saved metadata and the current devices,
so a run trained on 8 devices (or several processes) is evaluated on one. It
skips damaged steps with one warning line each and never deletes one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib.metadata
import json
import logging
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from workflow import errors

CKPT_DIR = "ckpt"
CONFIG_NAME = "config.json"
SPEC_NAME = "spec.json"
SOFTWARE_NAME = "software.json"
LOCK_NAME = ".lock"
CHECKSUMS = "checksums"  # Our item: a CRC-32 of every saved array.
DAMAGED_DIR = "damaged_checkpoints"  # Where a trainer sets damaged steps.

_log = logging.getLogger(__name__)


class ConfigMismatchError(ValueError):
  """The run directory holds a run of another config or architecture."""


class CheckpointError(errors.UserError, RuntimeError):
  """No usable checkpoint (missing, partial, unreadable or non-finite)."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, read-only folder)."""


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another process is training in the same run directory."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What evaluation needs to rebuild a run's model and data.

  ``trainer`` is the entry point (``"factorvae"``); ``model`` and
  ``model_kwargs`` go to ``vae_attn.models.make_model``; ``data``,
  ``data_dir`` (``""``: the default) and ``data_kwargs`` name the data set;
  ``layer`` is the attention layer the trainer used.
  """

  trainer: str
  model: str
  model_kwargs: Mapping[str, Any]
  input_shape: tuple[int, int, int]
  data: str
  data_dir: str = ""
  layer: str = ""
  data_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> RunSpec:
    """Rebuilds a spec from :meth:`to_dict` output (``ValueError``: a field
    is missing or unknown)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(values) - names, {"trainer", "model"} - set(values)
    if unknown or missing:
      raise ValueError(
        f"Not a run spec (unknown fields {sorted(unknown)}, missing "
        f"{sorted(missing)}); it was written by another program or version."
      )
    values = dict(values)
    values["input_shape"] = tuple(values.get("input_shape", ()))
    return cls(**values)


def ckpt_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """``workdir/ckpt``, absolute."""
  return pathlib.Path(workdir).absolute() / CKPT_DIR


def member_runs(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """The sub-folders of ``workdir`` that hold a run's checkpoints (a grid's
  member runs), sorted; ``[]`` for a missing folder."""
  workdir = pathlib.Path(workdir).absolute()
  if not workdir.is_dir():
    return []
  return [p for p in sorted(workdir.iterdir()) if ckpt_dir(p).is_dir()]


def check_run_dir(workdir: str | os.PathLike) -> None:
  """``FileNotFoundError``/``NotADirectoryError`` for a ``workdir`` to read
  that is missing or a file."""
  fix = "pass --workdir=<a training run folder>"
  if not os.path.exists(workdir):
    raise FileNotFoundError(f"the run folder {workdir} does not exist; {fix}")
  if not os.path.isdir(workdir):
    raise NotADirectoryError(f"{workdir} is a file, not a run folder; {fix}")


def write_json(path: pathlib.Path, values: Mapping[str, Any]) -> None:
  """Writes ``values`` atomically (``CheckpointWriteError``: a full disk or a
  read-only folder)."""
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)
  except OSError as e:
    raise _write_error(e, f"writing {path}") from e


# The distributions whose versions can change a result (scikit-learn: MIG).
SOFTWARE_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "numpy",
  "scikit-learn",
)


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(*args: str) -> str | None:
  """``git <args>`` run in this checkout; ``None`` without git or a checkout."""
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    done = subprocess.run(
      ["git", *args],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=10,
      check=False,
      # Never take the index lock: a concurrent git command must not fail.
      env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def software() -> dict[str, Any]:
  """The software and hardware a result was produced with (JSON-ready).

  Python, each of :data:`SOFTWARE_PACKAGES` and ``vae_attn`` (``None``: not
  installed), the backend and devices, and the checkout's ``git_commit`` and
  ``git_modified`` (``None`` without git or a checkout).
  """
  out: dict[str, Any] = {"python": platform.python_version()}
  out.update({name: _version(name) for name in SOFTWARE_PACKAGES})
  devices = jax.devices()
  out["backend"] = jax.default_backend()
  out["device_kind"] = devices[0].device_kind
  out["device_count"] = len(devices)
  out["vae_attn"] = _version("vae-attn")
  out["git_commit"] = _git("rev-parse", "HEAD")
  status = None
  if out["git_commit"] is not None:
    status = _git("status", "--porcelain", "--untracked-files=no")
  out["git_modified"] = None if status is None else bool(status)
  return out


def write_run_files(
  workdir: str | os.PathLike,
  config: Mapping[str, Any],
  spec: RunSpec | None = None,
) -> None:
  """Writes ``config.json``, ``spec.json`` (with a spec) and
  ``software.json`` into the existing ``workdir``."""
  workdir = pathlib.Path(workdir)
  write_json(workdir / CONFIG_NAME, config)
  if spec is not None:
    write_json(workdir / SPEC_NAME, spec.to_dict())
  write_json(workdir / SOFTWARE_NAME, software())


def read_spec(workdir: str | os.PathLike) -> RunSpec:
  """The run spec of ``workdir`` (``spec.json``); a missing one is a
  ``FileNotFoundError`` saying which trainers write it."""
  check_run_dir(workdir)
  path = pathlib.Path(workdir) / SPEC_NAME
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} is missing: {workdir} is not a run directory of this version "
      "(python -m train.factorvae or python -m train.oneclass write it)."
    )
  values = read_json(path)
  try:
    return RunSpec.from_dict(values)
  except ValueError as e:
    raise ValueError(
      f"{path} is not a run spec ({e}); repair the JSON (plain text) or "
      "pass another --workdir."
    ) from None


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """The trainer's config of ``workdir`` (``config.json``; ``{}`` if none)."""
  return read_json(pathlib.Path(workdir) / CONFIG_NAME)


def read_json(path: pathlib.Path) -> dict[str, Any]:
  """The JSON object at ``path`` (``{}`` if there is none); anything else is
  a ``ValueError`` naming the file."""
  if not path.is_file():
    return {}
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    values = e
  if not isinstance(values, dict):
    what = values if isinstance(values, Exception) else "not a JSON object"
    raise ValueError(
      f"{path} is damaged ({what}); repair the JSON (plain text) or pass "
      "another --workdir."
    )
  return values


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds ``workdir/.lock`` (``fcntl.flock``, released by the kernel however
  the process ends) so a second trainer is refused at once
  (``WorkdirLockedError`` naming the holder)."""
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / LOCK_NAME, "a+")  # noqa: SIM115 (closed below)
  except (FileExistsError, NotADirectoryError) as e:
    raise CheckpointWriteError(
      e.errno,
      f"{workdir} (or a folder above it) is a file, not a folder; pass "
      "--workdir=<a folder>.",
    ) from e
  except OSError as e:
    raise _write_error(e, f"creating {workdir}") from e
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise WorkdirLockedError(
        f"{workdir} is in use by {holder}: two trainers cannot share a "
        "workdir. Wait for it to finish (or stop it), or pass another "
        "--workdir."
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    yield
  finally:
    handle.close()  # Releases the lock.


def _write_error(error: BaseException, what: str) -> Exception:
  """One clear error for a failed write, or ``error`` if it is not one."""
  number = _errno_of(error)
  if number in _FULL_ERRNOS:
    return CheckpointWriteError(
      number,
      f"The disk is full ({what}). Free some space and run the same command "
      "again: it resumes from the last complete checkpoint, which is intact.",
    )
  if number in _NOT_WRITABLE_ERRNOS:
    return CheckpointWriteError(
      number,
      f"Cannot write ({what}): {os.strerror(number)}. Pass a --workdir you "
      "can write to.",
    )
  return error if isinstance(error, Exception) else RuntimeError(str(error))


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ENOENT: a parent that cannot be made (/proc/x); matched as an OSError only.
_NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT)


def _errno_of(error: BaseException | None) -> int | None:
  """The errno of the first ``OSError`` in the cause chain, else the first
  errno whose text the messages contain (tensorstore reports text)."""
  texts = []
  while error is not None:
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno
    texts.append(str(error))
    error = error.__cause__ or error.__context__
  text = " ".join(texts)
  for number in (*_FULL_ERRNOS, *_NOT_WRITABLE_ERRNOS[:-1]):
    if os.strerror(number) in text:
      return number
  return None


def quiet_orbax() -> None:
  """Drops, for the rest of the process, orbax's log records and the
  tracebacks of its abandoned tasks (hundreds of lines for one failure that
  reaches our caller anyway as one exception); not with ``VAE_ATTN_DEBUG``."""
  absl = logging.getLogger("absl")
  if errors.debug_requested() or _not_orbax in absl.filters:
    return
  absl.addFilter(_not_orbax)
  # "Task exception was never retrieved": an abandoned read's task,
  # collected later (asyncio logs its traceback).
  logging.getLogger("asyncio").addFilter(_not_orbax_task)
  previous = sys.unraisablehook

  def drop_orbax(unraisable):
    files = [
      frame.f_code.co_filename
      for frame, _ in traceback.walk_tb(unraisable.exc_traceback)
    ]
    closed_loop = "Event loop is closed" in str(unraisable.exc_value)
    if not closed_loop and not any(_ORBAX in f for f in files):
      previous(unraisable)

  sys.unraisablehook = drop_orbax


_ORBAX = f"{os.sep}orbax{os.sep}"


def _not_orbax(record: logging.LogRecord) -> bool:
  return _ORBAX not in record.pathname


def _not_orbax_task(record: logging.LogRecord) -> bool:
  """False for a task of orbax's or of its tensorstore reads (raised in C++:
  the traceback holds asyncio's frame only, the message names the spec)."""
  error = record.exc_info[1] if record.exc_info else None
  tb = getattr(error, "__traceback__", None)
  files = [f.f_code.co_filename for f, _ in traceback.walk_tb(tb)]
  ours = any(_ORBAX in f for f in files) or "tensorstore_spec=" in str(error)
  return not ours


def checkpoint_manager(
  workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/ckpt`` keeping the newest
  ``max_to_keep`` steps; ``read_only`` (evaluation) creates and deletes
  nothing, else the temporary folders of failed saves are removed."""
  # Not orbax's read_only option, which logs a line on every open.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
    create=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  quiet_orbax()
  return ocp.CheckpointManager(ckpt_dir(workdir), options=options)


def _host(leaf: Any) -> np.ndarray | None:
  """``leaf`` on the host; ``None`` when this process holds only a part."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if not leaf.is_fully_replicated:
      return None
    leaf = leaf.addressable_data(0)
  return np.asarray(jax.device_get(leaf))


def _arrays(tree: Any) -> list[Any]:
  return [
    leaf
    for leaf in jax.tree.leaves(tree)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
  ]


def _checksums(tree: Any) -> list[str] | None:
  """``"crc32 shape dtype"`` of every array of ``tree``, sorted (orbax
  restores containers as dicts, so leaves are compared as a multiset);
  ``None`` when this process cannot see every array whole."""
  out = []
  for leaf in _arrays(tree):
    host = _host(leaf)
    if host is None:
      return None
    crc = zlib.crc32(np.ascontiguousarray(host).view(np.uint8))
    out.append(f"{crc:08x} {list(host.shape)} {host.dtype}")
  return sorted(out)


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  *,
  state: Any,
  extras: Mapping[str, Any] | None = None,
  wait: bool = False,
) -> None:
  """Saves ``state`` and ``extras`` (items of their own) as ``step``, with a
  CRC-32 of every array (item ``checksums``); every process must call it.

  Raises:
    CheckpointWriteError: the disk is full (checked first with one process)
      or the folder is read-only; the previous steps are intact.
  """
  finish_saves(mngr)  # A failed earlier save is reported as itself.
  arrays = {"state": state, **(extras or {})}
  where = f"saving step {step} to {mngr.directory}"
  if jax.process_count() == 1:  # Every process must agree to skip a save.
    needed = sum(math.prod(a.shape) * a.dtype.itemsize for a in _arrays(arrays))
    free = _free_bytes(mngr.directory)
    if free < needed + (1 << 20):
      raise CheckpointWriteError(
        errno.ENOSPC,
        f"The disk is full ({where} needs up to {needed / 2**20:.1f} MB, "
        f"{free / 2**20:.1f} MB are free). Free some space and run the same "
        f"command again: {_resumes_from(mngr)}",
      )
  items = {name: ocp.args.StandardSave(v) for name, v in arrays.items()}
  sums = {name: _checksums(v) for name, v in arrays.items()}
  sums = {name: s for name, s in sums.items() if s is not None}
  if sums:
    items[CHECKSUMS] = ocp.args.JsonSave(sums)
  try:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise _write_error(e, where) from e


def _resumes_from(mngr: ocp.CheckpointManager) -> str:
  last = mngr.latest_step()
  if last is None:
    return "no checkpoint was saved yet, so it starts from step 0."
  return f"it resumes from step {last}, which is intact."


def _free_bytes(path: os.PathLike) -> int:
  path = pathlib.Path(path)
  while not path.exists():
    path = path.parent
  return shutil.disk_usage(path).free


def finish_saves(mngr: ocp.CheckpointManager) -> None:
  """Waits for pending saves; a failed write becomes one clear error."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise _write_error(e, f"saving to {mngr.directory}") from e


def checkpoint_steps(path: pathlib.Path) -> list[int]:
  """The complete steps in ``path``, a ``ckpt`` folder (a temporary folder
  is renamed to its number when the save is complete); ``[]`` if missing."""
  try:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
  except (FileNotFoundError, NotADirectoryError):
    return []


def _metadata_target(step_dir: pathlib.Path, item: str, sharding) -> Any:
  """The saved tree of ``item`` as shape structs placed by ``sharding``: a
  restore target for the current devices that needs no model code."""
  handler = ocp.StandardCheckpointHandler()
  try:
    meta = handler.metadata(step_dir / item)
  finally:
    handler.close()
  meta = getattr(meta, "item_metadata", meta)
  tree = getattr(meta, "tree", meta)
  is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  return jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
    tree,
    is_leaf=is_array,
  )


def _check_structure(step_dir: pathlib.Path, item: str, target: Any) -> None:
  """Raises ConfigMismatchError when the saved tree has other arrays (an
  unreadable step is left to the restore: damage is no other model)."""
  try:
    saved = _metadata_target(step_dir, item, None)
  except Exception:  # noqa: BLE001 (unreadable: judged by the restore)
    return
  saved = sorted(tuple(a.shape) for a in _arrays(saved))
  wanted = sorted(tuple(a.shape) for a in _arrays(target))
  if saved == wanted:
    return
  only_saved = [s for s in saved if s not in wanted][:3]
  only_now = [s for s in wanted if s not in saved][:3]
  raise ConfigMismatchError(
    f"Checkpoint {step_dir} does not fit the model built from the config (a "
    f"different architecture or code version: {len(saved)} saved arrays, "
    f"{len(wanted)} now; saved shapes {only_saved} are not in the model, its "
    f"shapes {only_now} are not saved). Pick a new --workdir, or pass the "
    "config the run was trained with."
  )


def _short(error: BaseException) -> str:
  """An orbax/tensorstore error in a few words (the full text: --debug)."""
  text = " ".join(str(error).split()).split(" See full TensorStore")[0]
  text = text[:160] + ("..." if len(text) > 160 else "")
  return f"{type(error).__name__}: {text}"


def _try_restore(mngr, step, items, optional_items, targets, sharding):
  """``(None, restored)`` or ``(reason, None)`` for one step."""
  step_dir = pathlib.Path(mngr.directory) / str(step)
  missing = [n for n in items if not (step_dir / n).is_dir()]
  if missing:
    return f"partial, no item folder {missing} (an interrupted save?)", None
  for name in items:  # Checked first: orbax's failed reads leave threads.
    for f in ("_METADATA", "manifest.ocdbt"):
      if not (step_dir / name / f).is_file():
        return f"unreadable, {name}/{f} is missing", None
  wanted = list(items) + [n for n in optional_items if (step_dir / n).is_dir()]
  for name, target in targets.items():
    if name in wanted:
      _check_structure(step_dir, name, target)
  checked = (step_dir / CHECKSUMS).is_dir()
  try:
    args = {
      n: ocp.args.StandardRestore(
        targets[n] if n in targets else _metadata_target(step_dir, n, sharding)
      )
      for n in wanted
    }
    if checked:
      args[CHECKSUMS] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # noqa: BLE001 (any unreadable step is skipped)
    _log.debug("Step %d is unreadable.", step, exc_info=True)
    return f"unreadable ({_short(e)})", None
  out = {name: restored[name] for name in wanted}
  saved = restored[CHECKSUMS] if checked else {}
  for name in wanted:
    if name in saved and _checksums(out[name]) not in (None, saved[name]):
      return f"damaged, the values of {name!r} differ from those saved", None
  for name in wanted:
    bad = [
      jax.tree_util.keystr(path)
      for path, leaf in jax.tree_util.tree_leaves_with_path(out[name])
      if hasattr(leaf, "dtype")
      and np.dtype(leaf.dtype).kind in "fc"
      and (host := _host(leaf)) is not None
      and not np.isfinite(host).all()
    ]
    if bad:
      shown = ", ".join(f"[{name!r}]{b}" for b in bad[:3])
      more = " ..." if len(bad) > 3 else ""
      return f"non-finite values in {shown}{more}", None
  return None, out


def _set_aside(workdir: pathlib.Path, step: int) -> pathlib.Path:
  """Moves the damaged ``ckpt/<step>`` to ``damaged_checkpoints/`` (kept)
  so that a resumed run saves that step again."""
  target = workdir / DAMAGED_DIR / str(step)
  k = 1
  while target.exists():
    target, k = workdir / DAMAGED_DIR / f"{step}.{k}", k + 1
  target.parent.mkdir(exist_ok=True)
  os.replace(ckpt_dir(workdir) / str(step), target)
  return target


def restore(
  workdir: str | os.PathLike,
  *,
  items: Sequence[str] = ("state",),
  optional_items: Sequence[str] = (),
  targets: Mapping[str, Any] | None = None,
  sharding=None,
  step: int | None = None,
  mngr: ocp.CheckpointManager | None = None,
) -> tuple[int, dict[str, Any]]:
  """Restores the newest complete, readable, intact and finite checkpoint.

  Steps are tried from the newest down (or only ``step``); a step with a
  missing item, unreadable, differing from its checksums or non-finite is
  skipped with one warning line naming it and why. A step deleted while it
  was read (a trainer rotating checkpoints) is no damage. A trainer passes
  its ``mngr``: each skipped step is then set aside (one process only);
  readers never change the folder.

  Args:
    workdir: a run directory.
    items: items that must be present; ``optional_items`` are restored when
      the step has them (``latent_stats``).
    targets: item -> abstract pytree to restore into; other items are
      restored from their saved metadata onto ``sharding`` (default: the
      first local device).
    step: restore exactly this step (no fallback).
    mngr: the trainer's open manager of ``workdir``.

  Returns:
    ``(step, {item: value})``.

  Raises:
    FileNotFoundError, NotADirectoryError: no run or no checkpoint there.
    ConfigMismatchError: a target's arrays differ from the saved ones.
    CheckpointError: no step is usable; the message lists each step and why.
  """
  check_run_dir(workdir)
  workdir = pathlib.Path(workdir).absolute()
  path = ckpt_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {path}; train first, or pass the --workdir of a "
      "training run."
    )
  available = checkpoint_steps(path)
  if step is not None and step not in available:
    raise FileNotFoundError(
      f"No checkpoint of step {step} in {path}; available: {available}."
    )
  if sharding is None:
    sharding = jax.local_devices()[0]
    sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array([sharding]), ("d",)),
      jax.sharding.PartitionSpec(),
    )
  targets = dict(targets or {})
  trainer = mngr is not None
  with contextlib.ExitStack() as stack:
    if not trainer:
      open_reader = lambda: checkpoint_manager(workdir, read_only=True)
      mngr = stack.enter_context(_retry_deleted(open_reader))
    reasons = {}  # Step -> why it was skipped.
    while True:
      steps = [step] if step is not None else checkpoint_steps(path)
      steps = [s for s in steps if s not in reasons]
      if not steps:
        break
      s = steps[-1]
      if s not in mngr.all_steps():
        _retry_deleted(mngr.reload)  # Saved after the manager listed it.
      reason, restored = _try_restore(
        mngr, s, items, optional_items, targets, sharding
      )
      if reason is None:
        _report_skipped(workdir, _present(path, reasons), s, trainer)
        if trainer and reasons:
          _retry_deleted(mngr.reload)
        return s, restored
      reasons[s] = reason
  skipped = _present(path, reasons)
  if not skipped:
    raise FileNotFoundError(
      f"No checkpoints in {path}: each step was deleted while it was read (a "
      "trainer is saving there with a small --max-to-keep); run the command "
      "again."
    )
  detail = "; ".join(f"step {s}: {why}" for s, why in skipped)
  raise CheckpointError(
    f"No usable checkpoint in {path} ({detail}). The files were left as they "
    "are; train into a new --workdir, or restore a backup of that folder."
  )


def _retry_deleted(fn: Callable[[], Any]) -> Any:
  """``fn()``, again (10 tries) while a step folder it read was deleted by a
  trainer (orbax raises either error)."""
  for _ in range(9):
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
      return fn()
  return fn()


def _present(path: pathlib.Path, reasons: Mapping[int, str]) -> list:
  """The skipped steps still there (one that is gone was rotated away)."""
  return [(s, why) for s, why in reasons.items() if (path / str(s)).is_dir()]


def _report_skipped(workdir, skipped, restored_step, trainer) -> None:
  """One warning line per skipped step; a trainer sets each one aside."""
  aside = trainer and jax.process_count() == 1
  for s, why in skipped:
    if aside:
      moved = _set_aside(workdir, s)
      fate = f"moved to {moved}; the run saves step {s} again"
    elif trainer:
      fate = f"step {s} stays as it is (several processes)"
    else:
      fate = "left as it is"
    _log.warning(
      "Skipped checkpoint step %d in %s: %s; restored step %d (%s).",
      s,
      ckpt_dir(workdir),
      why,
      restored_step,
      fate,
    )
