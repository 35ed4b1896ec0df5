"""Test data with pixel masks for ``eval.localization`` and ``eval.explain``.

Which data set a run is evaluated on comes from the flags, else from its run
spec (``workflow.runs.RunSpec``: data source, folder and category), else the
offline textured-defect set. Masks come at the model's input size (nearest
resize, as the loaders give them) or at their original size
(:func:`original_mask`, read from the mask file), for the two protocols of
``eval.localization``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np

from vae_attn.data import image_mask, images
from workflow import runs

DATASETS = ("textures", "mvtec", "ped1", "folder")


class DataOptions(NamedTuple):
  """The test data of an evaluation.

  Attributes:
    dataset: one of :data:`DATASETS`.
    data_dir: its folder (``None``: the offline set's cache).
    category: the MVTec-AD or textures category, or ``None``.
  """

  dataset: str
  data_dir: str | None
  category: str | None


def data_options(
  spec: runs.RunSpec | None,
  *,
  dataset: str | None = None,
  data_dir: str | None = None,
  category: str | None = None,
) -> DataOptions:
  """The flags' data set, folder and category, else the run spec's.

  The spec's folder and category are used only when the data set is the
  one the run was trained on.

  Raises:
    ValueError: the data set has no pixel masks.
  """
  kwargs = dict(spec.data_kwargs) if spec is not None else {}
  dataset = dataset or (spec.data if spec is not None else None) or "textures"
  if dataset not in DATASETS:
    raise ValueError(
      f"Localization needs pixel masks; data set {dataset!r} has none. Pass "
      f"--dataset as one of {DATASETS} (with --data-dir for real data)."
    )
  same_data = spec is not None and dataset == spec.data
  data_dir = data_dir or (spec.data_dir if same_data else None) or None
  category = category or (kwargs.get("category") if same_data else None)
  return DataOptions(dataset, data_dir, category or None)


def load_splits(
  options: DataOptions, image_size: tuple[int, int]
) -> tuple[Any, Any, str | None]:
  """``(test_source, train_source, category)`` of a data set with masks.

  Raises:
    ValueError: a data set that reads files has no ``data_dir``, or MVTec-AD
      has no category.
    vae_attn.data.DataError: the files are missing or malformed.
  """
  dataset, root, category = options
  if dataset == "textures":
    from vae_attn.data import mvtec, textures

    category = category or textures.CATEGORIES[0]
    if not (root and os.path.isdir(os.path.join(root, category))):
      # The trainers' data_dir for textures is the cache the set is made in.
      root = textures.ensure_dataset(root or None)
    load = functools.partial(mvtec.load, root, category, image_size=image_size)
    return load("test"), load("train"), category
  if not root:
    raise ValueError(
      f"--dataset={dataset} reads files: pass --data-dir=<the data set folder>."
    )
  if dataset == "mvtec":
    from vae_attn.data import mvtec

    if not category:
      found = ", ".join(mvtec.find_categories(root)) or "none"
      raise ValueError(
        f"--dataset=mvtec needs --category=<name>; categories in {root}: "
        f"{found}."
      )
    load = functools.partial(mvtec.load, root, category, image_size=image_size)
    return load("test"), load("train"), category
  if dataset == "ped1":
    from vae_attn.data import ped1

    load = functools.partial(ped1.load, root, image_size=image_size)
    return load("test"), load("train"), None
  from vae_attn.data import custom_folder

  load = functools.partial(custom_folder.load, root, image_size=image_size)
  return load("test"), load("train"), category


class Subset:
  """Records ``indices`` of a source (random access, for the pipeline)."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self.indices = source, indices
    self.name = f"{getattr(source, 'name', 'source')}[subset]"

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self._source[int(self.indices[index])]

  @property
  def entries(self) -> list[image_mask.Entry] | None:
    """The picked entries of an image-and-mask source, else ``None``."""
    every = getattr(self._source, "entries", None)
    return None if every is None else [every[int(i)] for i in self.indices]


def subset(source, max_images: int | None):
  """At most ``max_images`` records, evenly spaced over the source.

  Test splits are sorted (normal images first), so evenly spaced picks keep
  normal and anomalous images both.
  """
  if max_images is None or max_images >= len(source):
    return source
  indices = np.linspace(0, len(source) - 1, max_images).round()
  return Subset(source, np.unique(indices.astype(np.int64)))


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """Matches the data's channels to the model's (grey <-> RGB)."""
  if x.shape[-1] == channels:
    return x
  if channels == 1:
    return x.mean(axis=-1, keepdims=True)
  return np.repeat(x, channels, axis=-1)


def original_mask(entry: image_mask.Entry) -> np.ndarray:
  """The ground truth of one test image at its original size.

  Args:
    entry: an image-and-mask record (``source.entries[i]``).

  Returns:
    bool ``[H, W]`` at the size of the mask file (which is its image's
    size); all False for an image without a mask file (a normal image).

  Raises:
    vae_attn.data.DataError: the file cannot be read.
  """
  if entry.mask is None:
    return np.zeros(images.image_size_of(entry.image), bool)
  return images.read_mask(entry.mask)[..., 0] > 0
