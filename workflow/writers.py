"""Metric writers with clu's method names, without TensorFlow.

clu's default writer imports TensorFlow for its summaries; this one writes
scalars as JSON lines (``metrics.jsonl``, one object per call) and as
TensorBoard event files through ``tensorboardX``, and mirrors them to
``logging``. Only process 0 of a multi-host run should write: build the others
with ``enabled=False``.

Example:

  >>> import tempfile
  >>> from workflow import writers
  >>> workdir = tempfile.mkdtemp()
  >>> with writers.MetricWriter(workdir) as writer:
  ...   writer.write_scalars(10, {"train/loss": 1.5})
  >>> writers.read_scalars(workdir)
  [{'step': 10, 'train/loss': 1.5}]
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


def _json_number(value: float) -> float | str:
  # JSON has no NaN/inf; write them as strings so every line stays valid.
  return value if math.isfinite(value) else str(value)


class MetricWriter:
  """Writes scalars to ``<logdir>/metrics.jsonl`` and TensorBoard.

  Args:
    logdir: the folder for ``metrics.jsonl`` and ``tensorboard/``; created if
      missing.
    tensorboard: also write TensorBoard event files (tensorboardX).
    enabled: ``False`` makes every method a no-op (non-zero processes).
    name: shown in each log line, ``[name step]`` (a grid member's folder;
      ``""``: ``[step]``).
    resume_step: the step a run starts from: rows of later steps (logged
      after that checkpoint, before a crash) are removed from
      ``metrics.jsonl`` and purged from TensorBoard, so after any crash and
      resume every logged step appears exactly once. A trainer passes it on
      every start: the restored step, or ``0`` without a checkpoint (a run
      killed before its first checkpoint leaves rows too). ``None`` keeps
      every row (a writer that appends to a finished run).

  Every ``write_scalars`` line is flushed to disk at once, so a killed run
  loses no row it logged.
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
    """Writes one line ``{"step": step, name: value, ...}`` and TB scalars.

    Args:
      step: the training step.
      scalars: names (``"train/loss"``) to numbers or one-element arrays.
    """
    if not self._enabled:
      return
    values = {k: _to_float(k, v) for k, v in scalars.items()}
    record = {"step": int(step)}
    record.update({k: _json_number(v) for k, v in values.items()})
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
    """Writes images to TensorBoard (the JSONL log holds scalars only).

    Args:
      step: the training step.
      images: names to ``[N, H, W, C]`` or ``[H, W, C]`` arrays in ``[0, 1]``
        (C is 1 or 3).
    """
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
    """Flushes the JSONL file and the TensorBoard writer."""
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
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
  """Reads back every line of ``<logdir>/metrics.jsonl`` (oldest first).

  Non-finite values come back as floats (``nan``, ``inf``).
  """
  path = os.path.join(logdir, JSONL_NAME)
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      records.append(
        {
          k: float(v) if isinstance(v, str) and k != "step" else v
          for k, v in record.items()
        }
      )
  return records


def truncate(logdir: str | os.PathLike, last_step: int) -> int:
  """Removes the ``metrics.jsonl`` rows of steps after ``last_step``.

  The file is rewritten atomically; a torn last line (a kill mid-write) is
  dropped too.

  Returns:
    The number of rows removed.
  """
  path = os.path.join(logdir, JSONL_NAME)
  if not os.path.exists(path):
    return 0
  kept, removed = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        step = json.loads(line)["step"]
      except (json.JSONDecodeError, KeyError, TypeError):
        removed += 1
        continue
      if step > last_step:
        removed += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if removed:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
    _log.info(
      "Removed %d log rows after step %d from %s.", removed, last_step, path
    )
  return removed
