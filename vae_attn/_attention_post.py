"""Post-processing of attention maps: resizing and display scaling (private).

Re-exported by :mod:`vae_attn.attention` (``upsample``, ``normalize``).
Pure functions of arrays that the caller composes with the transform, as
optax composes gradient transformations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import _attention_precision as precision_lib


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(out_size: int, in_size: int):
  """``[out, in]`` matrix of bilinear (half-pixel) 1-D resizing.

  A NumPy constant, computed eagerly even when first needed inside ``jit``,
  so the cache never holds a tracer.
  """
  with jax.ensure_compile_time_eval():
    eye = jnp.eye(in_size, dtype=jnp.float32)
    matrix = jax.image.resize(
      eye, (out_size, in_size), "linear", antialias=False
    )
  return np.asarray(matrix)


def _check_size(size) -> tuple[int, int]:
  pair = (size, size) if isinstance(size, (int, np.integer)) else size
  try:
    out_h, out_w = pair
  except (TypeError, ValueError):
    out_h = out_w = None
  if not all(
    isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
    for v in (out_h, out_w)
  ):
    raise ValueError(
      f"size must be a positive int H or a pair (H, W) of positive ints, "
      f"got {size!r}; e.g. x.shape[1:3] for the image size."
    )
  return int(out_h), int(out_w)


def upsample(
  maps: jax.Array,
  size: int | tuple[int, int],
  *,
  precision: precision_lib.Precision = "highest",
) -> jax.Array:
  """Bilinearly resizes maps ``[..., h, w]`` to ``[..., H, W]``.

  Equals ``jax.image.resize(maps, (..., H, W), "bilinear")`` (half-pixel
  centres, as ``F.interpolate(align_corners=False)``), computed as two small
  interpolation matrices, which is faster on CPU.

  Args:
    maps: ``[..., h, w]``, e.g. ``AttentionMaps.per_latent`` or ``.mean``.
    size: ``H`` (square) or ``(H, W)``, positive, usually the image size.
    precision: of the two matmuls, as in
      :func:`vae_attn.attention.value_and_attention`.

  Returns:
    ``[..., H, W]`` maps.

  Raises:
    ValueError: ``size`` is not positive, or ``maps`` has fewer than 2 axes
      or an empty spatial axis.
  """
  out_h, out_w = _check_size(size)
  if getattr(maps, "ndim", 0) < 2 or 0 in maps.shape[-2:]:
    raise ValueError(
      f"upsample expects maps [..., h, w] with h, w >= 1, got shape "
      f"{getattr(maps, 'shape', type(maps).__name__)}."
    )
  rh = _interpolation_matrix(out_h, maps.shape[-2]).astype(maps.dtype)
  rw = _interpolation_matrix(out_w, maps.shape[-1]).astype(maps.dtype)
  with precision_lib.matmul_precision(precision):
    return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


def normalize(maps: jax.Array) -> jax.Array:
  """Min-max normalises each map ``[..., h, w]`` to ``[0, 1]`` for display.

  Args:
    maps: ``[..., h, w]`` floating-point maps.

  Returns:
    ``[..., h, w]`` in the dtype of ``maps``; a constant map gives 0
    everywhere, in every dtype (float16 included).
  """
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  span = hi - lo
  flat = span <= 0
  return jnp.where(flat, 0, (maps - lo) / jnp.where(flat, 1, span)).astype(
    maps.dtype
  )
