"""A metric writer with clu's method names, without TensorFlow.

Scalars go to ``metrics.jsonl`` (one JSON object per call, read back by
:func:`read_scalars`), to TensorBoard (``tensorboardX``) and to ``logging``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_log = logging.getLogger(__name__)


def _to_float(name: str, value: Any) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(
      f"Scalar {name!r} has shape {array.shape}; pass a single number "
      "(reduce it first, e.g. with .mean())."
    )
  return float(array.reshape(()))


class MetricWriter:
  """Writes scalars to ``<logdir>/metrics.jsonl`` and TensorBoard.

  Args:
    logdir: the folder (created if missing).
    tensorboard: also write TensorBoard event files.
    enabled: ``False`` makes every method a no-op (processes other than 0).
    resume_step: the step a run starts from (``0`` without a checkpoint):
      rows of later steps, logged before a crash, are removed from both
      logs, so every step appears once; ``None`` keeps every row.
    name: shown in each log line, ``[name step]`` (a grid member).

  Each ``write_scalars`` line is flushed at once: a killed run loses none.
  """

  def __init__(
    self,
    logdir: str | os.PathLike,
    *,
    tensorboard: bool = True,
    enabled: bool = True,
    resume_step: int | None = None,
    name: str = "",
  ):
    self._enabled = enabled
    self._prefix = f"{name} " if name else ""
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    if resume_step is not None:
      truncate(logdir, resume_step)
    self._jsonl = open(  # noqa: SIM115 (closed in close())
      os.path.join(logdir, JSONL_NAME), "a", encoding="utf-8"
    )
    if tensorboard:
      import tensorboardX  # Deferred: only writers that use it pay for it.

      self._tb = tensorboardX.SummaryWriter(
        os.path.join(logdir, TENSORBOARD_DIR),
        purge_step=None if resume_step is None else resume_step + 1,
      )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``{"step": step, name: value, ...}`` (one-element values)."""
    if not self._enabled:
      return
    values = {k: _to_float(k, v) for k, v in scalars.items()}
    record = {"step": int(step)}  # JSON has no NaN/inf: written as "nan".
    record.update(
      {k: v if math.isfinite(v) else str(v) for k, v in values.items()}
    )
    try:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    except OSError as e:  # A full disk: name the file (errors.error_line).
      raise OSError(e.errno, e.strerror, self._jsonl.name) from e
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, global_step=int(step))
    _log.info(
      "[%s%d] %s",
      self._prefix,
      step,
      ", ".join(f"{k}={v:.6g}" for k, v in values.items()),
    )

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes ``[N, H, W, C]`` or ``[H, W, C]`` images in ``[0, 1]`` (C is 1
    or 3) to TensorBoard."""
    if not self._enabled or self._tb is None:
      return
    for name, value in images.items():
      array = np.asarray(value, dtype=np.float32)
      if array.ndim == 3:
        array = array[None]
      if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
          f"Image {name!r} has shape {array.shape}; expected [N, H, W, C] or "
          "[H, W, C] with C in (1, 3)."
        )
      self._tb.add_images(
        name,
        np.clip(array, 0.0, 1.0),
        global_step=int(step),
        dataformats="NHWC",
      )

  def flush(self) -> None:
    if self._tb is not None:  # The JSONL file is flushed per line.
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes; later calls are ignored."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._enabled = False

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_scalars(logdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every row of ``<logdir>/metrics.jsonl``, oldest first (``nan``/``inf``
  as floats)."""
  with open(os.path.join(logdir, JSONL_NAME), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  number = lambda k, v: float(v) if isinstance(v, str) and k != "step" else v
  return [{k: number(k, v) for k, v in row.items()} for row in rows]


def truncate(logdir: str | os.PathLike, last_step: int) -> None:
  """Removes the ``metrics.jsonl`` rows of steps after ``last_step`` and a
  torn last line (rewriting the file atomically)."""
  path = os.path.join(logdir, JSONL_NAME)
  if not os.path.exists(path):
    return

  def keep(line: str) -> bool:
    try:
      return json.loads(line)["step"] <= last_step
    except (json.JSONDecodeError, KeyError, TypeError):
      return False

  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  kept = [line + "\n" for line in lines if keep(line)]
  if len(kept) < len(lines):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)
    removed = len(lines) - len(kept)
    _log.info(
      "Removed %d log rows after step %d from %s.", removed, last_step, path
    )
