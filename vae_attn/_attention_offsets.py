"""Zero offsets at the target layers, and where they are folded (private).

The attention transform adds a zero offset ``delta`` to each target layer's
output ``A`` through ``flax.linen.intercept_methods`` (no hooks, no stored
tensors, no model edits) and differentiates the code w.r.t. ``delta``:
``d z / d delta = d z / d A``. A per-channel offset feeding a linear layer
is folded into that layer in closed form (:class:`_Offsets`), which is exact
and cheaper to differentiate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

from vae_attn import _attention_layers as layers_lib
from vae_attn.models import ops


class _Offset(NamedTuple):
  """One target layer's output, with and without its offset."""

  perturbed: jax.Array  # A + delta, as returned by the target layer.
  clean: jax.Array  # A.
  delta: jax.Array  # [B, n], the per-channel offset.


def _explicit_padding(padding, in_hw, kernel_hw, strides, dilation):
  """Flax ``nn.Conv`` padding as ``((lo, hi), (lo, hi))``, or ``None``."""
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      return None
    pairs = zip(kernel_hw, dilation, strict=True)
    dilated = [(k - 1) * d + 1 for k, d in pairs]
    return tuple(lax.padtype_to_pads(in_hw, dilated, strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  pads = tuple(padding)
  if len(pads) != 2:
    return None
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in pads)


def _pair(value) -> tuple[int, int]:
  if value is None:
    return (1, 1)
  if isinstance(value, int):
    return (value, value)
  return tuple(value)


def _conv_geometry(module: nn.Conv, x: jax.Array):
  """``(strides, padding, dilation)`` of a foldable ``nn.Conv``, or None."""
  kernel_hw = module.kernel_size
  if (
    isinstance(kernel_hw, int)
    or x.ndim != 4
    or len(kernel_hw) != 2
    or module.feature_group_count != 1
    or module.mask is not None
    or _pair(module.input_dilation) != (1, 1)
  ):
    return None
  strides, dilation = _pair(module.strides), _pair(module.kernel_dilation)
  pads = _explicit_padding(
    module.padding, x.shape[1:3], kernel_hw, strides, dilation
  )
  return None if pads is None else (strides, pads, dilation)


class _Offsets:
  """Folds per-channel offsets into the linear layers that consume them.

  The target layer returns ``A + delta`` with ``delta`` constant over the
  ``h x w`` positions. Where that value is the input of an ``nn.Conv`` or of
  a module with ``flattens_input_into_dense`` (flatten -> Dense), the layer
  is applied to ``A`` and the offset's contribution is added in closed form,
  ``conv(A + delta) = conv(A) + conv_of_constant(delta)`` (exact by
  linearity). The gradient w.r.t. ``delta`` then contracts the layer's
  output cotangents with a small effective kernel, instead of transposing
  the layer for every latent and summing its ``h x w x n`` input gradient.
  Any other use of ``A + delta`` is differentiated as usual, so the result
  is the same either way.
  """

  def __init__(self):
    self._offsets: list[_Offset] = []
    self._heads: list[list] = []  # [offset, flattened input] per open head.

  def add(self, perturbed, clean, delta):
    self._offsets.append(_Offset(perturbed, clean, delta))

  def _consumed(self, fargs):
    if fargs:
      for offset in self._offsets:
        if fargs[0] is offset.perturbed:
          return offset
    return None

  def call(self, next_fun, fargs, fkwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*fargs, **fkwargs)
    offset = self._consumed(fargs)
    geometry = None
    if offset is not None and isinstance(module, nn.Conv):
      geometry = _conv_geometry(module, offset.clean)
    if geometry is not None:
      strides, pads, dilation = geometry
      out = next_fun(offset.clean, *fargs[1:], **fkwargs)
      extra = ops.conv_of_constant(
        offset.delta,
        module.variables["params"]["kernel"],
        offset.clean.shape[1:3],
        strides=strides,
        padding=pads,
        kernel_dilation=dilation,
        precision=module.precision,
      )
      return out + extra.astype(out.dtype)
    if offset is not None and getattr(
      module, "flattens_input_into_dense", False
    ):
      self._heads.append([offset, None])
      try:
        return next_fun(offset.clean, *fargs[1:], **fkwargs)
      finally:
        self._heads.pop()
    if self._heads and isinstance(module, nn.Dense):
      return self._dense(module, next_fun, fargs, fkwargs)
    return next_fun(*fargs, **fkwargs)

  def _dense(self, module, next_fun, fargs, fkwargs):
    head = self._heads[-1]
    if head[1] is None:
      head[1] = fargs[0]  # The flattened input of the first Dense.
    out = next_fun(*fargs, **fkwargs)
    if fargs[0] is not head[1]:
      return out
    offset = head[0]
    kernel = module.variables["params"]["kernel"]
    if kernel.shape[0] != math.prod(offset.clean.shape[1:]):
      path = layers_lib.module_path(module)
      raise ValueError(
        f"{path!r} does not take the flattened output of the "
        "attention layer, as its parent's flattens_input_into_dense = True "
        "promises."
      )
    extra = ops.flatten_dense_of_constant(
      offset.delta,
      kernel,
      offset.clean.shape[1:3],
      precision=module.precision,
    )
    return out + extra.astype(out.dtype)


def _trace_state():
  return jex_core.get_opaque_trace_state(convention="flax")


def zero_offsets(
  outputs: Mapping[str, jax.ShapeDtypeStruct],
  paths: Iterable[str],
  *,
  per_element: bool,
) -> dict[str, jax.Array]:
  """A zero offset of each target layer's output ``[B, h, w, n]``.

  One value per channel, ``[B, 1, 1, n]`` (broadcast over ``h x w``; its
  gradient is the spatial sum of the layer's gradient), or, if
  ``per_element``, the whole ``[B, h, w, n]`` (RMS scaling needs the full
  gradient).
  """
  deltas = {}
  for p in paths:
    s = outputs[p]
    shape = s.shape if per_element else (s.shape[0], 1, 1, s.shape[3])
    deltas[p] = jnp.zeros(shape, s.dtype)
  return deltas


def perturbed_code_fn(
  encode_fn, variables, x, args, kwargs, *, code_fn, offsets_folded
):
  """``deltas -> (z, (mu, logvar, activations))`` with the offsets added.

  Args:
    encode_fn: ``(variables, x, *args, **kwargs) -> (mu, logvar)``.
    variables: the model variables.
    x: images ``[B, H, W, C]``.
    args: further positional arguments of ``encode_fn``.
    kwargs: further keyword arguments of ``encode_fn``.
    code_fn: ``(mu, logvar) -> z``, the code that is differentiated.
    offsets_folded: fold per-channel offsets into the linear layers that
      consume them (:class:`_Offsets`); ``False`` for per-element offsets.

  Returns:
    A function of ``deltas`` (a dict from layer path to its offset, as
    :func:`zero_offsets` makes them) that runs the encoder with
    ``A + delta`` at each target layer and returns ``(z, (mu, logvar,
    activations))``, ``activations`` the dict of the layers' ``A``.
  """

  def perturbed_code(deltas):
    captured = {}
    offsets = _Offsets()
    base = _trace_state()

    def perturb(next_fun, fargs, fkwargs, context):
      out = offsets.call(next_fun, fargs, fkwargs, context)
      path = layers_lib.module_path(context.module)
      if context.method_name != "__call__" or path not in deltas:
        return out
      if _trace_state() != base:
        raise ValueError(
          f"Layer {path!r} runs inside a JAX transform that the encoder "
          "applies itself (a lifted Flax transform such as nn.remat, "
          "nn.scan, nn.vmap or nn.jit, or jax.checkpoint), whose "
          "intermediate values cannot be read from outside it. Target a "
          "layer outside that transform, or build the model without it for "
          "the attention maps (nn.remat changes memory use, not values)."
        )
      if path in captured:
        raise ValueError(
          f"Layer {path!r} is called more than once per forward pass; "
          "its attention is ambiguous. Pick a layer called once."
        )
      captured[path] = out
      perturbed = out + deltas[path]
      if offsets_folded:
        offsets.add(perturbed, out, deltas[path][:, 0, 0, :])
      return perturbed

    with nn.intercept_methods(perturb):
      mu, logvar = encode_fn(variables, x, *args, **kwargs)
    z = code_fn(mu, logvar)
    return z, (mu, logvar, captured)

  return perturbed_code
