"""Exact convolution forms that XLA:CPU runs fast, and the transform that
substitutes them.

XLA:CPU's stock kernels are slow for the input gradient of a strided
convolution (an ``lhs_dilation`` convolution, which is also what a transposed
convolution is) and for convolutions with tiny outputs. This module holds
exact reformulations of both, with derivatives of every order:

- :func:`strided_conv`: the stock strided convolution whose input gradient is
  a stride-1 convolution followed by depth-to-space; convolution, input
  gradient and kernel gradient are three ``custom_vjp`` maps whose
  derivatives are each other.
- :func:`small_conv`: a convolution of at most a few output positions as one
  matmul of gathered windows.
- :func:`conv_of_constant`, :func:`flatten_dense_of_constant`: the linear
  layers of a per-channel constant image, used by the attention transform.

Precision: every op takes a ``precision`` (as ``lax.conv_general_dilated``
does). ``None`` means the ambient ``jax_default_matmul_precision``, read once,
when the op is traced, and carried explicitly by every convolution and matmul
of the op and of its custom derivatives: derivatives traced later, outside
the caller's precision scope (the backward pass of ``jax.grad``), keep the
precision of the forward pass.

This module imports nothing from :mod:`vae_attn.models`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# At most this many output positions: a convolution is one matmul of patches.
_SMALL_OUTPUT = 16


def _resolve_precision(precision=None):
  """``precision``, or the ambient default matmul precision if ``None``.

  Read when a function is traced, so that the result can be passed
  explicitly to every ``lax`` op (and stored in the static arguments of
  custom derivatives, which may be traced later, outside the caller's
  ``jax.default_matmul_precision`` scope). Hashable.
  """
  if precision is not None:
    return tuple(precision) if isinstance(precision, list) else precision
  return jax.config.jax_default_matmul_precision


def fast_path() -> bool:
  """Whether the XLA:CPU reformulations are used (default backend is CPU)."""
  return jax.default_backend() == "cpu"


# --- Strided convolutions with fast exact derivatives. ---


class _Strided(NamedTuple):
  """Geometry and precision of a 2-D strided NHWC/HWIO convolution (hashable,
  static)."""

  in_hw: tuple[int, int]
  kernel_hw: tuple[int, int]
  stride: int
  padding: tuple[tuple[int, int], tuple[int, int]]
  precision: object = None


def _lax_conv(x, w, geo: _Strided):
  s = geo.stride
  return lax.conv_general_dilated(
    x, w, (s, s), geo.padding, dimension_numbers=NHWC, precision=geo.precision
  )


def _lax_conv_w(x, g, geo: _Strided):
  """The kernel gradient of the stock strided convolution."""
  shape = (*geo.kernel_hw, x.shape[-1], g.shape[-1])
  kernel = jax.ShapeDtypeStruct(shape, x.dtype)
  (w,) = jax.linear_transpose(lambda w: _lax_conv(x, w, geo), kernel)(g)
  return w


def _conv_t_by_depth_to_space(g, w, geo: _Strided):
  """The input gradient of a strided conv: stride-1 conv + depth-to-space.

  Cut the padded input into ``s x s`` blocks; with ``k = s * m``, output
  ``i`` reads blocks ``i .. i + m - 1``. So the gradient of the blocks is a
  stride-1 convolution of ``g`` (padded by ``m - 1``) with the kernel
  flipped and rearranged to ``[m, m, o, s * s * n]``, and depth-to-space
  puts the blocks back.
  """
  s = geo.stride
  (kh, kw), (hh, ww) = geo.kernel_hw, geo.in_hw
  mh, mw = kh // s, kw // s
  n, o = w.shape[2:]
  kernel = w.reshape(mh, s, mw, s, n, o)[::-1, :, ::-1]
  kernel = kernel.transpose(0, 2, 5, 1, 3, 4).reshape(mh, mw, o, s * s * n)
  blocks = lax.conv_general_dilated(
    g,
    kernel,
    (1, 1),
    ((mh - 1, mh - 1), (mw - 1, mw - 1)),
    dimension_numbers=NHWC,
    precision=geo.precision,
  )
  b, bh, bw, _ = blocks.shape
  xp = blocks.reshape(b, bh, bw, s, s, n).transpose(0, 1, 3, 2, 4, 5)
  xp = xp.reshape(b, bh * s, bw * s, n)
  (top, _), (left, _) = geo.padding
  extra_h = max(0, top + hh - bh * s)
  extra_w = max(0, left + ww - bw * s)
  xp = jnp.pad(xp, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
  return xp[:, top : top + hh, left : left + ww]


# The three bilinear maps of T(x, w, g) = <conv(x, w), g>: the convolution,
# its input gradient (the transposed convolution) and its kernel gradient.
# The derivatives of each are the other two, so every order of
# differentiation stays on these exact, fast kernels.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, geo):
  return _lax_conv(x, w, geo)


def _conv_fwd(x, w, geo):
  return _conv(x, w, geo), (x, w)


def _conv_bwd(geo, res, ct):
  x, w = res
  return _conv_t(ct, w, geo), _conv_w(x, ct, geo)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_t(g, w, geo):
  return _conv_t_by_depth_to_space(g, w, geo)


def _conv_t_fwd(g, w, geo):
  return _conv_t(g, w, geo), (g, w)


def _conv_t_bwd(geo, res, ct):
  g, w = res
  return _conv(ct, w, geo), _conv_w(ct, g, geo)


_conv_t.defvjp(_conv_t_fwd, _conv_t_bwd)


def _looped_conv_w(x, g, geo: _Strided):
  """Kernel gradients ``[D, kh, kw, n, o]`` of ``D`` pairs ``x[d], g[d]``.

  Each is the kernel gradient as an NHWC convolution of the transposed
  operands (``x`` as ``[n, H, W, B]``, ``g`` as a ``[h, w, B, o]`` kernel
  dilated by the stride), the operands transposed once for all ``D``.
  """
  s = geo.stride
  (kh, kw), (hh, ww) = geo.kernel_hw, geo.in_hw
  h, w = g.shape[-3:-1]
  (top, _), (left, _) = geo.padding
  pads = (
    (top, kh + s * (h - 1) - hh - top),
    (left, kw + s * (w - 1) - ww - left),
  )
  xt = jnp.swapaxes(x, -4, -1)  # [D, n, H, W, B]
  gt = jnp.moveaxis(g, -4, -2)  # [D, h, w, B, o]
  out = jnp.stack(
    [
      lax.conv_general_dilated(
        xt[d],
        gt[d],
        (1, 1),
        pads,
        rhs_dilation=(s, s),
        dimension_numbers=NHWC,
        precision=geo.precision,
      )
      for d in range(x.shape[0])
    ]
  )  # [D, n, kh, kw, o]
  return jnp.moveaxis(out, 1, 3)


@functools.cache
def _batched_conv_w(geo: _Strided):
  """``_lax_conv_w`` whose vmap is a loop of unbatched kernel gradients.

  Under ``vmap`` with both operands batched (the second derivative of the
  attention's vmapped pullback), the stock batching rule makes the kernel
  gradient a grouped convolution, which XLA:CPU runs slower than an unrolled
  loop of ungrouped ones. With one operand batched, the batch joins the
  other's channels: one ungrouped kernel gradient.
  """

  @jax.custom_batching.custom_vmap
  def conv_w(x, g):
    return _lax_conv_w(x, g, geo)

  @conv_w.def_vmap
  def rule(axis_size, in_batched, x, g):
    kh, kw = geo.kernel_hw
    n, o = x.shape[-1], g.shape[-1]
    if all(in_batched):
      return _looped_conv_w(x, g, geo), True
    if in_batched[1]:  # One x: the D gradients are D * o output channels.
      g = jnp.moveaxis(g, 0, -2).reshape(*g.shape[1:-1], axis_size * o)
      out = _lax_conv_w(x, g, geo).reshape(kh, kw, n, axis_size, o)
      return jnp.moveaxis(out, 3, 0), True
    # One g: the D inputs are D * n input channels.
    x = jnp.moveaxis(x, 0, -2).reshape(*x.shape[1:-1], axis_size * n)
    out = _lax_conv_w(x, g, geo).reshape(kh, kw, axis_size, n, o)
    return jnp.moveaxis(out, 2, 0), True

  return conv_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_w(x, g, geo):
  return _batched_conv_w(geo)(x, g)


def _conv_w_fwd(x, g, geo):
  return _conv_w(x, g, geo), (x, g)


def _conv_w_bwd(geo, res, ct):
  x, g = res
  return _conv_t(g, ct, geo), _conv(x, ct, geo)


_conv_w.defvjp(_conv_w_fwd, _conv_w_bwd)


def _geometry(
  in_hw, kernel_hw, stride, padding, precision=None
) -> _Strided | None:
  """The geometry of a supported strided convolution, or ``None``."""
  kh, kw = kernel_hw
  if stride < 2 or kh % stride or kw % stride:
    return None
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
    return None
  return _Strided(
    tuple(in_hw), (kh, kw), stride, pads, _resolve_precision(precision)
  )


def strided_conv(
  x: jax.Array, kernel: jax.Array, *, stride: int, padding, precision=None
) -> jax.Array:
  """``lax.conv_general_dilated`` (NHWC, HWIO) with fast exact derivatives.

  The value is the stock convolution. Its input gradient is a stride-1
  convolution followed by depth-to-space, its kernel gradient the stock one;
  each has custom derivatives that stay on these three kernels, so first
  and second derivatives avoid the slow XLA:CPU kernels of the transposed
  strided convolution.

  Args:
    x: ``[B, H, W, n]``.
    kernel: ``[kh, kw, n, o]``, ``kh`` and ``kw`` multiples of ``stride``.
    stride: the stride of both spatial axes, at least 2.
    padding: ``((top, bottom), (left, right))``, non-negative.
    precision: as in ``lax.conv_general_dilated``; ``None`` reads the
      ambient default when traced (module docstring). The derivatives keep it.

  Returns:
    ``[B, h, w, o]``.

  Raises:
    ValueError: if the stride does not divide the kernel size or a padding
      is negative.
  """
  geo = _geometry(x.shape[1:3], kernel.shape[:2], stride, padding, precision)
  if geo is None:
    raise ValueError(
      "strided_conv needs a stride >= 2 that divides the kernel size "
      f"{kernel.shape[:2]} and explicit padding, got stride {stride} and "
      f"padding {padding}."
    )
  return _conv(x, kernel, geo)


# --- Convolutions with tiny outputs as one matmul. ---


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
  convolution (the same sums, in another order). Derivatives of every order
  are those of pad, slice and dot.

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
    precision=_resolve_precision(precision),
  )
  return y.reshape(len(x), h, w, kernel.shape[-1])


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
  precision = _resolve_precision(precision)
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
    or dims != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
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
  geo = _geometry(lhs.shape[1:3], rhs.shape[:2], strides[0], padding, precision)
  if geo is not None:
    return _conv(lhs, rhs, geo)
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
  convolution with the flipped kernel (see :func:`strided_conv`), or, for an
  output of at most 16 positions, as :func:`small_conv` of the dilated input.
  """
  precision = _resolve_precision(precision)
  k = kernel.shape[0]
  pad = k - 1 - padding
  out_hw = [(n - 1) * stride - 2 * padding + k for n in x.shape[1:3]]
  small = math.prod(out_hw) <= _SMALL_OUTPUT
  if fast_path() and x.ndim == 4 and pad >= 0 and small:
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
    geo = _geometry(out_hw, kernel.shape[:2], stride, pads, precision)
    if geo is not None:
      return _conv_t(x, kernel[::-1, ::-1].transpose(0, 1, 3, 2), geo)
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=((pad, pad), (pad, pad)),
    lhs_dilation=(stride, stride),
    dimension_numbers=NHWC,
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


# --- Linear layers of a per-channel constant image, not formed. ---


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
  precision = _resolve_precision(precision)
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
  precision = _resolve_precision(precision)
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
