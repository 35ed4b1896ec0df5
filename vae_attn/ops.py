"""Exact convolution forms that XLA:CPU runs fast, and the transform that
substitutes them for the convolutions of any JAX function.

XLA:CPU's stock kernels are slow for the input gradient of a strided
convolution (an ``lhs_dilation`` convolution, which is also what a transposed
convolution is) and for convolutions with tiny outputs. Models use stock
layers (``nn.Conv``, ``nn.ConvTranspose``, ``nnx.Conv``, ...), and
:func:`fast_convolutions` replaces their convolutions, on XLA:CPU only, by
exact reformulations with derivatives of every order:

- a strided convolution whose stride divides the kernel is the stock
  convolution with custom derivatives: its input gradient is a stride-1
  convolution followed by depth-to-space; convolution, input gradient and
  kernel gradient are three ``custom_vjp`` maps whose derivatives are each
  other, so second derivatives (L_AD) stay on them. A transposed
  convolution is the input gradient of such a convolution.
- a convolution of at most 16 output positions is one matmul of gathered
  windows.

:func:`conv_of_constant` and :func:`flatten_dense_of_constant` are the linear
layers of a per-channel constant image, used by the attention transform.

Precision: each fast form carries the precision of the convolution it
replaces into every convolution and matmul of the form and of its custom
derivatives, so derivatives traced later (the backward pass of
``jax.grad``) keep the forward pass's precision. Timings: ``bench/README.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

NHWC = ("NHWC", "HWIO", "NHWC")
# At most this many output positions: a convolution is one matmul of patches.
_SMALL_OUTPUT = 16


def fast_path() -> bool:
  """Whether the XLA:CPU reformulations are used (default backend is CPU)."""
  return jax.default_backend() == "cpu"


# --- An equation-by-equation interpreter of traced functions. ---

# Call primitives evaluated inline, and primitives whose sub-jaxprs are
# rewritten and bound again (control flow, rematerialisation, nested jit).
_INLINE = frozenset({"closed_call", "core_call"})
_REWRITE = frozenset(
  {"jit", "pjit", "remat2", "checkpoint", "scan", "while", "cond"}
)
_JAXPRS = (jex_core.Jaxpr, jex_core.ClosedJaxpr)
_ARRAYS = (jax.Array, np.ndarray, np.generic)  # The traced leaves.


def _eval_jaxpr(jaxpr, args, rule):
  """The outputs of ``jaxpr`` at ``args``, each equation through ``rule``."""
  env = {}

  def read(atom):
    return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

  # A ClosedJaxpr (jax < 0.12) or a Jaxpr (which carries its consts since
  # jax 0.12; its .jaxpr is itself); an open Jaxpr of jax < 0.12 has none.
  consts = getattr(jaxpr, "consts", ())
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for var, value in zip(jaxpr.constvars, consts, strict=True):
    env[var] = value
  for var, value in zip(jaxpr.invars, args, strict=True):
    env[var] = value
  for eqn in jaxpr.eqns:
    invals = [read(var) for var in eqn.invars]
    with eqn.ctx.manager:
      outvals = rule(eqn, invals)
      if outvals is None:
        outvals = _bind(eqn, invals, rule)
    if not eqn.primitive.multiple_results:
      outvals = [outvals]
    for var, value in zip(eqn.outvars, outvals, strict=True):
      if not isinstance(var, jex_core.DropVar):
        env[var] = value
  return [read(var) for var in jaxpr.outvars]


def _rewrite_jaxpr(jaxpr, rule):
  """``jaxpr`` traced again through ``rule`` (same inputs and outputs)."""
  avals = [
    jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
    for v in getattr(jaxpr, "jaxpr", jaxpr).invars
  ]
  new = jax.make_jaxpr(lambda *args: _eval_jaxpr(jaxpr, args, rule))(*avals)
  if isinstance(jaxpr, type(new)):
    return new
  return jaxpr if new.consts else new.jaxpr  # An open Jaxpr (jax < 0.12).


def _rewrite_param(value, rule):
  """A jaxpr parameter (or a tuple of them, cond's branches) rewritten."""
  if isinstance(value, _JAXPRS):
    return _rewrite_jaxpr(value, rule)
  if isinstance(value, tuple) and value:
    if all(isinstance(j, _JAXPRS) for j in value):
      return tuple(_rewrite_jaxpr(j, rule) for j in value)
  return value


def _bind(eqn, invals, rule):
  """``eqn`` applied to ``invals``, its sub-jaxprs interpreted by ``rule``."""
  name, params = eqn.primitive.name, eqn.params
  if name in _INLINE:
    return _eval_jaxpr(params["call_jaxpr"], invals, rule)
  if name in _REWRITE:
    params = {k: _rewrite_param(v, rule) for k, v in params.items()}
  return eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))


def _interpret(fn: Callable, rule: Callable) -> Callable:
  """``fn`` traced and evaluated equation by equation: ``rule(eqn, invals)``
  returns the equation's outputs computed another way (as ``bind`` would
  return them), or ``None`` to bind it as it is. Sub-jaxprs of ``jit``,
  ``closed_call``, ``checkpoint``, ``scan``, ``while`` and ``cond`` are
  interpreted too (custom-derivative bodies are bound as they are); array
  leaves of the arguments are traced, other leaves passed as static. Works
  under ``jit``, ``vmap`` and ``grad`` of every order, as ``fn`` does."""

  @functools.wraps(fn)
  def interpreted(*args, **kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, _ARRAYS)]

    def flat_fn(*values):
      full = list(leaves)
      for i, value in zip(traced, values, strict=True):
        full[i] = value
      args, kwargs = jax.tree.unflatten(treedef, full)
      return fn(*args, **kwargs)

    values = [leaves[i] for i in traced]
    jaxpr, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*values)
    outs = _eval_jaxpr(jaxpr, values, rule)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return interpreted


# --- Strided convolutions with fast exact derivatives. ---


class _Strided(NamedTuple):
  """Geometry and precision of a strided NHWC/HWIO convolution (static)."""

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
def _bilinear(bwd):
  """Makes ``fn(a, b, geo)`` a ``custom_vjp`` with cotangents ``bwd(geo, a,
  b, ct)``; its forward pass calls the custom map, so that higher orders
  keep these rules."""

  def make(fn):
    f = jax.custom_vjp(fn, nondiff_argnums=(2,))
    f.defvjp(
      lambda a, b, geo: (f(a, b, geo), (a, b)),
      lambda geo, res, ct: bwd(geo, *res, ct),
    )
    return f

  return make


@_bilinear(lambda geo, x, w, ct: (_conv_t(ct, w, geo), _conv_w(x, ct, geo)))
def _conv(x, w, geo):
  return _lax_conv(x, w, geo)


@_bilinear(lambda geo, g, w, ct: (_conv(ct, w, geo), _conv_w(ct, g, geo)))
def _conv_t(g, w, geo):
  return _conv_t_by_depth_to_space(g, w, geo)


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


@_bilinear(lambda geo, x, g, ct: (_conv_t(g, ct, geo), _conv(x, ct, geo)))
def _conv_w(x, g, geo):
  return _batched_conv_w(geo)(x, g)


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
  return _Strided(tuple(in_hw), (kh, kw), stride, pads, precision)


# --- Convolutions with tiny outputs as one matmul. ---


def _small_conv(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: Sequence[int],
  padding,
  precision=None,
) -> jax.Array:
  """A 2-D NHWC/HWIO convolution with a tiny output as one matmul:
  ``x [B, H, W, n]``, ``kernel [kh, kw, n, o]``, non-negative ``padding``
  -> ``[B, h, w, o]``. Each of the ``h * w`` output positions gathers its
  padded input window; ``[B, h * w, kh * kw * n] @ [kh * kw * n, o]`` is
  the convolution (the same sums, in another order)."""
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
    precision=precision,
  )
  return y.reshape(len(x), h, w, kernel.shape[-1])


def _conv_rule(eqn, invals):
  """The fast exact form of a 2-D NHWC convolution equation, or ``None``.

  Forward convolutions: a stride that divides the kernel, the strided
  convolution with custom derivatives; at most 16 output positions,
  :func:`_small_conv`. Transposed ones (``lhs_dilation`` s, stride 1, as JAX
  derives a strided convolution's input gradient): :func:`_small_conv` of
  the dilated input, else the depth-to-space input gradient of the strided
  convolution with the flipped kernel. The kernel may have any layout.
  """
  if eqn.primitive is not lax.conv_general_dilated_p:
    return None
  lhs, rhs = invals
  p = eqn.params
  dims = p["dimension_numbers"]
  if (
    lhs.ndim != 4
    or lhs.dtype != rhs.dtype
    or p["feature_group_count"] != 1
    or p["batch_group_count"] != 1
    or p["preferred_element_type"] not in (None, lhs.dtype)
    or p.get("out_sharding") is not None
    or tuple(p["rhs_dilation"]) != (1, 1)
    or tuple(dims.lhs_spec) != (0, 3, 1, 2)
    or tuple(dims.out_spec) != (0, 3, 1, 2)
  ):
    return None
  out_dim, in_dim, h_dim, w_dim = dims.rhs_spec
  kernel = rhs
  if (h_dim, w_dim, in_dim, out_dim) != (0, 1, 2, 3):
    kernel = jnp.transpose(rhs, (h_dim, w_dim, in_dim, out_dim))
  strides, dilation = tuple(p["window_strides"]), tuple(p["lhs_dilation"])
  padding, precision = tuple(p["padding"]), p["precision"]
  out_hw = eqn.outvars[0].aval.shape[1:3]
  small = math.prod(out_hw) <= _SMALL_OUTPUT
  if dilation == (1, 1):
    geo = None
    if strides[0] == strides[1]:
      geo = _geometry(
        lhs.shape[1:3], kernel.shape[:2], strides[0], padding, precision
      )
    if geo is not None:
      return _conv(lhs, kernel, geo)
    if small and min(min(pair) for pair in padding) >= 0:
      return _small_conv(
        lhs, kernel, strides=strides, padding=padding, precision=precision
      )
    return None
  if strides != (1, 1):
    return None
  if small:
    (top, bottom), (left, right) = padding
    dilated = lax.pad(
      lhs,
      jnp.zeros((), lhs.dtype),
      (
        (0, 0, 0),
        (top, bottom, dilation[0] - 1),
        (left, right, dilation[1] - 1),
        (0, 0, 0),
      ),
    )
    return _small_conv(
      dilated,
      kernel,
      strides=(1, 1),
      padding=((0, 0),) * 2,
      precision=precision,
    )
  kernel_hw = kernel.shape[:2]
  if dilation[0] != dilation[1] or any(
    min(pair) < 0 or max(pair) > k - 1
    for pair, k in zip(padding, kernel_hw, strict=True)
  ):
    return None
  # The strided convolution whose input gradient this is.
  forward = tuple(
    (k - 1 - lo, k - 1 - hi)
    for (lo, hi), k in zip(padding, kernel_hw, strict=True)
  )
  geo = _geometry(out_hw, kernel_hw, dilation[0], forward, precision)
  if geo is None:
    return None
  return _conv_t(lhs, kernel[::-1, ::-1].transpose(0, 1, 3, 2), geo)


def fast_convolutions(fn: Callable) -> Callable:
  """Creates a function that evaluates ``fn`` with fast exact convolutions.

  On XLA:CPU (the default backend is CPU) every 2-D NHWC convolution that
  ``fn`` traces, ``lax.conv_general_dilated`` and what ``nn.Conv``,
  ``nn.ConvTranspose``, ``nnx.Conv``, ``nnx.ConvTranspose`` and
  ``lax.conv_transpose`` lower to, is replaced by an exact fast form: a
  strided convolution whose stride divides the kernel by the stock
  convolution with custom derivatives (its input gradient by depth-to-space:
  a stride-1 convolution and a reshape), a transposed convolution by the
  same depth-to-space form, and a convolution with at most 16 output
  positions by one matmul of gathered windows. Other convolutions, and
  every equation of ``fn`` on other backends, are bound as they are. Values
  and derivatives of every order are those of the stock convolutions up to
  float rounding (the same sums, in another order). Array leaves
  of the arguments are traced, other leaves (numbers, strings, callables)
  passed to ``fn`` unchanged.

  Apply it to the function that is differentiated or vmapped, inside
  ``jax.grad`` and ``jax.vmap``, so that the derivatives are the fast ones
  (applied outside, convolutions that JAX's batching rules have grouped stay
  stock). A trainer wraps its loss (or the model's apply function); the
  result is jitted as usual::

    loss_fn = ops.fast_convolutions(loss_fn)  # (params, batch) -> loss
    grads = jax.grad(loss_fn)(params, batch)

  Args:
    fn: a pure function of pytrees of arrays (and static leaves) that
      returns a pytree of arrays. An ``nnx.Module`` argument is a pytree;
      state that ``fn`` changes in it (BatchNorm statistics in training
      mode, ``nnx.Rngs`` counters) is not written back, as with ``jax.jit``:
      return it.

  Returns:
    A function with the same arguments and outputs as ``fn``. Under
    ``jax.jit`` the substitution happens once, at tracing.

  Raises:
    TypeError: if ``fn`` is not callable.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax import lax
    >>> from vae_attn import ops
    >>> def conv(x, w):
    ...   return lax.conv_general_dilated(
    ...     x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=ops.NHWC)
    >>> x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((4, 4, 3, 5))
    >>> fast = ops.fast_convolutions(conv)
    >>> grad = jax.jit(jax.grad(lambda x: fast(x, w).sum()))
    >>> bool(jnp.allclose(grad(x), jax.grad(lambda x: conv(x, w).sum())(x)))
    True
  """
  if not callable(fn):
    raise TypeError(f"fast_convolutions: fn must be callable, got {fn!r}.")
  interpreted = _interpret(fn, _conv_rule)

  @functools.wraps(fn)
  def fast_fn(*args, **kwargs):
    if not fast_path():
      return fn(*args, **kwargs)
    return interpreted(*args, **kwargs)

  return fast_fn


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

  ``offset [B, n]``, ``kernel [kh, kw, n, o]``, ``input_hw = (H, W)``, the
  convolution's ``strides``, ``padding ((lo, hi), (lo, hi))`` and kernel
  dilation -> ``[B, h, w, o]``; ``precision`` of both contractions, as in
  ``jnp.einsum`` (``None``: the ambient default when traced).
  """
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
  H * W * n]`` followed by a spatial sum. ``offset [B, n]``, ``kernel [H *
  W * n, J]``, ``input_hw = (H, W)`` of the flattened (row-major NHWC)
  image -> ``[B, J]``; ``precision`` as in :func:`conv_of_constant`.
  """
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
