"""Per-latent gradient attention of any JAX encoder, as a JAX transform.

``attention(encode_fn, layer)`` creates a function that evaluates, for every
latent element ``z_i`` of the code, the Grad-CAM map of ``z_i`` at the
feature map ``A`` (``[B, h, w, n]``) named ``layer`` (paper eq. 3-4,
docs/paper.md#per-latent-attention):

    g_i  = d z_i / d A                        (h x w x n)
    a_ik = mean over the h x w positions of g_i[..., k]
    M_i  = ReLU(sum_k a_ik A[..., k])         (h x w)
    M    = (1 / D) sum_i M_i

``layer`` names a value inside the encoder: a Flax Linen module path
(``"encoder/conv2"``; a unique suffix such as ``"conv2"`` works), an NNX
submodule's attribute path (``"stage/conv"`` or ``"stage.conv"``;
``encode_fn(model, x)`` takes the model first), or, in any JAX function
(plain JAX, Equinox, Haiku, a function activation), a value named with JAX's
``jax.ad_checkpoint.checkpoint_name(a, "name")``.

Feature maps are NHWC: a channels-first model (Equinox, code ported from
PyTorch) names a transposed view, ``jnp.moveaxis(a, -3, -1)``, else its W
axis is taken for channels. One mechanism serves all three forms (named
values in a jaxpr, a zero offset at each, one ``jax.vjp``, the pullback
vmapped over the ``D`` latents; docs/attention.md#mechanism). An image with
a NaN or infinite pixel gives NaN maps for that example only (the loaders
and command lines refuse such images). It composes with ``jax.jit``,
``jax.vmap`` and ``jax.grad`` (second order, for the L_AD loss of eq. 6).

After the activation (docs/attention.md#maps-after-the-activation): when
the target flows into a chain of elementwise steps whose other operands do
not depend on the images (a bias, BatchNorm in evaluation mode) and that
holds a nonlinearity (relu, elu, gelu, tanh...), the map is taken at the
chain's last nonlinear step, the paper's post-activation ``A``: the
``nn.Conv`` of ``nn.relu(nn.Conv(...)(x))`` or of conv -> BatchNorm -> relu
gives the stage's map. The chain is followed out of ``nn.remat`` and
``nn.jit`` bodies and through casts. Other targets, and all with
``after_activation=False``, are taken as named.

BatchNorm in training mode (batch statistics make an example's map depend on
the batch) and Dropout that drops units are refused when the encoder calls
them (Linen and NNX).

The official code's map (liuem607/expVAE ``code/gradcam.py``): one map per
image of ``d sum(mu) / dA`` over the batch, the gradient divided by one root
mean square over the batch (``+ 1e-5``), pooled into weights of the conv
output before its ReLU, the signed map upsampled, then its absolute value.
These options compute it exactly (``tests/test_attention_models.py``)::

  fn = attention(encode, conv_layer, sum_latents=True,
                 gradient_scale="batch_rms", positive=None,
                 after_activation=False)
  official = jnp.abs(upsample(fn(variables, x).mean, x.shape[1:3]))

Precision: ``"highest"`` (full float32) by default; see docs/attention.md.

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, https://arxiv.org/abs/1911.07389 (eq. 3-5).
  Selvaraju et al., "Grad-CAM", ICCV 2017, https://arxiv.org/abs/1610.02391.
  Official code: https://github.com/liuem607/expVAE (code/gradcam.py).
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jcore

from vae_attn import ops

EncodeFn = Callable[..., tuple[jax.Array, jax.Array]]
Precision = str | lax.Precision | None

CODES = ("mu", "sample", "difference")
POSITIVES = ("relu", "abs")  # And None: signed maps.
GRADIENT_SCALES = (None, "rms", "batch_rms")
PRECISIONS = ("highest", "high", "default")

_CPU_CHUNK_ROWS = 256  # Rows (latents x examples) per pullback chunk on CPU.


class AttentionMaps(NamedTuple):
  """Attention maps of one layer: ``per_latent`` ``[B, D, h, w]``, the map
  ``M_i`` of every latent element (``[B, K, h, w]`` with ``latents``, ``[B,
  1, h, w]`` with ``sum_latents``), and ``mean`` ``[B, h, w]`` (eq. 4)."""

  per_latent: jax.Array
  mean: jax.Array


# Precision and codes.
# ----------------------------------------------------------------------------


def _precision_name(precision: Precision) -> str | None:
  if precision is None:
    return None
  if isinstance(precision, lax.Precision):
    return precision.name.lower()
  if isinstance(precision, str) and precision.lower() in PRECISIONS:
    return precision.lower()
  raise ValueError(
    f"Unknown precision {precision!r}; choose one of {PRECISIONS}, a "
    "jax.lax.Precision, or None (the caller's jax_default_matmul_precision)."
  )


def matmul_precision(precision: Precision = "highest"):
  """A context manager: JAX code traced inside uses ``precision``.

  ``jax.default_matmul_precision`` under this module's names: every dot and
  convolution traced inside the block without its own precision gets it
  (read at tracing: wrap the code that traces). Nothing global changes.

  ``precision``: ``"highest"`` (full float32 on every backend), ``"high"``,
  ``"default"`` (the backend's fastest: TF32 on recent NVIDIA GPUs,
  bfloat16 passes on TPU), a ``jax.lax.Precision``, or ``None`` (a no-op);
  another value raises ``ValueError``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from vae_attn import attention
    >>> with attention.matmul_precision("highest"):
    ...   text = jax.jit(jnp.dot).lower(jnp.ones(3), jnp.ones(3)).as_text()
    >>> "HIGHEST" in text
    True
  """
  name = _precision_name(precision)
  if name is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name)


def difference_code(
  mu: jax.Array, logvar: jax.Array, stats: Any, eps: jax.Array
) -> jax.Array:
  """A reparameterised sample of the normal difference distribution (eq. 5).

  ``u = (mu^x - mu^y) + sqrt(var^x + exp(logvar^y)) * eps``, differentiable
  in the test image's posterior: ``mu``, ``logvar``, ``eps`` ``[B, D]``;
  ``stats`` has the normal data's ``mean`` and ``var`` ``[D]`` (e.g.
  :class:`vae_attn.anomaly.LatentStats`). Returns ``u`` ``[B, D]``.
  """
  return (stats.mean - mu) + jnp.sqrt(stats.var + jnp.exp(logvar)) * eps


def _code(code: str, mu, logvar, key, stats) -> jax.Array:
  if code == "mu":
    return mu
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  if code == "sample":
    return mu + jnp.exp(0.5 * logvar) * eps
  return difference_code(mu, logvar, stats, eps)


# Tracing the encoder with its layers named.
# ----------------------------------------------------------------------------


def _training_mode(module, flag: str, args, kwargs) -> bool:
  """Whether a BatchNorm (``flag="use_running_average"``) or Dropout
  (``"deterministic"``) call computes with batch statistics or drops units:
  the call's argument (second positional or keyword), else the attribute."""
  value = kwargs.get(flag, args[1] if len(args) > 1 else None)
  value = getattr(module, flag) if value is None else value
  if flag == "deterministic" and not getattr(module, "rate", 1.0):
    return False
  return value is not None and not value


def _check_mode(module, path: str, args, kwargs) -> None:
  """Refuses BatchNorm or Dropout in training mode (Linen or NNX)."""
  flag = (
    "use_running_average"
    if isinstance(module, (nn.BatchNorm, nnx.BatchNorm))
    else "deterministic"
    if isinstance(module, (nn.Dropout, nnx.Dropout))
    else None
  )
  if flag and _training_mode(module, flag, args, kwargs):
    raise ValueError(_training_mode_error(f"{type(module).__name__} {path!r}"))


def _name_linen_output(next_fun, args, kwargs, context):
  """``nn.intercept_methods`` interceptor: names each module's output."""
  path = "/".join(context.module.path)
  if context.method_name == "__call__":
    _check_mode(context.module, path, args, kwargs)
  out = next_fun(*args, **kwargs)
  if context.method_name == "__call__" and path and isinstance(out, jax.Array):
    return checkpoint_name(out, path)
  return out


def _name_nnx_outputs(model: nnx.Module) -> None:
  """Names each submodule's output on ``model``, a merged copy: its
  submodules get subclasses whose ``__call__`` names the output."""
  for path, node in list(nnx.iter_graph(model)):
    if path and isinstance(node, nnx.Module):
      cls, name = type(node), "/".join(map(str, path))

      def call(self, *args, _cls=cls, _name=name, **kwargs):
        _check_mode(self, _name, args, kwargs)
        out = _cls.__call__(self, *args, **kwargs)
        return (
          checkpoint_name(out, _name) if isinstance(out, jax.Array) else out
        )

      node.__class__ = type(cls.__name__, (cls,), {"__call__": call})


class _Traced(NamedTuple):
  """The encoder as a jaxpr of flat inputs, and how to call it."""

  jaxpr: jcore.ClosedJaxpr
  inputs: list  # The dynamic leaves of (first, x, args, kwargs).
  is_data: list[bool]  # Whether each input depends on the images.
  out_tree: Any


_ARRAYS = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


def _trace(encode_fn, first, x, args, kwargs) -> _Traced:
  """Traces ``encode_fn(first, x, *args, **kwargs)`` with its layers named."""
  if isinstance(first, nnx.Module):
    graphdef, first = nnx.split(first)

    def call(state, *rest, **kw):
      model = nnx.merge(graphdef, state)
      _name_nnx_outputs(model)
      return encode_fn(model, *rest, **kw)
  else:
    call = encode_fn
  leaves, tree = jax.tree.flatten((first, x, args, kwargs))
  dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, _ARRAYS)]
  num_first = len(jax.tree.leaves(first))
  out_tree = []

  def flat_fn(*values):
    full = list(leaves)
    for i, v in zip(dynamic, values, strict=True):
      full[i] = v
    f, xx, a, kw = jax.tree.unflatten(tree, full)
    with nn.intercept_methods(_name_linen_output):
      out = call(f, xx, *a, **kw)
    flat, treedef = jax.tree.flatten(out)
    out_tree.append(treedef)
    return flat

  inputs = [leaves[i] for i in dynamic]
  closed = jax.make_jaxpr(flat_fn)(*inputs)
  is_data = [i >= num_first for i in dynamic]
  return _Traced(closed, inputs, is_data, out_tree[0])


# Where the named values are.
# ----------------------------------------------------------------------------

# Call primitives whose body a target may sit in: it is inlined.
_CALLS = {
  "jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint",
  "custom_jvp_call", "custom_vjp_call",
}  # fmt: skip
_ELEMENTWISE = {
  "abs", "add", "add_any", "and", "atan2", "cbrt", "clamp", "copy", "cos",
  "convert_element_type", "copy_p", "div", "eq", "erf", "erfc", "exp", "exp2",
  "expm1", "ge", "gt", "integer_pow", "is_finite", "le", "log", "log1p",
  "logistic", "lt", "max", "min", "mul", "name", "ne", "neg", "not", "or",
  "pow", "reduce_precision", "rsqrt", "select_n", "sign", "sin", "sqrt",
  "square", "sub", "tanh", "tan", "sinh", "cosh", "asin", "acos", "atan",
  "asinh", "acosh", "atanh", "floor", "ceil", "round", "rem", "erf_inv",
  "lgamma", "digamma",
}  # fmt: skip
_AFFINE = {"add", "add_any", "sub", "neg", "mul", "div", "name", "copy"}
_AFFINE |= {"convert_element_type", "copy_p", "broadcast_in_dim", "iota"}


def _body(eqn, closed=False):
  """The ``Jaxpr`` of a call equation (``jit``, ``remat``...), else ``None``;
  ``closed``: as the equation holds it (a ``ClosedJaxpr`` or a ``Jaxpr``)."""
  if eqn.primitive.name not in _CALLS:
    return None
  body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  return body if closed else _open(body)


def _open(jaxpr) -> jcore.Jaxpr:
  """The ``Jaxpr`` of a ``ClosedJaxpr`` (or of a ``Jaxpr``: itself)."""
  return getattr(jaxpr, "jaxpr", jaxpr)


class _Scope(NamedTuple):
  jaxpr: jcore.Jaxpr
  data: frozenset  # Variables that depend on the images.


class _Site(NamedTuple):  # A named value: where it is, and its shape.
  scope: tuple[int, ...]  # Equation indices from the top jaxpr down.
  index: int  # Of the equation that names it.
  aval: Any


def _scan(jaxpr, is_data, path, scopes, sites) -> None:
  """Fills ``scopes`` (path -> _Scope) and ``sites`` (name -> [_Site])."""
  data = {v for v, d in zip(jaxpr.invars, is_data, strict=True) if d}
  for i, eqn in enumerate(jaxpr.eqns):
    ins = [isinstance(v, jcore.Var) and v in data for v in eqn.invars]
    if any(ins):
      data.update(eqn.outvars)
    body = _body(eqn)
    if body is not None and len(body.invars) == len(ins):
      _scan(body, ins, (*path, i), scopes, sites)
    if eqn.primitive.name == "name":
      site = _Site(path, i, eqn.outvars[0].aval)
      sites.setdefault(eqn.params["name"], []).append(site)
  scopes[path] = _Scope(jaxpr, frozenset(data))


def _sites(traced: _Traced):  # (scopes, sites) of the whole encoder.
  scopes, sites = {}, {}
  _scan(traced.jaxpr.jaxpr, traced.is_data, (), scopes, sites)
  if not sites:
    raise ValueError(
      "encode_fn names no value. The transform needs a Flax Linen module "
      "called by encode_fn, an nnx.Module as its first argument (not merged "
      'inside it), or a value named with checkpoint_name(a, "name").'
    )
  return scopes, sites


def _feature_maps(sites) -> dict[str, tuple[int, ...]]:
  """Named ``[B, h, w, n]`` values called once: a layer inside a block that
  is one itself and that names nothing inside (``conv2/conv``) is left out;
  ordered by call (a block before its layers)."""
  maps = {
    name: tuple(s[0].aval.shape)
    for name, s in sites.items()
    if len(s) == 1 and s[0].aval.ndim == 4
  }

  def order(name):
    inner = [n for n in sites if n == name or n.startswith(name + "/")]
    first = min((*sites[n][0].scope, sites[n][0].index) for n in inner)
    return first, name.count("/")

  def leaf_in_block(name):
    leaf = not any(n.startswith(name + "/") for n in sites)
    return leaf and name.rpartition("/")[0] in maps

  return {n: maps[n] for n in sorted(maps, key=order) if not leaf_in_block(n)}


def _resolve(layers: Sequence[str], sites) -> dict[str, str]:
  """Maps each requested layer to its full name (exact or unique suffix)."""
  targets = _feature_maps(sites)
  resolved = {}
  for layer in layers:
    # A name as given, else NNX's model.a.b written a/b.
    path = layer if layer in sites else layer.replace(".", "/")
    if path in sites:
      resolved[layer] = path
      continue
    matches = [p for p in targets if p.endswith("/" + path)]
    matches = matches or [p for p in sites if p.endswith("/" + path)]
    if len(matches) == 1:
      resolved[layer] = matches[0]
      continue
    close = difflib.get_close_matches  # On the path or its last name.
    shown = targets or {p: s[0].aval.shape for p, s in sites.items()}
    near = matches or [q for q in shown if close(path, [q, q.split("/")[-1]])]
    what = f"matches {len(matches)} layers" if matches else "matches no layer"
    listing = "\n  ".join(f"{p}  {s}" for p, s in shown.items())
    guess = f"; did you mean {', '.join(map(repr, near))}?" if near else "."
    raise ValueError(
      f"{layer!r} {what}{guess} Layer paths (output shape):\n  {listing}"
    )
  for layer, name in resolved.items():
    found = sites[name]
    if len(found) > 1:
      raise ValueError(
        f"Layer {name!r} is called {len(found)} times per forward pass; its "
        "attention is ambiguous. Pick a layer called once."
      )
    if found[0].aval.ndim != 4:
      raise ValueError(
        f"Layer {layer!r} has output shape {found[0].aval.shape}; attention "
        "needs a feature map [B, h, w, n]."
      )
  return resolved


def _elementwise(eqn, shape, inside) -> bool:
  """Whether ``eqn`` maps its ``inside`` inputs elementwise to ``shape``."""
  if any(tuple(v.aval.shape) != shape for v in eqn.outvars):
    return False
  body = _body(eqn)
  if body is None:
    return eqn.primitive.name in _ELEMENTWISE
  region = {v for v, i in zip(body.invars, inside, strict=True) if i}
  for e in body.eqns:
    ins = [isinstance(v, jcore.Var) and v in region for v in e.invars]
    if any(ins):  # Equations of constants only (broadcasts) do not count.
      if not _elementwise(e, shape, ins):
        return False
      region.update(e.outvars)
  return True


def _nonlinear(eqn, region) -> bool:
  body = _body(eqn)
  if body is not None:
    return any(_nonlinear(e, set(body.invars)) for e in body.eqns)
  inside = sum(isinstance(v, jcore.Var) and v in region for v in eqn.invars)
  if eqn.primitive.name in ("mul", "div"):
    return inside > 1
  return eqn.primitive.name not in _AFFINE


def _target(scopes, site: _Site) -> tuple[tuple[int, ...], int]:
  """``(scope, equation)`` whose output is the map's ``A`` (module
  docstring): the end of the activation chain the named value flows into,
  followed out of the call bodies (``nn.remat``, ``nn.jit``) that return it;
  else the naming equation."""
  path, index = site.scope, site.index
  var = scopes[path].jaxpr.eqns[index].outvars[0]
  found = None
  while True:
    chain = _chain(scopes[path], index, var)
    if chain is None:
      break
    end, exit_var, nonlinear = chain
    found = (path, end) if nonlinear else found
    jaxpr = scopes[path].jaxpr
    outs = [k for k, v in enumerate(jaxpr.outvars) if v is exit_var]
    if not path or len(outs) != 1:
      break
    if any(v is exit_var for e in jaxpr.eqns for v in e.invars):
      break  # Returned, and used beside it inside the body.
    path, index = path[:-1], path[-1]
    var = scopes[path].jaxpr.eqns[index].outvars[outs[0]]
  return found or (site.scope, site.index)


def _chain(scope: _Scope, index: int, var):
  """The elementwise chain ``var`` (the output of equation ``index``) flows
  into: ``(end, exit, nonlinear)``: the equation whose output is ``A`` (the
  chain's single exit, less trailing affine steps of one value: a BatchNorm
  in evaluation mode after the activation), the exit variable, and whether
  a step up to ``end`` is nonlinear; ``None`` if the chain leaves by several
  values."""
  eqns = scope.jaxpr.eqns
  shape = tuple(var.aval.shape)
  region, members, nonlinear = {var}, [], {}
  for j in range(index + 1, len(eqns)):
    eqn = eqns[j]
    ins = [isinstance(v, jcore.Var) and v in region for v in eqn.invars]
    if not any(ins):
      continue
    others = [
      v
      for v, i in zip(eqn.invars, ins, strict=True)
      if isinstance(v, jcore.Var) and not i
    ]
    if not _elementwise(eqn, shape, ins) or any(
      v in scope.data for v in others
    ):
      break
    region.update(eqn.outvars)
    members.append(j)
    nonlinear[j] = _nonlinear(eqn, region)
  inside = set(members)
  uses = [
    v
    for j, e in enumerate(eqns)
    if j > index and j not in inside
    for v in e.invars
    if isinstance(v, jcore.Var) and v in region
  ]
  uses += [v for v in scope.jaxpr.outvars if any(v is r for r in region)]
  if len(set(uses)) != 1:
    return None
  (exit_var,) = set(uses)
  producer = {eqns[j].outvars[0]: j for j in members}
  end = producer.get(exit_var, index)
  while end != index and not nonlinear[end]:  # Trailing affine steps.
    inner = [
      v
      for v in eqns[end].invars
      if isinstance(v, jcore.Var) and (v in producer or v is var)
    ]
    once = len(inner) == 1 and (
      sum(v is inner[0] for e in eqns for v in e.invars)
      + sum(v is inner[0] for v in scope.jaxpr.outvars)
      == 1
    )
    if not once:
      break
    end = producer.get(inner[0], index)
  return end, exit_var, any(nonlinear[j] for j in members if j <= end)


# The encoder with offsets: an equation-by-equation interpreter.
# ----------------------------------------------------------------------------


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*invals, **params)
  return out if eqn.primitive.multiple_results else [out]


def _foldable(p) -> bool:  # An NHWC/HWIO convolution of the whole input.
  dims = p["dimension_numbers"]
  specs = tuple(map(tuple, (dims.lhs_spec, dims.rhs_spec, dims.out_spec)))
  nhwc = specs == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  groups = (p["feature_group_count"], p["batch_group_count"]) == (1, 1)
  plain = set(p["lhs_dilation"]) == {1} and not p["preferred_element_type"]
  return nhwc and groups and plain


class _Offset(NamedTuple):
  """A value that is ``clean + delta``, delta constant over ``h x w``."""

  clean: jax.Array  # [B, h, w, n], or [B, h * w * n] once flattened.
  delta: jax.Array  # [B, n].
  hw: tuple[int, int]


def _apply(eqn, invals, offsets):
  """The equation's outputs, folding a per-channel offset where it can."""
  v0 = eqn.invars[0] if eqn.invars else None
  off = offsets.get(v0) if isinstance(v0, jcore.Var) else None
  if off is None:
    return _bind(eqn, invals), None
  name = eqn.primitive.name
  conv = eqn.params if name == "conv_general_dilated" else None
  if conv is not None and off.clean.ndim == 4 and _foldable(conv):
    out = _bind(eqn, [off.clean, *invals[1:]])[0]
    extra = ops.conv_of_constant(
      off.delta,
      invals[1],
      off.hw,
      strides=conv["window_strides"],
      padding=conv["padding"],
      kernel_dilation=conv["rhs_dilation"],
      precision=conv["precision"],
    )
    return [out + extra.astype(out.dtype)], None
  if name == "name":
    return invals, off
  if name == "reshape" and off.clean.ndim == 4:
    b = off.clean.shape[0]
    if tuple(eqn.params["new_sizes"]) == (b, off.clean[0].size) and (
      eqn.params["dimensions"] is None
    ):
      flat = off.clean.reshape(b, -1)
      return _bind(eqn, invals), _Offset(flat, off.delta, off.hw)
  if name == "dot_general" and off.clean.ndim == 2 and invals[1].ndim == 2:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if tuple(lc) == (1,) and tuple(rc) == (0,) and not lb and not rb:
      out = _bind(eqn, [off.clean, invals[1]])[0]
      extra = ops.flatten_dense_of_constant(
        off.delta, invals[1], off.hw, precision=eqn.params["precision"]
      )
      return [out + extra.astype(out.dtype)], None
  return _bind(eqn, invals), None


def _evaluate(jaxpr, args, targets, deltas, folded, path=()):
  """``(outputs, captured)`` of ``jaxpr`` with ``deltas[name]`` (``[B, 1, 1,
  n]`` if ``folded``, else ``[B, h, w, n]``) added to the output of each
  equation ``targets`` lists (``(scope path, index) -> [names]``);
  ``captured`` maps each name to its ``A``."""
  env, offsets, captured = {}, {}, {}
  inline = {
    t[0][len(path)]
    for t in targets
    if len(t[0]) > len(path) and t[0][: len(path)] == path
  }

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  # A ClosedJaxpr, or a Jaxpr: it carries its consts since jax 0.12.
  consts, jaxpr = getattr(jaxpr, "consts", ()), _open(jaxpr)
  for v, value in zip(jaxpr.constvars, consts, strict=True):
    env[v] = value
  for v, value in zip(jaxpr.invars, args, strict=True):
    env[v] = value
  for i, eqn in enumerate(jaxpr.eqns):
    invals = [read(v) for v in eqn.invars]
    off = None
    if i in inline:
      path_i = (*path, i)
      outs, inner = _evaluate(
        _body(eqn, closed=True), invals, targets, deltas, folded, path_i
      )
      captured.update(inner)
    else:
      outs, off = _apply(eqn, invals, offsets)
    for v, value in zip(eqn.outvars, outs, strict=True):
      env[v] = value
    if off is not None:
      offsets[eqn.outvars[0]] = off
    for name in targets.get((path, i), ()):
      var = eqn.outvars[0]
      clean = env[var]
      captured[name] = clean
      env[var] = clean + deltas[name]
      if folded:
        prev = offsets.get(var)
        delta = deltas[name][:, 0, 0, :]
        if prev is not None:
          clean, delta = prev.clean, prev.delta + delta
        offsets[var] = _Offset(clean, delta, tuple(clean.shape[1:3]))
  return [read(v) for v in jaxpr.outvars], captured


# Checks of the transform's options and of one call's arguments.
# ----------------------------------------------------------------------------


def _check_layer(layer) -> tuple[str, ...]:
  layers = (layer,) if isinstance(layer, str) else layer
  if isinstance(layers, Sequence) and layers:
    layers = tuple(layers)
    if all(isinstance(name, str) and name for name in layers):
      return layers
  raise TypeError(
    f"layer must be a layer path such as 'encoder/conv2' (a unique suffix "
    f"such as 'conv2' works too) or a list of them, got {layer!r}. "
    "attention.layer_paths(encode_fn, variables, x) lists the layers."
  )


def _check_options(encode_fn, layer, chunk_size, precision, **options):
  """The requested layers, once the transform's options are checked."""
  if not callable(encode_fn):
    raise TypeError(f"encode_fn must be callable, got {encode_fn!r}.")
  choices = dict(code=CODES, positive=(*POSITIVES, None))
  choices.update(gradient_scale=GRADIENT_SCALES, sum_latents=(False, True))
  for name, allowed in {**choices, "after_activation": (True, False)}.items():
    if options[name] not in allowed:
      raise ValueError(
        f"Unknown {name} {options[name]!r}; choose one of {allowed}."
      )
  if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
  _precision_name(precision)
  return _check_layer(layer)


def _check_images(x) -> None:
  if getattr(x, "ndim", None) != 4:
    raise ValueError(
      "attention expects an array of NHWC images [B, H, W, C], got "
      f"{getattr(x, 'shape', type(x).__name__)}; add a batch axis with "
      "x[None], or make an array with jnp.asarray."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"attention needs floating-point images (it differentiates the "
      f"encoder), got dtype {x.dtype}; convert them first, e.g. "
      "x.astype(jnp.float32) / 255 for 8-bit images in [0, 255]."
    )
  if x.shape[0] == 0:
    raise ValueError(
      f"attention got an empty batch (x of shape {tuple(x.shape)}); pass "
      "at least one image."
    )


def _check_code_args(code, key, stats, latents, sum_latents) -> None:
  if code != "mu" and key is None:
    raise ValueError(f'code="{code}" samples noise: pass key=...')
  if code == "difference" and stats is None:
    raise ValueError(
      'code="difference" needs the latent statistics of the normal data: '
      "pass stats=vae_attn.anomaly.latent_statistics(...)."
    )
  if code != "difference" and stats is not None:
    raise ValueError(
      f'stats= is used only by code="difference" (eq. 5), and this '
      f'transform differentiates code="{code}"; drop stats= or build the '
      'transform with code="difference".'
    )
  if sum_latents and latents is not None:
    raise ValueError(
      "latents= selects per-latent maps, and this transform differentiates "
      "the sum of all latents (sum_latents=True); drop one of them."
    )


_Stats = collections.namedtuple("_Stats", "mean var")  # Checked, [D] each.


def _check_stats(stats, d: int) -> _Stats:
  """``LatentStats`` or its dict, checked; a traced negative variance
  becomes NaN, so every map it touches is NaN, never plausible and wrong."""
  if isinstance(stats, Mapping):
    if not {"mean", "var"} <= set(stats):
      raise TypeError(
        "stats as a dict needs the entries 'mean' and 'var' (as "
        f"LatentStats._asdict() saves them), got keys {sorted(stats)}."
      )
    mean, var = stats["mean"], stats["var"]
  elif hasattr(stats, "mean") and not callable(stats.mean):
    mean, var = stats.mean, stats.var
  else:
    raise TypeError(
      "stats must be vae_attn.anomaly.LatentStats (attributes mean and var, "
      "[D] each) or a dict with 'mean' and 'var' entries, got "
      f"{type(stats).__name__}."
    )
  mean, var = jnp.asarray(mean), jnp.asarray(var)
  for name, value in (("mean", mean), ("var", var)):
    if value.shape != (d,):
      raise ValueError(
        f"stats.{name} has shape {value.shape}, but the encoder's code has "
        f"D={d} elements: pass the statistics of this model "
        "(vae_attn.anomaly.latent_statistics with its encoder)."
      )
  if isinstance(mean, jax.core.Tracer) or isinstance(var, jax.core.Tracer):
    return _Stats(mean, jnp.where(var >= 0, var, jnp.nan))
  mean_np, var_np = np.asarray(mean), np.asarray(var)
  if not (np.isfinite(mean_np).all() and np.isfinite(var_np).all()):
    raise ValueError(
      "stats holds NaN or infinite values; recompute them with "
      "vae_attn.anomaly.latent_statistics on finite normal data."
    )
  if (var_np < 0).any():
    raise ValueError(
      f"stats.var must be non-negative (a variance), got minimum "
      f"{var_np.min():.3g}; recompute it with "
      "vae_attn.anomaly.latent_statistics."
    )
  return _Stats(mean, var)


def _check_latents(latents, b: int, d: int) -> jax.Array:
  """Integer indices ``[B, K]``; concrete ones must lie in ``[0, D)``
  (traced ones cannot be inspected: their maps are NaN, see
  :func:`_cotangents`)."""
  try:
    if isinstance(latents, (list, tuple)):
      latents = np.asarray(latents)
  except ValueError as e:
    raise ValueError(f"latents must be integers [B, K], not ragged: {e}") from e
  dtype = getattr(latents, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"latents must be integer indices [B, K] in [0, D), got "
      f"{dtype or type(latents).__name__}; e.g. jnp.array([[0, 3], [1, 2]])."
    )
  if latents.ndim != 2 or latents.shape[0] != b or latents.shape[1] == 0:
    raise ValueError(
      f"latents must be integer indices [B, K] with B={b} and K >= 1, got "
      f"shape {latents.shape}."
    )
  if not isinstance(latents, jax.core.Tracer):
    values = np.asarray(latents)
    bad = values[(values < 0) | (values >= d)]
    if bad.size:
      raise ValueError(
        f"latents must lie in [0, {d}) (the code has D={d} elements), got "
        f"{sorted(set(bad.tolist()))[:8]}."
      )
  return jnp.asarray(latents)


def _training_mode_error(what: str) -> str:
  return (
    f"encode_fn calls {what} in training mode, where BatchNorm's batch "
    "statistics make an example's maps depend on the batch and Dropout drops "
    "units at random. Call the encoder in evaluation mode, e.g. "
    "functools.partial(model.apply, method=model.encode, train=False), "
    "BatchNorm(use_running_average=True), Dropout(deterministic=True); for "
    "NNX, model.eval()."
  )


def _traced(encode_fn, first, x, args, kwargs) -> _Traced:
  """:func:`_trace`, its failures explained by their cause."""
  fn = getattr(encode_fn, "func", encode_fn)  # A partial of model.apply?
  linen_apply = isinstance(getattr(fn, "__self__", None), nn.Module)
  if isinstance(first, nnx.Module) and linen_apply:
    raise TypeError(
      "encode_fn is a Linen module's apply, which takes its variables, got "
      "an nnx.Module; for NNX pass e.g. lambda model, x: model.encode(x)."
    )
  try:
    return _trace(encode_fn, first, x, args, kwargs)
  except flax.errors.ModifyScopeVariableError as e:
    what = "a module that updates its variables (BatchNorm?)"
    raise ValueError(f"{_training_mode_error(what)} Original error: {e}") from e
  except (flax.errors.ScopeParamShapeError, TypeError, ValueError) as e:
    traced = isinstance(e, jax.errors.ConcretizationTypeError)
    shape = "shape" in str(e) or "dimension" in str(e)  # lax.conv: "dimension"
    if isinstance(e, (TypeError, ValueError)) and (traced or not shape):
      raise  # Python control flow on traced values, or another bug.
    raise ValueError(
      f"encode_fn failed on an input of shape {tuple(x.shape)}; the model "
      f"expects the NHWC shape it was built for. Original error: {e}"
    ) from e
  except flax.errors.FlaxError as e:
    missing = isinstance(e, flax.errors.ScopeCollectionNotFound)
    if isinstance(first, Mapping) and ("params" not in first or missing):
      raise ValueError(
        "encode_fn's variables lack a collection the model reads: pass the "
        "whole variables dict ({'params': ..., 'batch_stats': ...}), not "
        f"variables['params']. Original error: {e}"
      ) from e
    raise


def _code_shape(traced: _Traced) -> tuple[int, int]:
  avals = jax.tree.unflatten(traced.out_tree, traced.jaxpr.out_avals)
  if isinstance(avals, (tuple, list)) and [a.ndim for a in avals] == [2, 2]:
    return tuple(avals[0].shape)
  raise TypeError(
    "encode_fn must return the posterior (mu, logvar), each [B, D], e.g. "
    "functools.partial(model.apply, method=model.encode); got "
    f"{jax.tree.map(lambda o: o.shape, avals)}."
  )


# Grad-CAM from the pullback.
# ----------------------------------------------------------------------------


def _cotangents(latents, b, d, dtype, sum_latents) -> jax.Array:
  """``[K, B, D]`` rows: row ``k`` of example ``b`` is one-hot on latent
  ``k`` (all latents), on ``latents[b, k]`` (NaN outside ``[0, D)``), or
  all ones (``sum_latents``)."""
  if sum_latents:
    return jnp.ones((1, b, d), dtype)
  if latents is None:
    return jnp.broadcast_to(jnp.eye(d, dtype=dtype)[:, None, :], (d, b, d))
  valid = ((latents >= 0) & (latents < d)).T[..., None]
  return jnp.where(valid, jax.nn.one_hot(latents.T, d, dtype=dtype), jnp.nan)


def _pull_all(pullback, cts, chunk_size):
  """The pullback of every cotangent row, vmapped (in chunks if asked)."""
  k, b = cts.shape[:2]
  chunk = chunk_size
  if chunk is None and ops.fast_path():
    # XLA:CPU runs the pullback about 2x faster on chunks of a few hundred
    # rows, which stay in cache, than on all K * B rows at once.
    chunk = max(1, _CPU_CHUNK_ROWS // b)
  if chunk is None or chunk >= k:
    return jax.vmap(pullback)(cts)[0]
  num_chunks = -(-k // chunk)
  cts = jnp.pad(cts, ((0, num_chunks * chunk - k), (0, 0), (0, 0)))
  cts = cts.reshape(num_chunks, chunk, *cts.shape[1:])
  (grads,) = lax.map(jax.vmap(pullback), cts)
  return jax.tree.map(lambda g: g.reshape(-1, *g.shape[2:])[:k], grads)


def _maps(g, a, positive, gradient_scale) -> AttentionMaps:
  """Eq. 3-4 from gradients ``g [K, B, h|1, w|1, n]`` and ``a [B, h, w, n]``."""
  h, w = a.shape[1:3]
  if gradient_scale is not None:
    axes = (2, 3, 4) if gradient_scale == "rms" else (1, 2, 3, 4)
    g = g / (jnp.sqrt(jnp.mean(g**2, axis=axes, keepdims=True)) + 1e-5)
  alpha = g.sum(axis=(2, 3)) / (h * w)  # [K, B, n]
  per_latent = jnp.einsum("bhwn,kbn->bkhw", a, alpha)
  if positive is not None:
    per_latent = (
      jax.nn.relu(per_latent) if positive == "relu" else abs(per_latent)
    )
  k = per_latent.shape[1]
  # The mean over K as a matmul (XLA:CPU reductions are slow).
  ones = jnp.full((k,), 1.0 / k, per_latent.dtype)
  return AttentionMaps(per_latent, jnp.einsum("bkhw,k->bhw", per_latent, ones))


# The transform.
# ----------------------------------------------------------------------------


def value_and_attention(
  encode_fn: EncodeFn,
  layer: str | Sequence[str],
  *,
  code: str = "mu",
  positive: str | None = "relu",
  gradient_scale: str | None = None,
  sum_latents: bool = False,
  after_activation: bool = True,
  chunk_size: int | None = None,
  precision: Precision = "highest",
) -> Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]:
  """Creates a function that evaluates the posterior and its attention maps.

  The twin of :func:`attention` (as ``jax.value_and_grad`` is of
  ``jax.grad``): ``((mu, logvar), maps)`` from one encoder pass, so a loss
  such as L_AD does not run the encoder twice.

  Args:
    encode_fn: ``(first, x, *args, **kwargs) -> (mu, logvar)``, each
      ``[B, D]``; ``first`` is Linen ``variables`` (e.g.
      ``functools.partial(model.apply, method=model.encode)``), an
      ``nnx.Module`` (e.g. ``lambda model, x: model.encode(x)``) or the
      parameters of any JAX function. Examples must be independent
      (BatchNorm in evaluation mode).
    layer: a Linen module path (``"encoder/conv2"``), an NNX submodule path
      written the same way, or a ``checkpoint_name`` (a unique suffix such
      as ``"conv2"`` works); or a sequence of them (one pass for all).
      :func:`layer_paths` lists them.
    code: what is differentiated: ``"mu"``, ``"sample"`` (``mu + sigma *
      eps``, needs ``key``) or ``"difference"`` (eq. 5, needs ``key`` and
      ``stats``).
    positive: ``"relu"`` (Grad-CAM), ``"abs"``, or ``None`` (signed maps).
    gradient_scale: ``None``; ``"rms"``: divide each gradient ``g_i`` of
      each example by its root mean square (``+ 1e-5``) before pooling;
      ``"batch_rms"``: by one root mean square per latent over the batch
      (with ``sum_latents``, the official code's one over the batch; an
      example's maps then depend on the batch). Both are slower.
    sum_latents: differentiate ``sum_i z_i``: one map per image
      (``per_latent [B, 1, h, w]``), as the official code.
    after_activation: take the map after an activation that the target
      flows into (module docstring); ``False``: at the named value.
    chunk_size: map the pullback over chunks of this many latents with
      ``lax.map`` (bounds memory); ``None``: one vmap, or chunks of about
      256 rows on XLA:CPU (faster there). The maps are the same.
    precision: of every dot and convolution, derivatives included:
      ``"highest"``, ``"high"``, ``"default"``, a ``jax.lax.Precision`` or
      ``None`` (the caller's); see :func:`matmul_precision`.

  Returns:
    A function ``(first, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> ((mu, logvar), maps)`` taking floating-point images ``x``
    ``[B, H, W, C]``; ``key`` for sampled codes; ``stats``
    (:class:`vae_attn.anomaly.LatentStats` or its dict, ``mean`` and
    ``var`` ``[D]``) for ``code="difference"``; ``latents``, integer indices
    ``[B, K]`` in ``[0, D)``, to compute only those maps (``K`` cotangents
    instead of ``D``; under ``jax.jit`` an index outside gives NaN maps).
    ``maps`` is an :class:`AttentionMaps` (``per_latent [B, D, h, w]``,
    ``mean [B, h, w]``) or, for a sequence of layers, a dict of them. Bad
    arguments (an unknown layer, BatchNorm in training mode,
    ``variables["params"]``, images of another shape, missing ``key`` or
    ``stats``...) raise ``ValueError`` or ``TypeError`` naming the fix.

  Raises:
    TypeError: ``encode_fn`` is not callable; ``layer`` is not a path or a
      sequence of paths.
    ValueError: an unknown option value, or ``chunk_size < 1``.
  """
  layers = _check_options(**locals())
  per_element = gradient_scale is not None

  @functools.wraps(encode_fn)
  def value_and_attention_fn(
    first, x, *args, key=None, stats=None, latents=None, **kwargs
  ):
    _check_images(x)
    _check_code_args(code, key, stats, latents, sum_latents)
    with matmul_precision(precision):
      traced = _traced(encode_fn, first, x, args, kwargs)
      b, d = _code_shape(traced)
      stats = None if stats is None else _check_stats(stats, d)
      if latents is not None:
        latents = _check_latents(latents, b, d)
      scopes, sites = _sites(traced)
      paths = _resolve(layers, sites)
      targets, deltas = {}, {}
      for name in dict.fromkeys(paths.values()):
        site = sites[name][0]
        where = _target(scopes, site) if after_activation else site[:2]
        targets.setdefault(where, []).append(name)
        bb, h, w, n = site.aval.shape
        shape = (bb, h, w, n) if per_element else (bb, 1, 1, n)
        out = scopes[where[0]].jaxpr.eqns[where[1]].outvars[0].aval
        deltas[name] = jnp.zeros(shape, out.dtype)  # A's, after a cast too.

      def perturbed_code(deltas):
        outs, acts = _evaluate(
          traced.jaxpr,
          traced.inputs,
          targets,
          deltas,
          not per_element,
        )
        mu, logvar = jax.tree.unflatten(traced.out_tree, outs)
        z = _code(code, mu, logvar, key, stats)
        return z, (mu, logvar, acts)

      z, pullback, (mu, logvar, acts) = jax.vjp(
        ops.fast_convolutions(perturbed_code), deltas, has_aux=True
      )
      # Row k of the cotangents selects one latent of every example:
      # examples are independent, so its pullback holds each d z_bk / d A_b.
      cts = _cotangents(latents, b, d, z.dtype, sum_latents)
      grads = _pull_all(pullback, cts, chunk_size)
      maps = {
        layer: _maps(grads[name], acts[name], positive, gradient_scale)
        for layer, name in paths.items()
      }
    return (mu, logvar), (maps[layers[0]] if isinstance(layer, str) else maps)

  return value_and_attention_fn


def attention(
  encode_fn: EncodeFn,
  layer: str | Sequence[str],
  *,
  code: str = "mu",
  positive: str | None = "relu",
  gradient_scale: str | None = None,
  sum_latents: bool = False,
  after_activation: bool = True,
  chunk_size: int | None = None,
  precision: Precision = "highest",
) -> Callable[..., Any]:
  """Creates a function that evaluates per-latent Grad-CAM maps at ``layer``.

  For each latent element ``z_i`` of the chosen code, ``M_i = ReLU(sum_k
  a_ik A_k)`` with ``a_ik`` the spatial mean of ``d z_i / d A_k`` (eq. 3),
  and ``M`` their mean (eq. 4); all from one forward pass and one vmapped
  pullback. Args, errors: :func:`value_and_attention`.

  Returns:
    A function ``(first, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> maps``, an :class:`AttentionMaps` (``per_latent [B, D, h,
    w]``, ``mean [B, h, w]``), or a dict of them for several layers.

  Example:
    >>> import functools, jax, jax.numpy as jnp
    >>> from vae_attn import attention, models
    >>> model = models.mnist_vae(latent_dim=4)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init(jax.random.key(0), x, jax.random.key(1))
    >>> encode = functools.partial(model.apply, method=model.encode)
    >>> maps = jax.jit(attention.attention(encode, "conv2"))(variables, x)
    >>> maps.per_latent.shape, maps.mean.shape
    ((2, 4, 7, 7), (2, 7, 7))
  """
  fn = value_and_attention(**locals())  # The same arguments.

  @functools.wraps(encode_fn)
  def attention_fn(*args, **kwargs):
    return fn(*args, **kwargs)[1]

  return attention_fn


def layer_paths(encode_fn: EncodeFn, first, x, *args, **kwargs):
  """The layers of ``encode_fn`` that the attention transform can target.

  Named values (Linen module and NNX submodule outputs, ``checkpoint_name``
  values) that are feature maps ``[B, h, w, n]`` computed once per pass,
  e.g. each ``ConvBlock`` of the paper's models; a bare layer inside such a
  block (``encoder/conv1/conv``) is not listed, though :func:`attention`
  accepts it. Arguments as the returned function of :func:`attention` takes
  them (``first`` may hold ``jax.ShapeDtypeStruct``).

  Returns:
    A dict from layer path (e.g. ``"encoder/conv2"``) to the shape of its
    output ``(B, h, w, n)``, in call order.
  """
  return _feature_maps(_sites(_traced(encode_fn, first, x, args, kwargs))[1])


def resolve_layers(
  encode_fn: EncodeFn, first, x, layers: str | Sequence[str]
) -> dict[str, str]:
  """The full path of each requested layer (a name, or a sequence of them).

  A full path (``"encoder/conv2"``) or a unique suffix (``"conv2"``), which
  matches the targets of :func:`layer_paths` first, then any named value.

  Returns:
    A dict from each requested name to its full path, in request order.

  Raises:
    TypeError: ``layers`` is not a name or a sequence of names.
    ValueError: a name matches no layer or several (listing the valid ones).
  """
  names = _check_layer(layers)
  return _resolve(names, _sites(_traced(encode_fn, first, x, (), {}))[1])


# Post-processing, composed by the caller (as optax composes transforms).
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
  """``[out, in]`` float32 matrix of bilinear (half-pixel) 1-D resizing: the
  weights of ``jax.image.resize(..., "linear", antialias=False)``
  (``compute_weight_mat``, jax/_src/image/scale.py), in NumPy; every sample
  position lies in ``[-0.5, in - 0.5]``, so each row has a positive sum."""
  scale = np.float32(1) / np.float32(out_size / in_size)
  at = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - 0.5
  w = np.maximum(0, 1 - np.abs(at[:, None] - np.arange(in_size)))
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def upsample(
  maps: jax.Array, size: int | tuple[int, int], *, precision="highest"
) -> jax.Array:
  """Bilinearly resizes maps ``[..., h, w]`` to ``[..., H, W]``.

  Equals ``jax.image.resize(maps, (..., H, W), "bilinear")`` (half-pixel
  centres, as ``F.interpolate(align_corners=False)``), as two small
  interpolation matrices (faster on CPU); ``size`` is ``H`` (square) or
  ``(H, W)``; ``precision`` of the two matmuls as in :func:`attention`.

  Raises:
    ValueError: ``size`` is not positive, or ``maps`` has fewer than 2 axes
      or an empty spatial axis.
  """
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
  if getattr(maps, "ndim", 0) < 2 or 0 in maps.shape[-2:]:
    raise ValueError(
      f"upsample expects maps [..., h, w] with h, w >= 1, got shape "
      f"{getattr(maps, 'shape', type(maps).__name__)}."
    )
  rh = _interpolation_matrix(int(out_h), maps.shape[-2]).astype(maps.dtype)
  rw = _interpolation_matrix(int(out_w), maps.shape[-1]).astype(maps.dtype)
  with matmul_precision(precision):
    return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


def normalize(maps: jax.Array) -> jax.Array:
  """Min-max normalises each map ``[..., h, w]`` to ``[0, 1]`` for display,
  in the dtype of ``maps``; a constant map gives 0 (float16 included)."""
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  span = hi - lo
  flat = span <= 0
  return jnp.where(flat, 0, (maps - lo) / jnp.where(flat, 1, span)).astype(
    maps.dtype
  )
