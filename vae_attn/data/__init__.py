"""Data sources and the batching pipeline (see docs/data.md).

Every loader returns a *source* (`base.Source`): a random-access sequence of
``dict[str, np.ndarray]`` records (images float32 in [0, 1], HWC), read in
seeded, resumable, per-process batches by `pipeline.batches`. Missing or
malformed data raises `DataError`, whose message names the file and the fix.
`datasets.load` picks a one-class data set by name.
"""

# Only the shared types: a loader is imported by name where it is used.
from vae_attn.data.base import ArraySource, DataError, Record, Source

__all__ = ["ArraySource", "DataError", "Record", "Source"]
