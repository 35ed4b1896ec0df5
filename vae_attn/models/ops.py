"""Convolution primitives used by every model.

Models call these instead of ``lax`` directly, so that exact, tested
reformulations that are faster on XLA:CPU can be selected there while the
stock ``lax`` convolutions stay the path on GPU and TPU. Parameters have the
same names and shapes on every path, so checkpoints move between them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
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
