"""Data sets on the device: whole arrays, or a renderer, sampled in the step.

A trainer hands ``train.loop`` the pair ``(arrays, sample_fn)``: the arrays
are placed on the mesh once and passed to every compiled call; each batch is
drawn inside the step from the step's key (uniformly, with replacement), so
there is no host pipeline in the hot loop and a resumed run draws the same
batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vae_attn.data import base, dsprites

_log = logging.getLogger(__name__)


def read_all(source: base.Source, name: str = "image", chunk: int = 4096):
  """Every record's ``name`` field of ``source`` as one numpy array.

  Uses ``source.get_batch`` when the source has it (vectorised), else reads
  record by record, with a progress bar for large sets.
  """
  num = len(source)
  if num == 0:
    raise ValueError(f"The data set {source!r} is empty.")
  parts = []
  bar = tqdm.tqdm(
    total=num, unit="image", desc="loading onto the device", disable=num < 1e5
  )
  with bar:
    for start in range(0, num, chunk):
      idx = np.arange(start, min(num, start + chunk))
      if hasattr(source, "get_batch"):
        batch = source.get_batch(idx)[name]
      else:
        batch = np.stack([np.asarray(source[int(i)][name]) for i in idx])
      parts.append(np.asarray(batch))
      bar.update(len(idx))
  return np.concatenate(parts)


def _binary_bits(images: np.ndarray) -> np.ndarray:
  """``[N, H, W, 1]`` in {0, 1} -> uint8 bits ``[N, H, ceil(W / 8)]``."""
  values = images[..., 0]
  if not np.isin(values, (0, 1)).all():
    raise ValueError("Binary images must hold only 0 and 1.")
  return np.packbits(values.astype(np.uint8), axis=-1)


def uniform_rows(
  images: np.ndarray, *, binary: bool = False
) -> tuple[dict, Callable]:
  """Arrays and a sampler that draws uniform rows of ``images``.

  Args:
    images: ``[N, H, W, C]`` float images in [0, 1].
    binary: the images are in {0, 1}: they are held as bits (dSprites: all
      737,280 images in 377 MB instead of 3 GB of bytes).

  Returns:
    ``(arrays, draw)`` with ``draw(arrays, key, num) -> float32 [num, H, W,
    C]``.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got {images.shape}.")
  width, channels = images.shape[2], images.shape[3]
  if binary:
    if channels != 1:
      raise ValueError("Binary images must have one channel.")
    arrays = {"bits": _binary_bits(images)}

    def draw(arrays, key, num):
      bits = arrays["bits"]
      idx = jax.random.randint(key, (num,), 0, bits.shape[0])
      x = jnp.unpackbits(bits[idx], axis=-1, count=width)
      return x.astype(jnp.float32)[..., None]

    return arrays, draw

  arrays = {"images": images.astype(np.float32)}

  def draw(arrays, key, num):
    x = arrays["images"]
    return x[jax.random.randint(key, (num,), 0, x.shape[0])]

  return arrays, draw


def dsprites_rendered() -> tuple[dict, Callable]:
  """The procedural dSprites drawn on the device: no memory at all.

  ``draw(arrays, key, num)`` samples factor classes uniformly over the
  3 x 6 x 40 x 32 x 32 grid and renders them with
  :func:`vae_attn.data.dsprites.render`, the definition every dSprites
  renderer of the project shares.
  """

  def draw(arrays, key, num):
    del arrays
    high = jnp.asarray(dsprites.FACTORS_NUM_VALUES)
    factors = jax.random.randint(key, (num, len(high)), 0, high)
    return dsprites.render(factors)

  return {}, draw


def independent_draws(
  draw: Callable, names: tuple[str, ...] = ("image",)
) -> Callable:
  """A ``sample_fn(arrays, key, num)`` whose batch holds ``len(names)``
  independent draws of ``draw``.

  The FactorVAE step takes ``("x", "x2")``: two independent batches (the
  second one feeds the discriminator's permuted codes).
  """

  def sample(arrays, key, num):
    keys = jax.random.split(key, len(names))
    return {n: draw(arrays, k, num) for n, k in zip(names, keys, strict=True)}

  return sample
