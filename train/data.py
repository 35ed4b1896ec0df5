"""Data sets on the device: whole arrays, or a renderer, sampled in the step.

A trainer hands ``train.loop`` the pair ``(arrays, sample_fn)``: the arrays
are placed on the mesh once; each batch is drawn in the step from its key
(uniformly, with replacement), so a resumed run draws the same batches.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vae_attn.data import base, dsprites


def read_all(source: base.Source, name: str = "image", chunk: int = 4096):
  """Every record's ``name`` field of ``source`` as one numpy array (a
  progress bar for large sets)."""
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


def uniform_rows(
  images: np.ndarray, *, binary: bool = False
) -> tuple[dict, Callable]:
  """``(arrays, draw)`` with ``draw(arrays, key, num) -> float32 [num, H, W,
  C]`` uniform rows of ``images`` (``[N, H, W, C]`` in [0, 1]); ``binary``
  images (in {0, 1}, one channel) are held as bits."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got {images.shape}.")
  width = images.shape[2]
  if binary:
    if images.shape[3] != 1 or not np.isin(images, (0, 1)).all():
      raise ValueError("Binary images must have one channel of 0 and 1.")
    arrays = {"bits": np.packbits(images[..., 0].astype(np.uint8), axis=-1)}
  else:
    arrays = {"images": images.astype(np.float32)}

  def draw(arrays, key, num):
    (x,) = arrays.values()
    x = x[jax.random.randint(key, (num,), 0, x.shape[0])]
    if binary:
      x = jnp.unpackbits(x, axis=-1, count=width).astype(jnp.float32)[..., None]
    return x

  return arrays, draw


def dsprites_rendered() -> tuple[dict, Callable]:
  """The procedural dSprites drawn on the device (uniform factor classes,
  rendered by :func:`vae_attn.data.dsprites.render`): no memory at all."""

  def draw(arrays, key, num):
    del arrays
    high = jnp.asarray(dsprites.FACTORS_NUM_VALUES)
    factors = jax.random.randint(key, (num, len(high)), 0, high)
    return dsprites.render(factors)

  return {}, draw


def independent_draws(
  draw: Callable, names: tuple[str, ...] = ("image",)
) -> Callable:
  """A ``sample_fn(arrays, key, num)`` whose batch holds an independent
  draw of ``draw`` per name (FactorVAE: ``("x", "x2")``)."""

  def sample(arrays, key, num):
    keys = jax.random.split(key, len(names))
    return {n: draw(arrays, k, num) for n, k in zip(names, keys, strict=True)}

  return sample
