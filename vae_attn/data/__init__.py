"""Data sources and the batching pipeline (see docs/data.md).

Every loader returns a *source*: a random-access sequence of
``dict[str, np.ndarray]`` records (images float32 in [0, 1], HWC), read
in seeded, resumable, per-process batches by `pipeline.batches`. Missing or
malformed data raises `DataError`, whose message names the file and the
fix.

`datasets.load(name, split, ...)` picks a one-class data set by name (the
one table, `datasets.DATASETS`: textures, mvtec, folder, mnist, digits,
ped1).

Loaders: `mnist.load`, `dsprites.load_npz`, `dsprites.load_tfds`,
`mvtec.load`, `ped1.load`, `custom_folder.load` (your own images);
`image_mask` holds the image-and-mask records and source they share.
Offline sources: `dsprites.procedural`, `textures.ensure_dataset` (an
MVTec-AD layout of real textures with synthetic defects) and `digits.load`
(an MNIST stand-in).
"""

# Only the shared types: each loader is imported by name where it is used
# (``from vae_attn.data import dsprites``), so using one loader does not
# import every other.
from vae_attn.data.base import (
  ArraySource,
  DataError,
  MappedSource,
  Record,
  Source,
  stack_records,
)

__all__ = [
  "ArraySource",
  "DataError",
  "MappedSource",
  "Record",
  "Source",
  "stack_records",
]
