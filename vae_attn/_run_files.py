"""A run directory's own files: names, errors, run spec, JSON, lock (private).

Re-exported by :mod:`vae_attn.runs` (see its module docstring for the
layout of a run directory). The checkpoints themselves are written and read
by :mod:`vae_attn.runs`; the errors here are those of the whole directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

CKPT_DIR = "ckpt"
CONFIG_NAME = "config.json"
SPEC_NAME = "spec.json"
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
