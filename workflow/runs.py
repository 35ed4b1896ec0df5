"""Run directories: the one place that writes and reads what training knows.

A run directory holds::

  config.json      the trainer's config (every field, JSON)
  spec.json        the run spec: model name and arguments, input shape, data
                   source and folder, attention layer (:class:`RunSpec`)
  software.json    the software that trained it (:func:`software`)
  ckpt/<step>/     orbax checkpoints; items ``state``, ``config``, ``spec``
                   and, in the final one, extras such as ``latent_stats``
  metrics.jsonl    one JSON object per logged step (``workflow.writers``)
  tensorboard/     TensorBoard event files
  .lock            held (``fcntl.flock``) while a trainer writes the run

Training writes it through :func:`write_run_files` and :func:`save`;
evaluation reads it through :func:`restore` and :func:`read_spec` and never
guesses (no architecture inferred from parameter shapes). Restoring builds
its target from the saved array metadata and the *current* devices, so a run
trained on 8 devices (or by several processes) is evaluated on one.

Damaged checkpoints are skipped, not misdiagnosed: :func:`restore` walks the
steps from the newest down and takes the first that is complete (every item
folder present), readable and finite, naming each step it skipped and why.
Nothing here ever deletes a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import pathlib
import platform
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CKPT_DIR = "ckpt"
CONFIG_NAME = "config.json"
SPEC_NAME = "spec.json"
SOFTWARE_NAME = "software.json"
LOCK_NAME = ".lock"
JSON_ITEMS = frozenset({"config", "spec"})


class ConfigMismatchError(ValueError):
  """The run directory holds a run of another config or architecture."""


class CheckpointError(RuntimeError):
  """No usable checkpoint (missing, partial, unreadable or non-finite)."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, read-only folder)."""


class WorkdirLockedError(RuntimeError):
  """Another process is training in the same run directory."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What evaluation needs to rebuild a run's model and data.

  Attributes:
    trainer: the training entry point (``"factorvae"``, ``"oneclass"``).
    model: a key of ``vae_attn.models.MODELS``.
    model_kwargs: keyword arguments of ``vae_attn.models.make_model``.
    input_shape: ``(H, W, C)`` of the model's input.
    data: the data set (``"procedural"``, ``"npz"``, ``"tfds"``,
      ``"textures"``, ``"mvtec"``, ``"folder"``, ``"mnist"``, ``"digits"``,
      ``"ped1"``).
    data_dir: its folder or file (``""``: embedded or the default).
    layer: the attention layer the trainer used or the paper's default.
    data_kwargs: further data arguments (``category``, ``normal_digit``...).
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
    """The spec as a JSON-ready dict."""
    out = dataclasses.asdict(self)
    out["model_kwargs"] = dict(self.model_kwargs)
    out["data_kwargs"] = dict(self.data_kwargs)
    out["input_shape"] = list(self.input_shape)
    return out

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> RunSpec:
    """Rebuilds a spec from :meth:`to_dict` output.

    Raises:
      ValueError: a field is missing or unknown.
    """
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


# --------------------------------------------------------------------------
# Files of a run directory.


def ckpt_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """``workdir/ckpt``, absolute."""
  return pathlib.Path(workdir).absolute() / CKPT_DIR


def check_run_dir(workdir: str | os.PathLike) -> None:
  """Refuses a ``workdir`` to read that is missing or not a folder.

  Raises:
    FileNotFoundError: ``workdir`` does not exist.
    NotADirectoryError: ``workdir`` is a file.
  """
  fix = "pass --workdir=<a training run folder>"
  if not os.path.exists(workdir):
    raise FileNotFoundError(f"the run folder {workdir} does not exist; {fix}")
  if not os.path.isdir(workdir):
    raise NotADirectoryError(f"{workdir} is a file, not a run folder; {fix}")


def write_json(path: pathlib.Path, values: Mapping[str, Any]) -> None:
  """Writes ``values`` atomically (a temporary file, then a rename).

  Raises:
    CheckpointWriteError: the folder is read-only or the disk is full.
  """
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)
  except OSError as e:
    raise write_error(e, f"writing {path}") from e


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
  """The software and hardware a result was produced with.

  Returns:
    A JSON-ready dict: ``python``; the installed version of each
    distribution in :data:`SOFTWARE_PACKAGES` (``None`` when not installed);
    ``backend`` (``jax.default_backend()``), ``device_kind`` and
    ``device_count``; ``vae_attn`` (the installed project version, ``None``
    when it runs uninstalled from the checkout); ``git_commit`` (the
    checkout's ``HEAD``) and ``git_modified`` (tracked files differ from it),
    both ``None`` without git or outside a git checkout.
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
  """Writes ``config.json``, ``spec.json`` (with a spec) and ``software.json``.

  Args:
    workdir: the run directory (it exists: :func:`lock` made it).
    config: the trainer's config as a dict.
    spec: the run spec.

  Raises:
    CheckpointWriteError: the folder is read-only or the disk is full.
  """
  workdir = pathlib.Path(workdir)
  write_json(workdir / CONFIG_NAME, config)
  if spec is not None:
    write_json(workdir / SPEC_NAME, spec.to_dict())
  write_json(workdir / SOFTWARE_NAME, software())


def read_spec(workdir: str | os.PathLike) -> RunSpec:
  """The run spec of ``workdir`` (``spec.json``).

  Raises:
    FileNotFoundError: ``workdir`` or its spec is missing; the message says
      which trainers write one.
    NotADirectoryError: ``workdir`` is a file.
  """
  check_run_dir(workdir)
  path = pathlib.Path(workdir) / SPEC_NAME
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} is missing: {workdir} is not a run directory of this version "
      "(python -m train.factorvae or python -m train.oneclass write it)."
    )
  try:
    return RunSpec.from_dict(json.loads(path.read_text()))
  except (json.JSONDecodeError, ValueError) as e:
    raise ValueError(f"{path} is damaged or not a run spec: {e}") from None


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """The trainer's config of ``workdir`` (``config.json``) as a dict."""
  path = pathlib.Path(workdir) / CONFIG_NAME
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; train first.")
  return json.loads(path.read_text())


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds ``workdir/.lock`` so a second trainer is refused at once.

  The lock is an advisory ``fcntl.flock``: the kernel releases it when the
  process ends, however it ends (so a killed run never leaves a stale lock).

  Raises:
    WorkdirLockedError: another process holds it; the message names it.
    CheckpointWriteError: the folder cannot be written.
  """
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
    raise write_error(e, f"creating {workdir}") from e
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


def write_error(error: BaseException, what: str) -> Exception:
  """One clear error for a failed write, or ``error`` if it is not one."""
  cause = error
  while cause is not None:
    if isinstance(cause, OSError) and cause.errno in (
      errno.ENOSPC,
      errno.EDQUOT,
    ):
      return CheckpointWriteError(
        cause.errno,
        f"The disk is full ({what}). Free some space and run the same "
        "command again: it resumes from the last complete checkpoint, which "
        "is intact.",
      )
    if isinstance(cause, OSError) and cause.errno in (
      errno.EROFS,
      errno.EACCES,
      errno.EPERM,
      errno.ENOENT,  # A parent that cannot be made (/proc/x).
    ):
      return CheckpointWriteError(
        cause.errno,
        f"Cannot write ({what}): {cause.strerror}. Pass a --workdir you can "
        "write to.",
      )
    cause = cause.__cause__ or cause.__context__
  return error if isinstance(error, Exception) else RuntimeError(str(error))


# Files every array item of an orbax (OCDBT) checkpoint has.
_ARRAY_FILES = ("_METADATA", "manifest.ocdbt")


def _missing_items(step_dir: pathlib.Path, items: Sequence[str]) -> list[str]:
  return [name for name in items if not (step_dir / name).is_dir()]


def _non_finite(tree: Any) -> list[str]:
  """Paths of floating leaves that hold NaN or inf."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.asarray(jax.device_get(leaf)) if hasattr(leaf, "shape") else None
    if array is None or array.dtype.kind not in "fc":
      continue
    if not np.isfinite(array).all():
      bad.append(jax.tree_util.keystr(path))
  return bad


def abstract_from_metadata(
  mngr: ocp.CheckpointManager, step: int, item: str, sharding
) -> Any:
  """The saved tree of ``item`` as shape structs placed by ``sharding``.

  This is the restore target that needs no model code and fits the current
  devices, whatever devices the run was saved from.
  """
  handler = ocp.StandardCheckpointHandler()
  try:
    meta = handler.metadata(pathlib.Path(mngr.directory) / str(step) / item)
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


def _restore_args(
  mngr: ocp.CheckpointManager,
  step: int,
  items: Sequence[str],
  targets: Mapping[str, Any],
  sharding,
) -> ocp.args.Composite:
  args = {}
  for name in items:
    if name in JSON_ITEMS:
      args[name] = ocp.args.JsonRestore()
      continue
    target = targets.get(name)
    if target is None:
      target = abstract_from_metadata(mngr, step, name, sharding)
    args[name] = ocp.args.StandardRestore(target)
  return ocp.args.Composite(**args)


def try_restore(mngr, step, items, optional_items, targets, sharding):
  """``(None, restored)`` or ``(reason, None)`` for one step."""
  step_dir = pathlib.Path(mngr.directory) / str(step)
  missing = _missing_items(step_dir, items)
  if missing:
    return f"partial, no item folder {missing} (an interrupted save?)", None
  for name in items:
    if name in JSON_ITEMS:
      continue
    lost = [f for f in _ARRAY_FILES if not (step_dir / name / f).is_file()]
    if lost:  # Checked here: orbax's failed async reads leave noisy threads.
      return f"unreadable, {name}/{lost[0]} is missing", None
  present = set(_missing_items(step_dir, optional_items))
  wanted = list(items) + [n for n in optional_items if n not in present]
  for name, target in targets.items():
    if name in wanted:
      _check_structure(mngr, step, name, target)
  try:
    args = _restore_args(mngr, step, wanted, targets, sharding)
    restored = mngr.restore(step, args=args)
  except Exception as e:  # noqa: BLE001 (any unreadable step is skipped)
    text = " ".join(str(e).split())
    return f"unreadable ({type(e).__name__}: {text[:300]})", None
  out = {name: restored[name] for name in wanted}
  bad = _non_finite({k: v for k, v in out.items() if k not in JSON_ITEMS})
  if bad:
    shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    return f"non-finite values in {shown} (damaged bytes?)", None
  return None, out


def _shapes(tree: Any) -> list[tuple]:
  """The sorted leaf shapes (orbax names containers differently from jax)."""
  leaves = jax.tree.leaves(
    tree, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  )
  return sorted(tuple(leaf.shape) for leaf in leaves)


def _check_structure(mngr, step: int, item: str, target: Any) -> None:
  """Raises ConfigMismatchError when the saved tree has other arrays.

  A step whose metadata cannot be read is left to the restore (and skipped
  as unreadable there): damage is not a different architecture.
  """
  try:
    saved = _shapes(abstract_from_metadata(mngr, step, item, None))
  except Exception:  # noqa: BLE001 (unreadable: judged by the restore)
    return
  wanted = _shapes(target)
  if saved == wanted:
    return
  only_saved = [s for s in saved if s not in wanted][:3]
  only_now = [s for s in wanted if s not in saved][:3]
  raise ConfigMismatchError(
    f"Checkpoint {mngr.directory}/{step} does not fit the model built from "
    f"the config (a different architecture or code version: {len(saved)} "
    f"saved arrays, {len(wanted)} now; saved shapes {only_saved} are not in "
    f"the model, its shapes {only_now} are not saved). Pick a new --workdir, "
    "or pass the config the run was trained with."
  )


_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(
  workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/ckpt``.

  Args:
    workdir: the run directory.
    max_to_keep: the newest steps kept (older ones are deleted by orbax after
      a newer one is saved).
    read_only: for evaluation: never creates or deletes anything.
  """
  # Readers open the manager without orbax's read_only option (which logs
  # "Given directory is read only" on every open): a manager that is never
  # asked to save writes and deletes nothing.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
    create=not read_only,
  )
  return ocp.CheckpointManager(ckpt_dir(workdir), options=options)


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  *,
  state: Any,
  config: Mapping[str, Any],
  spec: RunSpec | None = None,
  extras: Mapping[str, Any] | None = None,
  wait: bool = False,
) -> None:
  """Saves ``state`` (and the config, spec and extras) as step ``step``.

  Every process of a multi-process run must call it (orbax writes each
  process's shards; JSON items are written once).

  Args:
    mngr: from :func:`checkpoint_manager`.
    step: the step number.
    state: a pytree of arrays.
    config: the trainer's config dict.
    spec: the run spec (saved as the item ``spec``).
    extras: more pytrees of arrays, saved as items of their own.
    wait: block until the write is complete.

  Raises:
    CheckpointWriteError: the disk is full or the folder read-only; the
      previous steps are intact.
  """
  items = {
    "state": ocp.args.StandardSave(state),
    "config": ocp.args.JsonSave(dict(config)),
  }
  if spec is not None:
    items["spec"] = ocp.args.JsonSave(spec.to_dict())
  for name, value in (extras or {}).items():
    items[name] = ocp.args.StandardSave(value)
  try:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise write_error(e, f"saving step {step} to {mngr.directory}") from e


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits for pending saves; a failed write becomes one clear error."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise write_error(e, f"saving to {mngr.directory}") from e


def step_items(workdir: str | os.PathLike, step: int) -> list[str]:
  """The item names saved in step ``step`` (sorted)."""
  step_dir = ckpt_dir(workdir) / str(step)
  return sorted(
    p.name for p in step_dir.iterdir() if p.is_dir() and p.name[0] not in "._"
  )


def restore(
  workdir: str | os.PathLike,
  *,
  items: Sequence[str] = ("state", "config"),
  optional_items: Sequence[str] = (),
  targets: Mapping[str, Any] | None = None,
  sharding=None,
  step: int | None = None,
  mngr: ocp.CheckpointManager | None = None,
  max_step: int | None = None,
) -> tuple[int, dict[str, Any]]:
  """Restores the newest complete, readable and finite checkpoint.

  Steps are tried from the newest down (or only ``step``); a step with a
  missing item folder, a file orbax cannot read, or a NaN/inf in a floating
  array is skipped with a warning that names the step and the reason.

  Args:
    workdir: a run directory.
    items: items that must be present (``"state"``, ``"config"``...).
    optional_items: items restored when the step has them (extras such as
      ``latent_stats``).
    targets: item -> abstract pytree (shape structs with shardings) to
      restore into; an item without one is restored from its saved metadata
      onto ``sharding``.
    sharding: where metadata-built targets go (default: the first local
      device).
    step: restore exactly this step (no fallback to older ones).
    mngr: an open manager of ``workdir`` (default: a read-only one).
    max_step: ignore steps after this one.

  Returns:
    ``(step, {item: value})``: the JSON items as dicts, the others as pytrees
    of ``jax.Array`` (nested dicts without a target).

  Raises:
    FileNotFoundError: ``workdir`` does not exist or has no checkpoint (or
      not ``step``).
    NotADirectoryError: ``workdir`` is a file.
    CheckpointError: no step is usable; the message lists each step and why.
  """
  check_run_dir(workdir)
  path = ckpt_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {path}; train first, or pass the --workdir of a "
      "training run."
    )
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  targets = dict(targets or {})
  own = mngr is None
  if own:
    mngr = checkpoint_manager(workdir, read_only=True)
  try:
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
          f"No checkpoint of step {step} in {path}; available: {sorted(steps)}."
        )
      steps = [step]
    elif max_step is not None:
      steps = [s for s in steps if s <= max_step]
    if not steps:
      raise FileNotFoundError(f"No checkpoints in {path}; train first.")
    skipped = []
    for s in steps:
      reason, restored = try_restore(
        mngr, s, items, optional_items, targets, sharding
      )
      if reason is None:
        for old, why in skipped:
          _log.warning("Skipped checkpoint step %d in %s: %s.", old, path, why)
        if skipped:
          _log.warning("Restored step %d instead.", s)
        return s, restored
      skipped.append((s, reason))
    detail = "; ".join(f"step {s}: {why}" for s, why in skipped)
    raise CheckpointError(
      f"No usable checkpoint in {path} ({detail}). The files were left as "
      "they are; restore a backup of that folder, or train into a new "
      "--workdir."
    )
  finally:
    if own:
      mngr.close()
