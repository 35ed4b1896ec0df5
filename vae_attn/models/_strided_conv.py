"""Strided 2-D convolutions with fast, exact derivatives (private).

``strided_conv`` is re-exported by :mod:`vae_attn.models.ops`, whose
``conv_general_dilated`` and ``conv_transpose`` take ``conv`` and ``conv_t``
here on XLA:CPU. The value is the stock convolution; its input gradient (the
transposed convolution) is a stride-1 convolution followed by depth-to-space,
which XLA:CPU runs much faster than the stock ``lhs_dilation`` convolution;
each of the three bilinear maps has custom derivatives that stay on these
kernels, to every order.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vae_attn.models import _op_precision

NHWC = ("NHWC", "HWIO", "NHWC")


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
    x,
    w,
    (s, s),
    geo.padding,
    dimension_numbers=NHWC,
    precision=geo.precision,
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
  puts the blocks back. XLA:CPU runs this much faster than the stock
  ``lhs_dilation`` convolution.
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
def conv(x, w, geo):
  return _lax_conv(x, w, geo)


def _conv_fwd(x, w, geo):
  return conv(x, w, geo), (x, w)


def _conv_bwd(geo, res, ct):
  x, w = res
  return conv_t(ct, w, geo), _conv_w(x, ct, geo)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_t(g, w, geo):
  return _conv_t_by_depth_to_space(g, w, geo)


def _conv_t_fwd(g, w, geo):
  return conv_t(g, w, geo), (g, w)


def _conv_t_bwd(geo, res, ct):
  g, w = res
  return conv(ct, w, geo), _conv_w(ct, g, geo)


conv_t.defvjp(_conv_t_fwd, _conv_t_bwd)


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
  attention's vmapped pullback), the stock batching rule turns the kernel
  gradient into a grouped convolution that XLA:CPU runs about 2x slower than
  a loop of ungrouped ones (unrolled: XLA:CPU lays a kernel gradient out for
  its fast convolution only outside loops). With one operand batched, the
  batch joins the other's channels: one ungrouped kernel gradient.
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
  return conv_t(g, ct, geo), conv(x, ct, geo)


_conv_w.defvjp(_conv_w_fwd, _conv_w_bwd)


def geometry(
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
    tuple(in_hw),
    (kh, kw),
    stride,
    pads,
    _op_precision.resolve_precision(precision),
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
  """
  geo = geometry(x.shape[1:3], kernel.shape[:2], stride, padding, precision)
  if geo is None:
    raise ValueError(
      "strided_conv needs a stride >= 2 that divides the kernel size "
      f"{kernel.shape[:2]} and explicit padding, got stride {stride} and "
      f"padding {padding}."
    )
  return conv(x, kernel, geo)
