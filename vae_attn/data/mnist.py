"""MNIST through ``tfds.data_source`` (no TensorFlow), with one-class splits.

The paper trains one VAE per digit on that digit's training images and tests
on the whole test set, every other digit an anomaly. A split is read once
into memory (uint8). Records: ``"image"`` float32 ``[28, 28, 1]`` in [0, 1],
``"label"`` int32 and, with ``normal_digit``, ``"anomalous"`` int32 (1 when
the digit is not ``normal_digit``).
"""

from __future__ import annotations

import os

import numpy as np

from vae_attn.data import base, tfds_source


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """Every example of a tfds source as uint8 images and int32 labels."""
  images = np.empty((len(source), 28, 28, 1), np.uint8)
  labels = np.empty((len(source),), np.int32)
  for k in range(len(source)):
    example = source[k]
    images[k] = np.asarray(example["image"]).reshape(28, 28, 1)
    labels[k] = int(example["label"])
  return images, labels


def check_normal_digit(normal_digit) -> None:
  """Raises ValueError unless ``normal_digit`` is None or an int in 0..9."""
  if normal_digit is not None and (
    isinstance(normal_digit, bool)
    or not isinstance(normal_digit, (int, np.integer))
    or not 0 <= normal_digit <= 9
  ):
    raise ValueError(
      f"normal_digit must be an int in 0..9, got {normal_digit!r}."
    )


def load(
  split: str,
  *,
  normal_digit: int | None = None,
  data_dir: str | os.PathLike | None = None,
) -> base.ArraySource:
  """Loads an MNIST split, optionally as a one-class problem.

  Args:
    split: a tfds split string: "train", "test", "train[:90%]", ...
    normal_digit: the one normal class (training splits keep only it); None:
      plain MNIST.
    data_dir: the tfds data directory holding MNIST as array_record
      (default: tfds').

  Raises:
    DataError: MNIST is not prepared there, or the split is empty.
    ValueError: ``normal_digit`` is not in 0..9.
  """
  check_normal_digit(normal_digit)
  source = tfds_source.open_source("mnist", split, data_dir, lambda x: x)
  images, labels = _read_all(source)
  fields = {"image": images, "label": labels}
  if normal_digit is not None:
    if split.split("[")[0].strip() == "train":
      keep = labels == normal_digit
      fields = {k: v[keep] for k, v in fields.items()}
      if not keep.any():
        raise base.DataError(
          f"MNIST split {split!r} has no image of digit {normal_digit}; "
          "use a larger split."
        )
    fields["anomalous"] = (fields["label"] != normal_digit).astype(np.int32)
  return _MnistSource(fields, name=f"mnist/{split}")


class _MnistSource(base.ArraySource):
  """MNIST held as uint8; records and batches are float32 in [0, 1]."""

  def __getitem__(self, index: int) -> base.Record:
    record = super().__getitem__(index)
    record["image"] = record["image"].astype(np.float32) / 255.0
    return record

  def get_batch(self, indices) -> base.Record:
    batch = super().get_batch(indices)
    batch["image"] = batch["image"].astype(np.float32) / 255.0
    return batch
