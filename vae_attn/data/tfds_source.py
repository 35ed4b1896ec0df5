"""Prepared tfds data sets as random-access sources, never downloading.

``tfds.data_source`` reads array_record files without importing TensorFlow;
a data set not prepared raises `DataError` with the command that prepares it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from vae_attn.data import base


def _prepare_hint(name: str, where: str) -> str:
  """How to prepare data set ``name`` in ``where`` for random access."""
  return (
    f"Prepare it once on a machine with internet: `tfds build {name} "
    f"--file_format=array_record --data_dir={where}` (random access needs "
    "the array_record format, not the default tfrecord), or point data_dir "
    f"(or $TFDS_DATA_DIR) at a folder that holds a prepared copy ({name}/"
    "<version>/ with *.array_record files)."
  )


def open_source(
  name: str,
  split: str,
  data_dir: str | os.PathLike | None,
  record_fn: Callable[[dict[str, Any]], base.Record],
) -> base.MappedSource:
  """Opens tfds ``name`` at ``split`` (a split string, e.g. "test[:10%]")
  in ``data_dir`` (None: tfds' default), each example a record through
  ``record_fn``.

  Raises:
    DataError: the data set is not prepared there, or the split is unknown.
  """
  import tensorflow_datasets as tfds  # Deferred: a slow import.

  data_dir = os.fspath(data_dir) if data_dir is not None else None
  where = data_dir
  if where is None:
    where = os.environ.get(
      "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")
    )
  if data_dir is not None and not os.path.isdir(data_dir):
    raise base.DataError(
      f"tfds data_dir {data_dir} does not exist. " + _prepare_hint(name, where)
    )
  try:
    source = tfds.data_source(
      name, split=split, data_dir=data_dir, download=False
    )
  except (
    AssertionError,
    FileNotFoundError,
    KeyError,
    NotImplementedError,
    tfds.core.registered.DatasetNotFoundError,
  ) as e:
    raise base.DataError(
      f"tfds data set {name!r} is not prepared for random access under "
      f"{where} ({type(e).__name__}: {str(e).splitlines()[0]}). "
      + _prepare_hint(name, where)
    ) from e
  except ValueError as e:
    raise base.DataError(
      f"tfds data set {name!r}: bad split {split!r} ({e}). Use a tfds split "
      "string such as 'train', 'test' or 'train[:80%]'."
    ) from e
  return base.MappedSource(source, record_fn, name=f"tfds:{name}/{split}")
