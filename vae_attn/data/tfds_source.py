"""Opens prepared tfds data sets as random-access sources, never downloading.

``tfds.data_source`` reads array_record files without importing TensorFlow.
It is called with ``download=False``: a data set that has not been prepared
raises `DataError` with the command that prepares it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from vae_attn.data import base


def _default_data_dir() -> str:
  """The directory tfds reads when ``data_dir`` is None."""
  return os.environ.get(
    "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")
  )


def _prepare_hint(name: str, data_dir: str | os.PathLike | None) -> str:
  """How to prepare data set ``name`` for random access."""
  where = os.fspath(data_dir) if data_dir is not None else _default_data_dir()
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
  """Opens ``name``/``split`` (a tfds split string, e.g. "test[:10%]").

  Args:
    name: the tfds name, e.g. "mnist".
    split: a tfds split string.
    data_dir: the tfds data directory; None for tfds' default.
    record_fn: converts a tfds example (a dict of numpy values) to a record.

  Raises:
    DataError: the data set is not prepared there, or the split is unknown.
  """
  import tensorflow_datasets as tfds  # Deferred: a slow import.

  data_dir = os.fspath(data_dir) if data_dir is not None else None
  if data_dir is not None and not os.path.isdir(data_dir):
    raise base.DataError(
      f"tfds data_dir {data_dir} does not exist. "
      + _prepare_hint(name, data_dir)
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
    where = data_dir if data_dir is not None else _default_data_dir()
    raise base.DataError(
      f"tfds data set {name!r} is not prepared for random access under "
      f"{where} ({type(e).__name__}: {str(e).splitlines()[0]}). "
      + _prepare_hint(name, data_dir)
    ) from e
  except ValueError as e:
    raise base.DataError(
      f"tfds data set {name!r}: bad split {split!r} ({e}). Use a tfds split "
      "string such as 'train', 'test' or 'train[:80%]'."
    ) from e
  return base.MappedSource(source, record_fn, name=f"tfds:{name}/{split}")
