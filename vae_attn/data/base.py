"""The source contract shared by every loader, and the project error type.

A *source* is a random-access sequence of records, as ``tfds.data_source``
returns: ``len(source)`` and ``source[i]``, a record a ``dict[str,
np.ndarray]`` (images float32 in [0, 1], HWC). A source may also offer
``get_batch(indices)``, the records stacked; `pipeline.batches` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

Record = dict[str, np.ndarray]


class DataError(ValueError):
  """A data set is missing, malformed or inconsistent; the message names the
  file or folder at fault and the fix."""


class Source(Protocol):
  """A random-access sequence of records (dicts of numpy arrays)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Record: ...


def check_index(index: Any, length: int, name: str) -> int:
  """``index`` as an int in ``[0, length)``, negative counting back.

  Raises:
    IndexError: out of range. TypeError: not an integer.
  """
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    raise TypeError(
      f"{name} indices must be integers, got {type(index).__name__}."
    )
  index = int(index) + (length if index < 0 else 0)
  if not 0 <= index < length:
    raise IndexError(f"{name} index {index} out of range [0, {length}).")
  return index


def strings_to_objects(batch: Mapping[str, Any]) -> Record:
  """``batch`` with str and bytes arrays as 1-D object arrays of str."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "US":
      value = np.array([str(v) for v in value.reshape(-1)], dtype=object)
    out[key] = value
  return out


def stack_records(records: Sequence[Mapping[str, Any]]) -> Record:
  """Stacks records with the same keys along a new first axis (string fields:
  1-D object arrays of str).

  Raises:
    DataError: no records, or records of different keys or shapes.
  """
  if not records:
    raise DataError("Cannot stack an empty list of records.")
  batch = {}
  for key in records[0]:
    if any(key not in r for r in records):
      other = next(r for r in records if key not in r)
      raise DataError(
        f"Records have different keys: {sorted(records[0])} vs {sorted(other)}."
      )
    values = [np.asarray(r[key]) for r in records]
    if values[0].dtype.kind in "USO":  # One str per record.
      values = [np.array(str(v), dtype=object) for v in values]
    try:
      batch[key] = np.stack(values)
    except ValueError as e:
      shapes = sorted({np.shape(r[key]) for r in records})
      raise DataError(
        f"Field {key!r} has different shapes across records: {shapes}. "
        "Resize images to one size (the loaders' image_size argument)."
      ) from e
  return batch


class ArraySource:
  """An in-memory source over equally long arrays, one per field.

  Raises:
    DataError: no fields, fields of different lengths, or a float field
      holding NaN or infinite values (NaN maps and losses).
  """

  def __init__(self, fields: Mapping[str, np.ndarray], name: str = "arrays"):
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) != 1:
      raise DataError(
        f"{name}: fields have different lengths: {lengths}."
        if fields
        else f"{name}: no fields given."
      )
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
    """The records at ``indices`` stacked along a new first axis."""
    indices = np.asarray(indices, dtype=np.int64)
    return {k: v[indices] for k, v in self._fields.items()}


class MappedSource:
  """A source whose records are ``fn(parent[i])``, computed on access."""

  def __init__(self, parent: Source, fn: Callable[[Record], Record], name: str):
    self._parent, self._fn, self.name = parent, fn, name

  def __len__(self) -> int:
    return len(self._parent)

  def __getitem__(self, index: int) -> Record:
    return self._fn(self._parent[check_index(index, len(self), self.name)])
