"""The layers an encoder calls, and which one a name means (private).

One abstract pass of the encoder (``jax.eval_shape`` under
``flax.linen.intercept_methods``) records every module's output;
:func:`layer_paths` and :func:`resolve_layers`, re-exported by
:mod:`vae_attn.attention`, read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from vae_attn import _attention_checks as checks

EncodeFn = Callable[..., tuple[jax.Array, jax.Array]]


def module_path(module: nn.Module) -> str:
  """The module's path, e.g. ``"encoder/conv2"``."""
  return "/".join(module.path)


class Traced(NamedTuple):
  """What one abstract pass of ``encode_fn`` shows."""

  outputs: dict[str, jax.ShapeDtypeStruct | None]  # Every module, call order.
  leaves: frozenset[str]  # Modules that call no other module.
  output: Any  # What encode_fn returns, as ShapeDtypeStructs.


def trace(encode_fn, variables, x, *args, **kwargs) -> Traced:
  """Module outputs of ``encode_fn`` (traced with ``jax.eval_shape``)."""
  found = {}
  parents = set()
  stack = []

  def record(next_fun, fargs, fkwargs, context):
    if context.method_name != "__call__":
      return next_fun(*fargs, **fkwargs)
    path = module_path(context.module)
    if stack:
      parents.add(stack[-1])
    found.setdefault(path, None)  # Keep call order: outer before inner.
    stack.append(path)
    try:
      out = next_fun(*fargs, **fkwargs)
    finally:
      stack.pop()
    if isinstance(out, jax.Array) and found[path] is None:
      found[path] = jax.ShapeDtypeStruct(out.shape, out.dtype)
    return out

  def run(variables, x):
    with nn.intercept_methods(record):
      return encode_fn(variables, x, *args, **kwargs)

  output = jax.eval_shape(run, variables, x)
  return Traced(found, frozenset(set(found) - parents), output)


def _targets(traced: Traced) -> dict[str, tuple[int, ...]]:
  """The 4-D module outputs a user targets: a leaf layer (``nn.Conv``,
  ``nn.BatchNorm``) inside a block that is a target itself is left out."""
  feature_maps = {
    p: tuple(s.shape)
    for p, s in traced.outputs.items()
    if p and s is not None and s.ndim == 4
  }
  return {
    p: s
    for p, s in feature_maps.items()
    if not (p in traced.leaves and p.rpartition("/")[0] in feature_maps)
  }


def layer_paths(encode_fn: EncodeFn, variables, x, *args, **kwargs):
  """The layers of ``encode_fn`` that the attention transform can target.

  A target is a module whose output is a feature map ``[B, h, w, n]``, e.g.
  each ``ConvBlock`` (conv, norm, activation) of the paper's models. A bare
  layer inside such a block (``encoder/conv1/conv``, the convolution before
  the block's activation; ``.../bn``) is not listed, as the block's output
  is the attention layer; :func:`vae_attn.attention.attention` still
  accepts its path.

  Args:
    encode_fn: ``(variables, x, *args, **kwargs) -> (mu, logvar)``.
    variables: the model variables (arrays or ``jax.ShapeDtypeStruct``).
    x: images ``[B, H, W, C]`` of the model's input shape.
    *args: further arguments of ``encode_fn``.
    **kwargs: further keyword arguments of ``encode_fn``.

  Returns:
    A dict from layer path (e.g. ``"encoder/conv2"``) to the shape of its
    output ``(B, h, w, n)``, in call order.
  """
  return _targets(trace(encode_fn, variables, x, *args, **kwargs))


def resolve_layers(
  encode_fn: EncodeFn, variables, x, layers: str | Sequence[str]
) -> dict[str, str]:
  """The full path of each requested layer, as the attention transform finds it.

  A layer is named by its full path (``"encoder/conv2"``) or by a unique
  suffix (``"conv2"``, ``"stage2_block1/conv1"``); a suffix matches the
  targets of :func:`layer_paths` first, then any module with an output.

  Args:
    encode_fn: ``(variables, x) -> (mu, logvar)``.
    variables: the model variables (arrays or ``jax.ShapeDtypeStruct``).
    x: images ``[B, H, W, C]`` of the model's input shape.
    layers: one layer name or a sequence of them.

  Returns:
    A dict from each requested name to its full path, in request order.

  Raises:
    TypeError: ``layers`` is not a name or a sequence of names.
    ValueError: a name matches no layer or several (the message lists the
      valid paths with their output shapes).
  """
  return resolve(checks.check_layer(layers), trace(encode_fn, variables, x))


def resolve(layers: Sequence[str], traced: Traced) -> dict[str, str]:
  """Maps each requested layer to a full path (exact or unique suffix)."""
  targets = _targets(traced)
  every = [p for p, s in traced.outputs.items() if p and s is not None]
  resolved = {}
  for layer in layers:
    if layer in every:
      resolved[layer] = layer
      continue
    matches = [p for p in targets if p.endswith("/" + layer)]
    matches = matches or [p for p in every if p.endswith("/" + layer)]
    if len(matches) == 1:
      resolved[layer] = matches[0]
      continue
    listing = "\n  ".join(f"{p}  {s}" for p, s in targets.items())
    what = "is ambiguous" if matches else "is not a conv layer of this encoder"
    raise ValueError(
      f"Layer {layer!r} {what}. Valid layer paths (output shape):\n  {listing}"
    )
  return resolved
