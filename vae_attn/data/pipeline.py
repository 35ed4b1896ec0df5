"""The one batching pipeline: seeded, resumable, sharded across processes.

The record order is grain's ``MapDataset.range(n).shuffle(seed).repeat()``:
the batch at step ``s`` is a pure function of ``(seed, s)``, so a run resumed
at ``start_step=N`` sees the batches an uninterrupted run would have seen.

  >>> src = base.ArraySource({"x": np.arange(10)})
  >>> it = batches(src, 4, seed=0, shuffle=False, num_epochs=1,
  ...              process_index=0, process_count=1)
  >>> [b["x"].tolist() for b in it]
  [[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grain
import numpy as np

from vae_attn.data import base

# Separates the augmentation random stream from any other use of `seed`.
_AUGMENT_SALT = 0xA06_5EED
_PREFETCH = 4  # Batches built ahead when num_threads > 0.


def _check_positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {value!r}.")
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}.")
  return int(value)


def batches(
  source: base.Source,
  batch_size: int,
  *,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  num_threads: int = 2,
) -> Iterator[base.Record]:
  """Yields this process's stacked numpy batches of ``source`` records.

  Global step ``s`` covers stream positions ``[s * G, (s + 1) * G)``, ``G =
  batch_size * process_count``; process ``p`` takes the ``p``-th
  ``batch_size`` of them. Position ``q`` holds record ``order[q]``. A
  source's ``augment(record, rng)``, if set, gets ``rng`` seeded by ``(seed,
  q)``. String fields come as 1-D object arrays of str.

  Args:
    source: a source (``get_batch`` used when present).
    batch_size: records per batch on this process.
    seed: the seed of the order and of the augmentation.
    shuffle: shuffle the records (reshuffled every epoch).
    num_epochs: passes over the data; ``None`` repeats forever.
    drop_remainder: with finite epochs, drop the last incomplete global
      batch; if kept, it is split as evenly as possible between processes.
    start_step: the first global step to yield (to resume a run).
    process_index, process_count: default ``jax.process_index()`` and
      ``jax.process_count()``.
    num_threads: threads building batches ahead (0: on demand); never
      changes the output.

  Raises:
    DataError: the source is empty, or holds fewer records than one global
      batch (finite epochs, ``drop_remainder``).
    TypeError, ValueError: a count is not a positive int, ``process_index``
      is outside ``[0, process_count)`` or ``start_step`` is negative.
  """
  batch_size = _check_positive_int(batch_size, "batch_size")
  if process_index is None or process_count is None:
    import jax  # Deferred: only the multi-host default needs jax.

    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  process_count = _check_positive_int(process_count, "process_count")
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index must be in [0, {process_count}), got {process_index}."
    )
  if num_epochs is not None:
    num_epochs = _check_positive_int(num_epochs, "num_epochs")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  num_records = len(source)
  name = getattr(source, "name", type(source).__name__)
  if num_records == 0:
    raise base.DataError(
      f"Source {name!r} is empty: there is nothing to batch."
    )
  global_batch = batch_size * process_count
  if num_epochs is None:
    total, stop = None, sys.maxsize  # Stream positions, global steps.
  else:
    total = num_records * num_epochs
    stop = (
      total // global_batch if drop_remainder else -(-total // global_batch)
    )
    if stop == 0:
      raise base.DataError(
        f"Source {name!r} has {num_records} records x {num_epochs} "
        f"epochs, fewer than one global batch of {global_batch} "
        f"({batch_size} x {process_count} processes) with drop_remainder. "
        "Lower batch_size, raise num_epochs or pass drop_remainder=False."
      )
  order = grain.MapDataset.range(num_records)  # Position -> record index.
  if shuffle:
    order = order.shuffle(seed=seed)
  order = order.repeat(num_epochs)

  def make_batch(step: int) -> base.Record | None:
    """This process's batch of global step ``step``, or ``None`` if empty."""
    lo = step * global_batch
    if total is not None and lo + global_batch > total:  # A kept remainder.
      positions = np.array_split(np.arange(lo, total), process_count)
      positions = positions[process_index]
      if positions.size == 0:
        return None
    else:
      lo += process_index * batch_size
      positions = np.arange(lo, lo + batch_size)
    return _read(source, order, positions, seed)

  # Steps whose batch is None (an empty share of a remainder) are skipped.
  steps = grain.MapDataset.range(start_step, max(start_step, stop))
  options = grain.ReadOptions(
    num_threads=num_threads,
    prefetch_buffer_size=_PREFETCH if num_threads else 0,
  )
  return iter(steps.map(make_batch).to_iter_dataset(options))


def _read(
  source: base.Source,
  order: grain.MapDataset,
  positions: np.ndarray,
  seed: int,
) -> base.Record:
  """The stacked, augmented batch of the records at stream ``positions``."""
  indices = np.array([order[int(q)] for q in positions], dtype=np.int64)
  augment = getattr(source, "augment", None)
  if hasattr(source, "get_batch"):
    batch = base.strings_to_objects(source.get_batch(indices))
    if augment is None:
      return batch
    records = [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]
  else:
    records = [source[int(i)] for i in indices]
  if augment is not None:
    records = [
      augment(r, np.random.default_rng([seed, _AUGMENT_SALT, int(q)]))
      for r, q in zip(records, positions, strict=True)
    ]
  return base.stack_records(records)


def single_pass(
  source: base.Source, batch_size: int, *, num_threads: int = 2
) -> Iterator[dict[str, np.ndarray]]:
  """Every record of ``source`` once, in index order, in this process."""
  return batches(
    source,
    batch_size,
    seed=0,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    process_index=0,
    process_count=1,
    num_threads=num_threads,
  )
