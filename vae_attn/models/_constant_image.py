"""Linear layers of a per-channel constant image, not formed (private).

Re-exported by :mod:`vae_attn.models.ops`. The attention transform adds a
zero per-channel offset at its target layer and folds it into the next
linear layer in closed form (``vae_attn/_attention_offsets.py``): these
contract the offset with summed kernel taps, so its transpose is a small
matmul, not a transposed convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn.models import _op_precision


def _valid_taps(size: int, kernel: int, stride: int, pads, dilation: int):
  """``[out, kernel]`` 0/1 matrix: does tap ``t`` of output ``i`` read input.

  Output ``i`` of a 1-D convolution reads input ``i * stride - pad_lo +
  t * dilation`` with tap ``t``; taps that fall into the zero padding read
  nothing.
  """
  lo, hi = pads
  out = (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1
  rows = np.arange(out)[:, None] * stride - lo + np.arange(kernel) * dilation
  return ((rows >= 0) & (rows < size)).astype(np.float32)


def conv_of_constant(
  offset: jax.Array,
  kernel: jax.Array,
  input_hw: tuple[int, int],
  *,
  strides: Sequence[int] = (1, 1),
  padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
  kernel_dilation: Sequence[int] = (1, 1),
  precision=None,
) -> jax.Array:
  """A bias-free 2-D convolution of an image that is constant per channel.

  Equals ``lax.conv_general_dilated(c, kernel, strides, padding,
  rhs_dilation=kernel_dilation)`` (NHWC, HWIO) for the image ``c[b, y, x, k]
  = offset[b, k]`` of size ``input_hw``, without forming the image: each
  output position sums the kernel taps that fall inside the input,
  ``W_eff[i, j] = sum_{valid taps} kernel[tap]``, and the result is
  ``offset @ W_eff``. Its transpose w.r.t. ``offset`` contracts a cotangent
  with ``W_eff`` instead of running a transposed convolution; this is what
  makes the per-channel gradients of the attention transform cheap.

  Args:
    offset: ``[B, n]`` per-channel values.
    kernel: ``[kh, kw, n, o]``.
    input_hw: ``(H, W)`` of the constant image.
    strides: the convolution's window strides.
    padding: ``((lo, hi), (lo, hi))`` zero padding of the input.
    kernel_dilation: the convolution's kernel (rhs) dilation.
    precision: of both contractions, as in ``jnp.einsum``; ``None`` reads
      the ambient default when traced.

  Returns:
    ``[B, h, w, o]``, the convolution's output.
  """
  precision = _op_precision.resolve_precision(precision)
  kh, kw = kernel.shape[:2]
  rows, cols = (
    jnp.asarray(_valid_taps(size, k, s, p, d), kernel.dtype)
    for size, k, s, p, d in zip(
      input_hw, (kh, kw), strides, padding, kernel_dilation, strict=True
    )
  )
  w_eff = jnp.einsum(
    "it,ju,tuno->ijno", rows, cols, kernel, precision=precision
  )
  return jnp.einsum("bn,ijno->bijo", offset, w_eff, precision=precision)


def flatten_dense_of_constant(
  offset: jax.Array,
  kernel: jax.Array,
  input_hw: tuple[int, int],
  *,
  precision=None,
) -> jax.Array:
  """A bias-free Dense layer of a flattened, per-channel constant image.

  Equals ``c.reshape(B, -1) @ kernel`` for the ``[B, H, W, n]`` image
  ``c[b, y, x, k] = offset[b, k]``, computed as ``offset @ W_sum`` with
  ``W_sum = kernel.reshape(H, W, n, J).sum((0, 1))``. Its transpose w.r.t.
  ``offset`` is a ``[*, J] @ [J, n]`` product instead of ``[*, J] @ [J,
  H * W * n]`` followed by a spatial sum.

  Args:
    offset: ``[B, n]`` per-channel values.
    kernel: ``[H * W * n, J]``, the kernel of the Dense layer.
    input_hw: ``(H, W)`` of the image that was flattened (row-major NHWC).
    precision: of both contractions, as in ``jnp.einsum``; ``None`` reads
      the ambient default when traced.

  Returns:
    ``[B, J]``.
  """
  precision = _op_precision.resolve_precision(precision)
  h, w = input_hw
  # The spatial sum as a matmul: XLA:CPU reduces a leading axis far slower.
  positions = jnp.ones((h * w,), kernel.dtype)
  w_sum = jnp.einsum(
    "p,pnj->nj",
    positions,
    kernel.reshape(h * w, -1, kernel.shape[-1]),
    precision=precision,
  )
  return jnp.matmul(offset, w_sum, precision=precision)
