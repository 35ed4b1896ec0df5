"""Convolution primitives used by every model.

Models call these instead of ``lax`` directly, so that exact, tested
reformulations that are faster on XLA:CPU can be selected there while the
stock ``lax`` convolutions stay the path on GPU and TPU. Parameters have the
same names and shapes on every path, so checkpoints move between them.

Precision: every op takes a ``precision`` (as ``lax.conv_general_dilated``
does). ``None`` means the ambient ``jax_default_matmul_precision`` (e.g. set
by ``jax.default_matmul_precision`` or
:func:`vae_attn.attention.matmul_precision`), read once, when the op is
traced, and carried explicitly by every convolution and matmul of the op
and of its custom derivatives: derivatives traced later, outside the
caller's precision scope (the backward pass of ``jax.grad``), keep the
precision of the forward pass.

Where the ops live: the strided convolution and its custom derivatives in
``_strided_conv.py``, the layers of a per-channel constant image (used by
the attention transform) in ``_constant_image.py``, the precision rule in
``_op_precision.py``; this module holds the drop-ins models call
(``conv_general_dilated``, ``conv_transpose``, ``ConvTranspose``), the
matmul convolution of tiny outputs, and re-exports the rest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vae_attn.models import _strided_conv
from vae_attn.models._constant_image import conv_of_constant as conv_of_constant
from vae_attn.models._constant_image import (
  flatten_dense_of_constant as flatten_dense_of_constant,
)
from vae_attn.models._op_precision import resolve_precision as resolve_precision
from vae_attn.models._strided_conv import strided_conv as strided_conv

_NHWC = _strided_conv.NHWC
# At most this many output positions: a convolution is one matmul of patches.
_SMALL_OUTPUT = 16


def small_conv(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: Sequence[int],
  padding,
  precision=None,
) -> jax.Array:
  """A 2-D NHWC/HWIO convolution with a tiny output as one matmul.

  Each of the ``h * w`` output positions gathers its padded ``kh x kw x n``
  input window; ``[B, h * w, kh * kw * n] @ [kh * kw * n, o]`` is the
  convolution (the same sums, in another order). XLA:CPU's stock kernels
  are slow on tiny spatial sizes: a 3x3 conv of a ``[8, 2, 2, 512]`` input
  (ResNet-18's last stage at 64x64) took 51 ms there, its gradient 106 ms;
  as a matmul 0.7 and 2.7 ms. Derivatives of every order are those of pad,
  slice and dot.

  Args:
    x: ``[B, H, W, n]``.
    kernel: ``[kh, kw, n, o]``.
    strides: ``(sh, sw)``.
    padding: ``((top, bottom), (left, right))``, non-negative.
    precision: of the matmul, as in ``jnp.matmul``; ``None`` reads the
      ambient default when traced.

  Returns:
    ``[B, h, w, o]``.
  """
  (kh, kw), (sh, sw) = kernel.shape[:2], tuple(strides)
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  h = (xp.shape[1] - kh) // sh + 1
  w = (xp.shape[2] - kw) // sw + 1
  windows = [
    xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :].reshape(len(x), -1)
    for i in range(h)
    for j in range(w)
  ]
  y = jnp.matmul(
    jnp.stack(windows, axis=1),
    kernel.reshape(-1, kernel.shape[-1]),
    precision=resolve_precision(precision),
  )
  return y.reshape(len(x), h, w, kernel.shape[-1])


def fast_path() -> bool:
  """Whether the XLA:CPU reformulations are used (default backend is CPU)."""
  return jax.default_backend() == "cpu"


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """``lax.conv_general_dilated``, on XLA:CPU via exact reformulations.

  A drop-in for ``nn.Conv(conv_general_dilated=...)``. When the default
  backend is CPU, 2-D NHWC convolutions take an exact fast path: strided
  ones whose kernel size the stride divides :func:`strided_conv`, others
  with at most 16 output positions :func:`small_conv`. Everything else, and
  every other backend, is the stock ``lax`` convolution. ``precision=None``
  is resolved to the ambient default when traced (module docstring) and
  carried by every path and derivative.
  """
  precision = resolve_precision(precision)
  stock = functools.partial(
    lax.conv_general_dilated,
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  if not fast_path() or lhs.ndim != 4 or lhs.dtype != rhs.dtype:
    return stock()
  strides = tuple(window_strides)
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  dilations = tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())
  if (
    len(set(strides)) != 1
    or dims != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    or any(d != 1 for d in dilations)
    or feature_group_count != 1
    or batch_group_count != 1
    or preferred_element_type is not None
  ):
    return stock()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(
      lhs.shape[1:3], rhs.shape[:2], strides, padding
    )
  geo = _strided_conv.geometry(
    lhs.shape[1:3], rhs.shape[:2], strides[0], padding, precision
  )
  if geo is not None:
    return _strided_conv.conv(lhs, rhs, geo)
  out_hw = [
    (n + sum(p) - k) // strides[0] + 1
    for n, p, k in zip(lhs.shape[1:3], padding, rhs.shape[:2], strict=True)
  ]
  if min(min(p) for p in padding) >= 0 and math.prod(out_hw) <= _SMALL_OUTPUT:
    return small_conv(
      lhs, rhs, strides=strides, padding=padding, precision=precision
    )
  return stock()


def conv_transpose(
  x: jax.Array, kernel: jax.Array, *, stride: int, padding: int, precision=None
) -> jax.Array:
  """``torch.nn.ConvTranspose2d`` semantics on NHWC with an HWIO kernel.

  Output size ``(in - 1) * stride - 2 * padding + kernel``. The kernel is used
  as a forward-conv kernel of the dilated input (no flip), which is the same
  family of functions; only the parameter layout differs from PyTorch.
  On XLA:CPU it is computed, exactly, as the input gradient of the strided
  convolution with the flipped kernel (a stride-1 convolution and
  depth-to-space, see :func:`strided_conv`), with the same fast derivatives;
  an output of at most 16 positions (ResNet-18 decoder's first stages) is
  one matmul (:func:`small_conv` of the dilated input): at ``[8, 1, 1,
  1024] -> [8, 2, 2, 512]`` the value took 15 ms the first way, 2.5 ms this
  way, and its input gradient 89 and 5 ms. ``precision`` as in
  :func:`strided_conv` (``None``: the ambient default, read when traced).
  """
  precision = resolve_precision(precision)
  k = kernel.shape[0]
  pad = k - 1 - padding
  out_hw = [(n - 1) * stride - 2 * padding + k for n in x.shape[1:3]]
  small = math.prod(out_hw) <= _SMALL_OUTPUT
  if fast_path() and x.ndim == 4 and pad >= 0 and small:
    # Tiny output: the stride-1 conv of the dilated, padded input as a matmul.
    dilated = lax.pad(
      x,
      jnp.zeros((), x.dtype),
      ((0, 0, 0), (pad, pad, stride - 1), (pad, pad, stride - 1), (0, 0, 0)),
    )
    return small_conv(
      dilated,
      kernel,
      strides=(1, 1),
      padding=((0, 0),) * 2,
      precision=precision,
    )
  if fast_path() and x.ndim == 4 and padding <= k - 1:
    pads = ((padding, padding), (padding, padding))
    geo = _strided_conv.geometry(
      out_hw, kernel.shape[:2], stride, pads, precision
    )
    if geo is not None:
      return _strided_conv.conv_t(
        x, kernel[::-1, ::-1].transpose(0, 1, 3, 2), geo
      )
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=((pad, pad), (pad, pad)),
    lhs_dilation=(stride, stride),
    dimension_numbers=_NHWC,
    precision=precision,
  )


class ConvTranspose(nn.Module):
  """Transposed convolution with PyTorch ``(kernel, stride, padding)`` sizes.

  Dtypes follow ``flax.linen.Conv``: parameters are created in
  ``param_dtype`` (float32), and input, kernel and bias are promoted to
  ``dtype`` (``None``: their common type, e.g. float64 for float64 inputs
  under ``jax_enable_x64``) before the convolution.
  """

  features: int
  kernel: int = 4
  stride: int = 2
  padding: int = 1
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  precision: object = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (self.kernel, self.kernel, x.shape[-1], self.features),
      self.param_dtype,
    )
    bias = None
    if self.use_bias:
      bias = self.param(
        "bias", nn.initializers.zeros, (self.features,), self.param_dtype
      )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_transpose(
      x,
      kernel,
      stride=self.stride,
      padding=self.padding,
      precision=self.precision,
    )
    return y if bias is None else y + bias
