"""Convolution primitives used by every model.

Models call these instead of ``lax`` directly, so that exact, tested
reformulations that are faster on XLA:CPU can be selected there while the
stock ``lax`` convolutions stay the path on GPU and TPU. Parameters have the
same names and shapes on every path, so checkpoints move between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

conv_general_dilated = lax.conv_general_dilated


def conv_transpose(
  x: jax.Array, kernel: jax.Array, *, stride: int, padding: int
) -> jax.Array:
  """``torch.nn.ConvTranspose2d`` semantics on NHWC with an HWIO kernel.

  Output size ``(in - 1) * stride - 2 * padding + kernel``. The kernel is used
  as a forward-conv kernel of the dilated input (no flip), which is the same
  family of functions; only the parameter layout differs from PyTorch.
  """
  k = kernel.shape[0]
  pad = k - 1 - padding
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=((pad, pad), (pad, pad)),
    lhs_dilation=(stride, stride),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


class ConvTranspose(nn.Module):
  """Transposed convolution with PyTorch ``(kernel, stride, padding)`` sizes."""

  features: int
  kernel: int = 4
  stride: int = 2
  padding: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (self.kernel, self.kernel, x.shape[-1], self.features),
    )
    y = conv_transpose(x, kernel, stride=self.stride, padding=self.padding)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


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

  Returns:
    ``[B, h, w, o]``, the convolution's output.
  """
  kh, kw = kernel.shape[:2]
  rows, cols = (
    jnp.asarray(_valid_taps(size, k, s, p, d), kernel.dtype)
    for size, k, s, p, d in zip(
      input_hw, (kh, kw), strides, padding, kernel_dilation, strict=True
    )
  )
  w_eff = jnp.einsum("it,ju,tuno->ijno", rows, cols, kernel)
  return jnp.einsum("bn,ijno->bijo", offset, w_eff)


def flatten_dense_of_constant(
  offset: jax.Array, kernel: jax.Array, input_hw: tuple[int, int]
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

  Returns:
    ``[B, J]``.
  """
  h, w = input_hw
  # The spatial sum as a matmul: XLA:CPU reduces a leading axis far slower.
  positions = jnp.ones((h * w,), kernel.dtype)
  w_sum = jnp.einsum(
    "p,pnj->nj", positions, kernel.reshape(h * w, -1, kernel.shape[-1])
  )
  return offset @ w_sum
