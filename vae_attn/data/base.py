"""The source contract shared by every loader, and the project error type.

A *source* is a random-access sequence of records, like the object that
``tfds.data_source`` returns: ``len(source)`` and ``source[i]`` for
``0 <= i < len(source)``, where a record is a ``dict[str, np.ndarray]``.
Images are float32 in [0, 1], HWC. A source may also offer
``get_batch(indices) -> dict[str, np.ndarray]`` (stacked along a new leading
axis); `vae_attn.data.pipeline.batches` uses it when present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

Record = dict[str, np.ndarray]


class DataError(ValueError):
  """A data set is missing, malformed or inconsistent.

  The message names the file or folder at fault and says how to fix it.
  """


@runtime_checkable
class Source(Protocol):
  """A random-access sequence of records (dicts of numpy arrays)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Record: ...


def check_index(index: Any, length: int, name: str) -> int:
  """``index`` as a python int in ``[0, length)``; negative counts back.

  Raises:
    IndexError: the index is out of range.
    TypeError: the index is not an integer.
  """
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    raise TypeError(
      f"{name} indices must be integers, got {type(index).__name__}."
    )
  index = int(index)
  if index < 0:
    index += length
  if not 0 <= index < length:
    raise IndexError(f"{name} index {index} out of range [0, {length}).")
  return index


def stack_records(records: Sequence[Mapping[str, Any]]) -> Record:
  """Stacks records with identical keys into one batch.

  Numeric fields gain a leading batch axis; string fields become 1-D object
  arrays of python str.

  Raises:
    DataError: the records are empty or have different keys or shapes.
  """
  if not records:
    raise DataError("Cannot stack an empty list of records.")
  keys = list(records[0].keys())
  batch = {}
  for key in keys:
    try:
      values = [r[key] for r in records]
    except KeyError as e:
      raise DataError(
        f"Records have different keys: {sorted(records[0])} vs "
        f"{sorted(next(r for r in records if key not in r))}."
      ) from e
    first = np.asarray(values[0])
    if first.dtype.kind in "USO":
      out = np.empty(len(values), dtype=object)
      out[:] = [str(np.asarray(v)) for v in values]
      batch[key] = out
    else:
      try:
        batch[key] = np.stack([np.asarray(v) for v in values])
      except ValueError as e:
        shapes = sorted({np.shape(v) for v in values})
        raise DataError(
          f"Field {key!r} has different shapes across records: {shapes}. "
          "Resize images to one size (the loaders' image_size argument)."
        ) from e
  return batch


class ArraySource:
  """An in-memory source over equally long arrays (one per field).

  Args:
    fields: field name -> array whose first axis indexes records.
    name: a short name used in error messages and ``repr``.

  Raises:
    DataError: no fields, fields of different lengths, or a floating-point
      field holding NaN or infinite values (they would give NaN maps and
      losses for their records).
  """

  def __init__(self, fields: Mapping[str, np.ndarray], name: str = "arrays"):
    if not fields:
      raise DataError(f"{name}: no fields given.")
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) != 1:
      raise DataError(f"{name}: fields have different lengths: {lengths}.")
    self._fields = {k: np.asarray(v) for k, v in fields.items()}
    for key, value in self._fields.items():
      if value.dtype.kind not in "fc" or value.size == 0:
        continue
      finite = np.isfinite(value).reshape(len(value), -1).all(axis=1)
      if not finite.all():
        raise DataError(
          f"{name}: record {int(np.argmin(finite))} of field {key!r} holds "
          "NaN or infinite values, which give NaN maps and losses. Replace "
          "them (e.g. np.nan_to_num) or drop the record."
        )
    self._length = next(iter(lengths.values()))
    self.name = name

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Record:
    index = check_index(index, self._length, self.name)
    return {k: v[index] for k, v in self._fields.items()}

  def get_batch(self, indices: Sequence[int] | np.ndarray) -> Record:
    """Returns the records at ``indices`` stacked along a new first axis."""
    indices = np.asarray(indices, dtype=np.int64)
    return {k: v[indices] for k, v in self._fields.items()}


class MappedSource:
  """A source whose records are ``fn(parent[i])``, computed on access.

  Args:
    parent: the source to read from.
    fn: a function from a record to a record.
    name: a short name used in error messages and ``repr``.
  """

  def __init__(self, parent: Source, fn: Callable[[Record], Record], name: str):
    self._parent = parent
    self._fn = fn
    self.name = name

  def __len__(self) -> int:
    return len(self._parent)

  def __getitem__(self, index: int) -> Record:
    index = check_index(index, len(self), self.name)
    return self._fn(self._parent[index])
