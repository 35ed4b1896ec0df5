"""Per-latent gradient attention of a VAE encoder, as a JAX transform.

``attention(encode_fn, layer)`` creates a function that evaluates, for every
latent element ``z_i`` of the code, the Grad-CAM map of ``z_i`` at the conv
layer ``layer`` (paper eq. 3-4, docs/paper.md#per-latent-attention):

    g_i  = d z_i / d A                        (h x w x n)
    a_ik = mean over the h x w positions of g_i[..., k]
    M_i  = ReLU(sum_k a_ik A[..., k])         (h x w)
    M    = (1 / D) sum_i M_i

All ``D`` gradients come from ONE forward pass: the activation ``A`` is
perturbed with a zero offset through ``flax.linen.intercept_methods`` (no
hooks, no stored tensors, no model edits), ``jax.vjp`` linearises the encoder
once, and ``jax.vmap`` maps the pullback over the ``D`` one-hot cotangents.
Because Grad-CAM only needs the spatial mean of each gradient, the offset is
one value per channel, broadcast over ``h x w``; its gradient is exactly the
spatial sum of ``g_i``. The result composes with ``jax.jit``, ``jax.vmap`` and
``jax.grad`` (second order, for the L_AD loss of eq. 6).

Precision. The transform traces the encoder, its pullback and the maps
under ``jax.default_matmul_precision(precision)`` (default ``"highest"``:
full float32 on every backend), and the convolutions of
:mod:`vae_attn.models.ops` store that precision in their custom derivatives,
so every dot and convolution of the program, second-order derivatives
included, carries it. Measured (issue 11, one NVIDIA H200, jax 0.11.2):
with JAX's default precision (TF32 matmuls and convolutions on GPU;
bfloat16 passes on TPU) the maps of the same parameters and images differed
from the CPU maps by up to 8 % (max abs difference / max abs map) at
FactorVAE ``encoder/conv1`` and 6 % at Ped1 ``encoder/conv2`` and ResNet-18
``encoder/stage2_block1/conv1``; with ``"highest"``, by about 1e-6.
XLA:CPU computes float32 dots and convolutions in float32 at any precision
setting, so on CPU the option changes neither the maps nor the speed.

Float32 against float64. The float32 maps of every paper layer agree with a
float64 evaluation (``jax.enable_x64``, float64 parameters and images) to
about 1e-6 (max abs difference / max abs map; ``tests/test_precision.py``),
except where a ReLU's pre-activation lies within float32 rounding of zero:
there float32 and float64 differentiate different linear pieces of the
network, and every map whose gradient flows through that unit changes. Any
float32 evaluation, in any framework, meets such units on some inputs.
Measured on the ResNet-18 VAE at 256x256 (random weights, BatchNorm
statistics of the image batch, scikit-image's brick texture, XLA:CPU): one
unit of ``stage2_block1``'s output ReLU had pre-activation 3.0e-6 in float32
and -1.6e-6 in float64 (activations up to 8.2), and the maps at
``stage1_block1/conv1`` and ``stage2_block1/conv1`` moved by 1.2e-2 and
7.1e-3; float64 run with the float32 ReLU masks agreed with float32 to 2e-6
at every stage. The spatial mean of the gradients is not where precision
goes (summing the float32 gradients in float64 leaves the gradient means
1.04e-2 from float64 either way), nor are the rewrites of
:mod:`vae_attn.models.ops` (none runs at that size), and XLA:CPU's float32
convolutions are as accurate as OpenBLAS's sgemm.

Modules may tell the transform about their structure through one class
attribute, ``flattens_input_into_dense = True``: the module's ``__call__``
flattens its input row-major to ``[B, -1]`` and passes that array, unchanged,
to its first ``nn.Dense`` (as :class:`vae_attn.models.GaussianHead` does).
A per-channel offset of that input is then folded into the Dense layer in
closed form (exact by linearity, and cheaper to differentiate).

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, https://arxiv.org/abs/1911.07389 (eq. 3-5).
  Selvaraju et al., "Grad-CAM", ICCV 2017, https://arxiv.org/abs/1610.02391.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from vae_attn.models import ops

CODES = ("mu", "sample", "difference")
POSITIVES = ("relu", "abs")
GRADIENT_SCALES = (None, "rms")
# Names of `precision`, as `jax.default_matmul_precision` takes them.
PRECISIONS = ("highest", "high", "default")
_CPU_CHUNK_ROWS = 256  # Rows (latents x examples) per pullback chunk on CPU.

EncodeFn = Callable[..., tuple[jax.Array, jax.Array]]
Precision = str | lax.Precision | None


class AttentionMaps(NamedTuple):
  """Attention maps of one layer.

  Attributes:
    per_latent: ``[B, D, h, w]``, the map ``M_i`` of every latent element.
    mean: ``[B, h, w]``, their mean over ``D`` (eq. 4).
  """

  per_latent: jax.Array
  mean: jax.Array


# Precision.
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

  ``jax.default_matmul_precision`` under this module's names. Every dot and
  convolution traced inside the ``with`` block without its own precision
  gets ``precision`` (it is read when a function is traced, so wrap the
  code that traces: a ``jax.jit``-ed step's first call, or the body of the
  step function). The convolutions of :mod:`vae_attn.models.ops` keep it in
  their derivatives, also when these are traced after the block (the
  backward pass of a ``jax.grad`` taken outside it). Nothing global
  changes: the setting is local to the block and thread.

  Args:
    precision: ``"highest"`` (full float32 on every backend), ``"high"``,
      ``"default"`` (the backend's fastest: TF32 on recent NVIDIA GPUs,
      bfloat16 passes on TPU), the same as a ``jax.lax.Precision``, or
      ``None`` (a no-op: the caller's setting stays).

  Returns:
    A context manager.

  Raises:
    ValueError: an unknown precision.

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


# Codes.
# ----------------------------------------------------------------------------


def difference_code(
  mu: jax.Array, logvar: jax.Array, stats: Any, eps: jax.Array
) -> jax.Array:
  """A reparameterised sample of the normal difference distribution (eq. 5).

  ``u = (mu^x - mu^y) + sqrt(var^x + exp(logvar^y)) * eps``, a differentiable
  function of the test image's posterior ``(mu^y, logvar^y)``.

  Args:
    mu: test posterior means ``[B, D]``.
    logvar: test posterior log-variances ``[B, D]``.
    stats: latent population statistics of the normal data with attributes
      ``mean`` and ``var`` (``[D]`` each), e.g. :class:`vae_attn.anomaly.
      LatentStats`.
    eps: standard normal noise ``[B, D]``.

  Returns:
    ``[B, D]`` samples ``u``.
  """
  return (stats.mean - mu) + jnp.sqrt(stats.var + jnp.exp(logvar)) * eps


def _code_fn(code, mu, logvar, key, stats):
  if code == "mu":
    return mu
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  if code == "sample":
    return mu + jnp.exp(0.5 * logvar) * eps
  return difference_code(mu, logvar, stats, eps)


# Layers.
# ----------------------------------------------------------------------------


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


class _Traced(NamedTuple):
  """What one abstract pass of ``encode_fn`` shows."""

  outputs: dict[str, jax.ShapeDtypeStruct | None]  # Every module, call order.
  leaves: frozenset[str]  # Modules that call no other module.
  output: Any  # What encode_fn returns, as ShapeDtypeStructs.


def _trace(encode_fn, variables, x, *args, **kwargs) -> _Traced:
  """Module outputs of ``encode_fn`` (traced with ``jax.eval_shape``)."""
  found = {}
  parents = set()
  stack = []

  def record(next_fun, fargs, fkwargs, context):
    if context.method_name != "__call__":
      return next_fun(*fargs, **fkwargs)
    path = _path(context.module)
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
  return _Traced(found, frozenset(set(found) - parents), output)


def _targets(traced: _Traced) -> dict[str, tuple[int, ...]]:
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
  """The layers of ``encode_fn`` that :func:`attention` can target.

  A target is a module whose output is a feature map ``[B, h, w, n]``, e.g.
  each ``ConvBlock`` (conv, norm, activation) of the paper's models. A bare
  layer inside such a block (``encoder/conv1/conv``, the convolution before
  the block's activation; ``.../bn``) is not listed, as the block's output
  is the attention layer; :func:`attention` still accepts its path.

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
  return _targets(_trace(encode_fn, variables, x, *args, **kwargs))


def resolve_layers(
  encode_fn: EncodeFn, variables, x, layers: str | Sequence[str]
) -> dict[str, str]:
  """The full path of each requested layer, as :func:`attention` finds it.

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
  return _resolve(_check_layer(layers), _trace(encode_fn, variables, x))


def _resolve(layers: Sequence[str], traced: _Traced) -> dict[str, str]:
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


# Argument checks.
# ----------------------------------------------------------------------------


def _concrete(value) -> np.ndarray | None:
  """``value`` as a NumPy array, or ``None`` if it is traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


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


def _check_images(x) -> None:
  if not hasattr(x, "ndim") or x.ndim != 4:
    shape = getattr(x, "shape", type(x).__name__)
    raise ValueError(
      f"attention expects a batch of NHWC images [B, H, W, C], got {shape}; "
      "add a batch axis with x[None] for a single image."
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


def _code_shape(output) -> tuple[int, int]:
  """``(B, D)`` of ``encode_fn``'s ``(mu, logvar)``, checked."""
  if (
    isinstance(output, (tuple, list))
    and len(output) == 2
    and all(getattr(o, "ndim", 0) == 2 for o in output)
  ):
    return tuple(output[0].shape)
  raise TypeError(
    "encode_fn must return the posterior (mu, logvar), each [B, D], e.g. "
    "functools.partial(model.apply, method=model.encode); got "
    f"{jax.tree.map(lambda o: o.shape, output)}."
  )


def _check_code_args(code: str, key, stats) -> None:
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


class _Stats(NamedTuple):
  mean: jax.Array
  var: jax.Array


def _check_stats(stats, d: int) -> _Stats:
  """``stats`` (``LatentStats`` or its dict) as ``_Stats``, checked.

  Concrete statistics with a non-finite value or a negative variance raise;
  traced ones cannot be inspected, and a negative variance becomes NaN, so
  that every map it touches is NaN rather than silently wrong.
  """
  if isinstance(stats, Mapping):
    if not {"mean", "var"} <= set(stats):
      raise TypeError(
        "stats as a dict needs the entries 'mean' and 'var' (as "
        f"LatentStats._asdict() saves them), got keys {sorted(stats)}."
      )
    mean, var = stats["mean"], stats["var"]
  elif not any(
    callable(getattr(stats, name, callable)) for name in ("mean", "var")
  ):
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
  mean_np, var_np = _concrete(mean), _concrete(var)
  if mean_np is None or var_np is None:
    return _Stats(mean, jnp.where(var >= 0, var, jnp.nan))
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


def _check_latents(latents, b: int, d: int):
  """``(latents [B, K] integers, valid [B, K] or None)``.

  Concrete indices are checked here; traced ones cannot be, and the maps of
  an index outside ``[0, D)`` are NaN (``valid`` marks them).
  """
  if isinstance(latents, (list, tuple)):
    try:
      latents = np.asarray(latents)
    except ValueError as e:
      raise ValueError(
        f"latents must be integer indices [B, K], got a ragged list: {e}"
      ) from e
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
  values = _concrete(latents)
  if values is None:
    latents = jnp.asarray(latents)
    return latents, (latents >= 0) & (latents < d)
  bad = values[(values < 0) | (values >= d)]
  if bad.size:
    raise ValueError(
      f"latents must lie in [0, {d}) (the code has D={d} elements), got "
      f"{sorted(set(bad.tolist()))[:8]}."
    )
  return jnp.asarray(values), None


# The transform.
# ----------------------------------------------------------------------------


class _Offset(NamedTuple):
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
      raise ValueError(
        f"{_path(module)!r} does not take the flattened output of the "
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


def _perturbed_code_fn(
  encode_fn, variables, x, args, kwargs, *, code, key, stats, offsets_folded
):
  """``deltas -> (z, (mu, logvar, activations))`` with the offsets added."""

  def perturbed_code(deltas):
    captured = {}
    offsets = _Offsets()
    base = _trace_state()

    def perturb(next_fun, fargs, fkwargs, context):
      out = offsets.call(next_fun, fargs, fkwargs, context)
      path = _path(context.module)
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
    z = _code_fn(code, mu, logvar, key, stats)
    return z, (mu, logvar, captured)

  return perturbed_code


def _cotangents(latents, b: int, d: int, dtype) -> jax.Array:
  """``[K, B, D]`` one-hot rows: row ``k`` of example ``b`` selects latent
  ``k`` (all latents) or ``latents[b, k]``."""
  if latents is None:
    return jnp.broadcast_to(jnp.eye(d, dtype=dtype)[:, None, :], (d, b, d))
  return jax.nn.one_hot(latents.T, d, dtype=dtype)


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


def _maps(g, a, rectify, gradient_scale, valid) -> AttentionMaps:
  """Eq. 3-4 from gradients ``g [K, B, h|1, w|1, n]`` and ``a [B, h, w, n]``."""
  h, w = a.shape[1:3]
  if gradient_scale == "rms":
    rms = jnp.sqrt(jnp.mean(g**2, axis=(2, 3, 4), keepdims=True))
    g = g / (rms + 1e-5)
  alpha = g.sum(axis=(2, 3)) / (h * w)  # [K, B, n]
  per_latent = rectify(jnp.einsum("bhwn,kbn->bkhw", a, alpha))
  if valid is not None:
    per_latent = jnp.where(valid[:, :, None, None], per_latent, jnp.nan)
  k = per_latent.shape[1]
  # The mean over K as a matmul (XLA:CPU reductions are slow).
  ones = jnp.full((k,), 1.0 / k, per_latent.dtype)
  return AttentionMaps(per_latent, jnp.einsum("bkhw,k->bhw", per_latent, ones))


def value_and_attention(
  encode_fn: EncodeFn,
  layer: str | Sequence[str],
  *,
  code: str = "mu",
  positive: str = "relu",
  gradient_scale: str | None = None,
  chunk_size: int | None = None,
  precision: Precision = "highest",
) -> Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]:
  """Creates a function that evaluates the posterior and its attention maps.

  The twin of :func:`attention` (as ``jax.value_and_grad`` is of
  ``jax.grad``): the returned function gives ``((mu, logvar), maps)`` from a
  single encoder pass, so a loss such as L_AD does not run the encoder twice.

  Args:
    encode_fn: ``encode_fn(variables, x, *args, **kwargs) -> (mu, logvar)``,
      e.g. ``functools.partial(model.apply, method=model.encode)``. Examples
      must be independent (BatchNorm in eval mode). The target layer must
      not run inside a transform that the encoder applies itself (a lifted
      ``nn.remat``, ``nn.scan``...): that raises a ``ValueError``.
    layer: a layer path such as ``"encoder/conv2"`` (a unique suffix like
      ``"conv2"`` works too), or a sequence of them for several layers at
      once (the conv1/conv2/conv3 ablation). :func:`layer_paths` lists them.
    code: what is differentiated: ``"mu"`` (posterior mean), ``"sample"``
      (``mu + sigma * eps``, needs ``key``) or ``"difference"`` (the normal
      difference distribution of eq. 5, needs ``key`` and ``stats``).
    positive: ``"relu"`` (Grad-CAM, default) or ``"abs"`` (official code).
    gradient_scale: ``None`` (default) or ``"rms"``: divide each gradient
      ``g_i`` by its root mean square before pooling, as the official code
      does. ``"rms"`` needs the full ``h x w x n`` gradient and is slower.
    chunk_size: if set, the pullback is mapped over chunks of this many
      latents with ``lax.map`` (bounds memory; a vmap inside each chunk).
      If ``None``, it is vmapped over all latents, except on XLA:CPU, where
      chunks of about 256 rows (``256 // B`` latents) are faster. The maps
      are the same either way.
    precision: the matmul precision of every dot and convolution of the
      encoder pass, the pullback and the maps (also of their derivatives):
      ``"highest"`` (default; full float32 on every backend), ``"high"``,
      ``"default"`` (the backend's fastest: TF32 on GPU, bfloat16 passes on
      TPU; up to 8 % different maps, module docstring), a
      ``jax.lax.Precision``, or ``None`` (the caller's
      ``jax_default_matmul_precision``). See :func:`matmul_precision`.

  Returns:
    A function ``(variables, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> ((mu, logvar), maps)``:

    - ``x``: floating-point images ``[B, H, W, C]``, ``B >= 1``;
    - ``key``: a PRNG key, for ``code="sample"`` and ``"difference"``;
    - ``stats``: for ``code="difference"`` only, the normal data's
      :class:`vae_attn.anomaly.LatentStats` or the dict of its ``mean`` and
      ``var`` (``[D]`` each) as checkpoints store it;
    - ``latents``: integer indices ``[B, K]`` in ``[0, D)`` (an array or a
      nested list) to compute only those maps of each example (``per_latent
      [B, K, h, w]``, ``mean`` over the ``K``); the pullback is then mapped
      over ``K`` instead of ``D`` cotangents, e.g. ``K = 2`` for the random
      pair of L_AD;
    - ``maps``: an :class:`AttentionMaps` (``per_latent [B, D, h, w]``,
      ``mean [B, h, w]``, in the activations' dtype) for a single layer, or
      a dict from each requested layer to its :class:`AttentionMaps`.

    The returned function raises ``ValueError`` or ``TypeError`` for: a
    layer it cannot resolve (the message lists the valid ones), images that
    are not ``[B, H, W, C]`` floating point or an empty batch, a missing
    ``key`` or ``stats``, ``stats`` with a code other than
    ``"difference"``, ``stats`` of another ``D`` or with NaN or a negative
    variance, and ``latents`` that are not integers ``[B, K]`` in
    ``[0, D)``. Under ``jax.jit`` traced ``latents`` and ``stats`` cannot be
    inspected: an index outside ``[0, D)`` and a negative variance give NaN
    maps (never a plausible but wrong map), as out-of-range gathers give
    NaN in ``jnp.take``.

  Raises:
    TypeError: ``encode_fn`` is not callable; ``layer`` is not a path or a
      sequence of paths.
    ValueError: an unknown ``code``, ``positive``, ``gradient_scale`` or
      ``precision``, or ``chunk_size < 1``.
  """
  if not callable(encode_fn):
    raise TypeError(f"encode_fn must be callable, got {encode_fn!r}.")
  single = isinstance(layer, str)
  layers = _check_layer(layer)
  if code not in CODES:
    raise ValueError(f"Unknown code {code!r}; choose one of {CODES}.")
  if positive not in POSITIVES:
    raise ValueError(
      f"Unknown positive {positive!r}; choose one of {POSITIVES}."
    )
  if gradient_scale not in GRADIENT_SCALES:
    raise ValueError(
      f"Unknown gradient_scale {gradient_scale!r}; choose one of "
      f"{GRADIENT_SCALES}."
    )
  if chunk_size is not None and (
    not isinstance(chunk_size, int) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
  _precision_name(precision)
  rectify = jax.nn.relu if positive == "relu" else jnp.abs

  @functools.wraps(encode_fn)
  def value_and_attention_fn(
    variables, x, *args, key=None, stats=None, latents=None, **kwargs
  ):
    with matmul_precision(precision):
      _check_images(x)
      _check_code_args(code, key, stats)
      try:
        traced = _trace(encode_fn, variables, x, *args, **kwargs)
      except (TypeError, ValueError, flax.errors.FlaxError) as e:
        raise ValueError(
          f"encode_fn failed on an input of shape {tuple(x.shape)}; the "
          "model expects the NHWC shape it was built for. Original error: "
          f"{e}"
        ) from e
      b, d = _code_shape(traced.output)
      if stats is not None:
        stats = _check_stats(stats, d)
      valid = None
      if latents is not None:
        latents, valid = _check_latents(latents, b, d)
      paths = _resolve(layers, traced)
      # One zero offset per channel (broadcast over h x w), or per element
      # for RMS scaling, which needs the whole gradient.
      deltas = {}
      for p in paths.values():
        s = traced.outputs[p]
        shape = s.shape if gradient_scale else (s.shape[0], 1, 1, s.shape[3])
        deltas[p] = jnp.zeros(shape, s.dtype)
      perturbed_code = _perturbed_code_fn(
        encode_fn,
        variables,
        x,
        args,
        kwargs,
        code=code,
        key=key,
        stats=stats,
        offsets_folded=not gradient_scale,
      )
      z, pullback, (mu, logvar, acts) = jax.vjp(
        perturbed_code, deltas, has_aux=True
      )
      # Cotangent row k is one-hot on a latent for every example: examples
      # are independent, so its pullback holds d z_bi / d A_b for each b.
      cts = _cotangents(latents, b, d, z.dtype)
      grads = _pull_all(pullback, cts, chunk_size)
      maps = {
        name: _maps(grads[p], acts[p], rectify, gradient_scale, valid)
        for name, p in paths.items()
      }
    return (mu, logvar), (maps[layers[0]] if single else maps)

  return value_and_attention_fn


def attention(
  encode_fn: EncodeFn,
  layer: str | Sequence[str],
  *,
  code: str = "mu",
  positive: str = "relu",
  gradient_scale: str | None = None,
  chunk_size: int | None = None,
  precision: Precision = "highest",
) -> Callable[..., Any]:
  """Creates a function that evaluates per-latent Grad-CAM maps at ``layer``.

  For each latent element ``z_i`` of the chosen code, the map is
  ``M_i = ReLU(sum_k a_ik A_k)`` with ``a_ik`` the spatial mean of
  ``d z_i / d A_k`` (eq. 3), and ``M`` their mean (eq. 4). All ``D`` maps come
  from one forward pass and one vectorised pullback, computed at
  ``precision`` (default ``"highest"``: full float32 on every backend).

  Args: see :func:`value_and_attention`.

  Returns:
    A function ``(variables, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> maps`` with the arguments of ``encode_fn`` (plus ``key`` for
    sampled codes, ``stats`` for ``code="difference"`` and optionally
    ``latents`` ``[B, K]`` to compute only those maps); ``maps`` is an
    :class:`AttentionMaps` with ``per_latent`` ``[B, D, h, w]`` and ``mean``
    ``[B, h, w]``, or a dict of them when ``layer`` is a sequence. Its
    errors are those listed in :func:`value_and_attention`.

  Raises:
    TypeError, ValueError: bad options, as in :func:`value_and_attention`.

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
  fn = value_and_attention(
    encode_fn,
    layer,
    code=code,
    positive=positive,
    gradient_scale=gradient_scale,
    chunk_size=chunk_size,
    precision=precision,
  )

  @functools.wraps(encode_fn)
  def attention_fn(*args, **kwargs):
    return fn(*args, **kwargs)[1]

  return attention_fn


# Post-processing.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(out_size: int, in_size: int):
  """``[out, in]`` matrix of bilinear (half-pixel) 1-D resizing.

  A NumPy constant, computed eagerly even when first needed inside ``jit``,
  so the cache never holds a tracer.
  """
  with jax.ensure_compile_time_eval():
    eye = jnp.eye(in_size, dtype=jnp.float32)
    matrix = jax.image.resize(
      eye, (out_size, in_size), "linear", antialias=False
    )
  return np.asarray(matrix)


def _check_size(size) -> tuple[int, int]:
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
  return int(out_h), int(out_w)


def upsample(
  maps: jax.Array,
  size: int | tuple[int, int],
  *,
  precision: Precision = "highest",
) -> jax.Array:
  """Bilinearly resizes maps ``[..., h, w]`` to ``[..., H, W]``.

  Equals ``jax.image.resize(maps, (..., H, W), "bilinear")`` (half-pixel
  centres, as ``F.interpolate(align_corners=False)``), computed as two small
  interpolation matrices, which is faster on CPU.

  Args:
    maps: ``[..., h, w]``, e.g. ``AttentionMaps.per_latent`` or ``.mean``.
    size: ``H`` (square) or ``(H, W)``, positive, usually the image size.
    precision: of the two matmuls, as in :func:`value_and_attention`.

  Returns:
    ``[..., H, W]`` maps.

  Raises:
    ValueError: ``size`` is not positive, or ``maps`` has fewer than 2 axes
      or an empty spatial axis.
  """
  out_h, out_w = _check_size(size)
  if getattr(maps, "ndim", 0) < 2 or 0 in maps.shape[-2:]:
    raise ValueError(
      f"upsample expects maps [..., h, w] with h, w >= 1, got shape "
      f"{getattr(maps, 'shape', type(maps).__name__)}."
    )
  rh = _interpolation_matrix(out_h, maps.shape[-2]).astype(maps.dtype)
  rw = _interpolation_matrix(out_w, maps.shape[-1]).astype(maps.dtype)
  with matmul_precision(precision):
    return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


def normalize(maps: jax.Array) -> jax.Array:
  """Min-max normalises each map ``[..., h, w]`` to ``[0, 1]`` for display.

  Args:
    maps: ``[..., h, w]`` floating-point maps.

  Returns:
    ``[..., h, w]`` in the dtype of ``maps``; a constant map gives 0
    everywhere, in every dtype (float16 included).
  """
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  span = hi - lo
  flat = span <= 0
  return jnp.where(flat, 0, (maps - lo) / jnp.where(flat, 1, span)).astype(
    maps.dtype
  )
