"""Offline handwritten digits: scikit-learn's bundled 8x8 digits at 28x28.

The MNIST stand-in where MNIST is not prepared: the 1,797 UCI digits of
``sklearn.datasets.load_digits``, bilinearly upsampled to 28x28 in [0, 1]; a
smoke test of the MNIST pipeline, not the paper's figures. The first 80% of
each digit's images are ``"train"``, the rest ``"test"``; records and the
one-class rule are `mnist.load`'s.
"""

from __future__ import annotations

import jax
import numpy as np

from vae_attn.data import base, mnist


def load(split: str, *, normal_digit: int | None = None) -> base.ArraySource:
  """Loads ``"train"`` or ``"test"``, as a one-class problem with
  ``normal_digit`` (as `mnist.load`).

  Raises:
    ValueError: an unknown split or a digit outside 0..9.
  """
  from sklearn import datasets  # Deferred: only this source needs it.

  if split not in ("train", "test"):
    raise ValueError(f"Unknown split {split!r}; choose 'train' or 'test'.")
  mnist.check_normal_digit(normal_digit)
  raw = datasets.load_digits()
  labels = raw.target.astype(np.int32)
  in_train = np.zeros(len(labels), bool)
  for digit in range(10):
    idx = np.flatnonzero(labels == digit)
    in_train[idx[: int(round(0.8 * len(idx)))]] = True
  keep = in_train if split == "train" else ~in_train
  if normal_digit is not None and split == "train":
    keep &= labels == normal_digit
  small = (raw.images[keep] / 16.0).astype(np.float32)
  images = jax.image.resize(small, (len(small), 28, 28), "bilinear")  # MNIST's
  images = np.clip(np.asarray(images), 0.0, 1.0)[..., None]
  fields = {"image": images, "label": labels[keep]}
  if normal_digit is not None:
    fields["anomalous"] = (fields["label"] != normal_digit).astype(np.int32)
  return base.ArraySource(fields, name=f"digits/{split}")
