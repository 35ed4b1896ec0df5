"""Data sources and the batching pipeline (see docs/data.md).

Every loader returns a *source*: a random-access sequence of
``dict[str, np.ndarray]`` records, read in batches by `pipeline.batches`.
Errors about missing or malformed data are `DataError`.
"""

from vae_attn.data import dsprites, pipeline
from vae_attn.data.base import (
  ArraySource,
  DataError,
  MappedSource,
  Record,
  Source,
  stack_records,
)
from vae_attn.data.pipeline import batches

__all__ = [
  "ArraySource",
  "DataError",
  "MappedSource",
  "Record",
  "Source",
  "batches",
  "dsprites",
  "pipeline",
  "stack_records",
]
