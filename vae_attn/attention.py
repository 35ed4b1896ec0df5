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

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, https://arxiv.org/abs/1911.07389 (eq. 3-5).
  Selvaraju et al., "Grad-CAM", ICCV 2017, https://arxiv.org/abs/1610.02391.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vae_attn.models import ops
from vae_attn.models.blocks import GaussianHead

CODES = ("mu", "sample", "difference")
POSITIVES = ("relu", "abs")
GRADIENT_SCALES = (None, "rms")
_CPU_CHUNK_ROWS = 256  # Rows (latents x examples) per pullback chunk on CPU.

EncodeFn = Callable[..., tuple[jax.Array, jax.Array]]


class AttentionMaps(NamedTuple):
  """Attention maps of one layer.

  Attributes:
    per_latent: ``[B, D, h, w]``, the map ``M_i`` of every latent element.
    mean: ``[B, h, w]``, their mean over ``D`` (eq. 4).
  """

  per_latent: jax.Array
  mean: jax.Array


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


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def _layer_outputs(encode_fn, variables, x, *args, **kwargs) -> dict:
  """Shapes of every module output of ``encode_fn`` (traced, not run)."""
  found = {}

  def record(next_fun, fargs, fkwargs, context):
    if context.method_name != "__call__":
      return next_fun(*fargs, **fkwargs)
    path = _path(context.module)
    found.setdefault(path, None)  # Keep call order: outer before inner.
    out = next_fun(*fargs, **fkwargs)
    if isinstance(out, jax.Array) and found[path] is None:
      found[path] = out.shape
    return out

  def run(variables, x):
    with nn.intercept_methods(record):
      return encode_fn(variables, x, *args, **kwargs)

  jax.eval_shape(run, variables, x)
  return found


def layer_paths(encode_fn: EncodeFn, variables, x, *args, **kwargs):
  """The conv layers of ``encode_fn`` that ``attention`` can target.

  Returns:
    A dict from layer path (e.g. ``"encoder/conv2"``) to the shape of its
    output ``[B, h, w, n]``, in call order.
  """
  return {
    p: s
    for p, s in _layer_outputs(encode_fn, variables, x, *args, **kwargs).items()
    if s is not None and len(s) == 4 and p
  }


def _resolve(layers: Sequence[str], valid: dict) -> dict[str, str]:
  """Maps each requested layer to a full path (exact or unique suffix)."""
  resolved = {}
  for layer in layers:
    if layer in valid:
      resolved[layer] = layer
      continue
    matches = [p for p in valid if p.endswith("/" + layer)]
    if len(matches) == 1:
      resolved[layer] = matches[0]
      continue
    listing = "\n  ".join(f"{p}  {tuple(s)}" for p, s in valid.items())
    what = "is ambiguous" if matches else "is not a conv layer of this encoder"
    raise ValueError(
      f"Layer {layer!r} {what}. Valid layer paths (output shape):\n  {listing}"
    )
  return resolved


def _check_input(x) -> None:
  if not hasattr(x, "ndim") or x.ndim != 4:
    shape = getattr(x, "shape", type(x).__name__)
    raise ValueError(
      f"attention expects a batch of NHWC images [B, H, W, C], got {shape}; "
      "add a batch axis with x[None] for a single image."
    )


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
  a :class:`GaussianHead` (flatten -> Dense), the layer is applied to ``A``
  and the offset's contribution is added in closed form, ``conv(A + delta) =
  conv(A) + conv_of_constant(delta)`` (exact by linearity). The gradient
  w.r.t. ``delta`` then contracts the layer's output cotangents with a small
  effective kernel, instead of transposing the layer for every latent and
  summing its ``h x w x n`` input gradient. Any other use of ``A + delta``
  is differentiated as usual, so the result is the same either way.
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
      )
      return out + extra.astype(out.dtype)
    if offset is not None and isinstance(module, GaussianHead):
      # GaussianHead flattens its input into its first Dense layer(s).
      self._heads.append([offset, None])
      try:
        return next_fun(offset.clean, *fargs[1:], **fkwargs)
      finally:
        self._heads.pop()
    if self._heads and isinstance(module, nn.Dense):
      head = self._heads[-1]
      if head[1] is None:
        head[1] = fargs[0]  # The flattened input of the first Dense.
      if fargs[0] is head[1]:
        offset = head[0]
        out = next_fun(*fargs, **fkwargs)
        kernel = module.variables["params"]["kernel"]
        if kernel.shape[0] != math.prod(offset.clean.shape[1:]):
          raise ValueError(
            f"{_path(module)!r} does not take the flattened output of the "
            "attention layer, as GaussianHead's first Dense layer does."
          )
        extra = ops.flatten_dense_of_constant(
          offset.delta, kernel, offset.clean.shape[1:3]
        )
        return out + extra.astype(out.dtype)
    return next_fun(*fargs, **fkwargs)


def value_and_attention(
  encode_fn: EncodeFn,
  layer: str | Sequence[str],
  *,
  code: str = "mu",
  positive: str = "relu",
  gradient_scale: str | None = None,
  chunk_size: int | None = None,
) -> Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]:
  """Creates a function that evaluates the posterior and its attention maps.

  The twin of :func:`attention` (as ``jax.value_and_grad`` is of
  ``jax.grad``): the returned function gives ``((mu, logvar), maps)`` from a
  single encoder pass, so a loss such as L_AD does not run the encoder twice.

  Args:
    encode_fn: ``encode_fn(variables, x, *args, **kwargs) -> (mu, logvar)``,
      e.g. ``functools.partial(model.apply, method=model.encode)``. Examples
      must be independent (BatchNorm in eval mode).
    layer: a layer path such as ``"encoder/conv2"`` (a unique suffix like
      ``"conv2"`` works too), or a sequence of them for several layers at
      once (the conv1/conv2/conv3 ablation).
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

  Returns:
    A function ``(variables, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> ((mu, logvar), maps)`` with ``x`` of shape
    ``[B, H, W, C]``; ``maps`` is an :class:`AttentionMaps` (``per_latent
    [B, D, h, w]``, ``mean [B, h, w]``) for a single layer, or a dict from
    each requested layer to its :class:`AttentionMaps`. ``latents``, integer
    indices ``[B, K]``, restricts the maps to those latents of each example
    (``per_latent [B, K, h, w]``, ``mean`` over the ``K``): the pullback is
    then mapped over ``K`` instead of ``D`` cotangents, e.g. ``K = 2`` for
    the random pair of L_AD.
  """
  if not callable(encode_fn):
    raise TypeError(f"encode_fn must be callable, got {encode_fn!r}.")
  single = isinstance(layer, str)
  layers = (layer,) if single else tuple(layer)
  if not layers or not all(isinstance(name, str) for name in layers):
    raise ValueError(f"layer must be a path string or strings, got {layer!r}.")
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
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
  rectify = jax.nn.relu if positive == "relu" else jnp.abs

  @functools.wraps(encode_fn)
  def value_and_attention_fn(
    variables, x, *args, key=None, stats=None, latents=None, **kwargs
  ):
    _check_input(x)
    if code != "mu" and key is None:
      raise ValueError(f'code="{code}" samples noise: pass key=...')
    if code == "difference" and stats is None:
      raise ValueError(
        'code="difference" needs the latent statistics of the normal data: '
        "pass stats=vae_attn.anomaly.latent_statistics(...)."
      )
    try:
      valid = layer_paths(encode_fn, variables, x, *args, **kwargs)
    except (TypeError, ValueError, flax.errors.FlaxError) as e:
      raise ValueError(
        f"encode_fn failed on an input of shape {tuple(x.shape)}; the model "
        f"expects the NHWC shape it was built for. Original error: {e}"
      ) from e
    paths = _resolve(layers, valid)
    targets = {p: valid[p] for p in paths.values()}
    # One zero offset per channel (broadcast over h x w), or per element for
    # RMS scaling, which needs the whole gradient.
    deltas = {
      p: jnp.zeros(
        (s[0], s[1], s[2], s[3]) if gradient_scale else (s[0], 1, 1, s[3]),
        x.dtype,
      )
      for p, s in targets.items()
    }

    def perturbed_code(deltas):
      captured = {}
      offsets = _Offsets()

      def perturb(next_fun, fargs, fkwargs, context):
        out = offsets.call(next_fun, fargs, fkwargs, context)
        path = _path(context.module)
        if context.method_name != "__call__" or path not in deltas:
          return out
        if path in captured:
          raise ValueError(
            f"Layer {path!r} is called more than once per forward pass; "
            "its attention is ambiguous. Pick a layer called once."
          )
        captured[path] = out
        perturbed = out + deltas[path]
        if not gradient_scale:
          offsets.add(perturbed, out, deltas[path][:, 0, 0, :])
        return perturbed

      with nn.intercept_methods(perturb):
        mu, logvar = encode_fn(variables, x, *args, **kwargs)
      z = _code_fn(code, mu, logvar, key, stats)
      return z, (mu, logvar, captured)

    z, pullback, (mu, logvar, acts) = jax.vjp(
      perturbed_code, deltas, has_aux=True
    )
    b, d = z.shape
    # Cotangent i is one-hot on latent i for every example: examples are
    # independent, so its pullback holds d z_bi / d A_b for each b.
    if latents is None:
      cts = jnp.broadcast_to(jnp.eye(d, dtype=z.dtype)[:, None, :], (d, b, d))
    else:
      if latents.ndim != 2 or latents.shape[0] != b:
        raise ValueError(
          f"latents must be integer indices [B, K] with B={b}, got shape "
          f"{latents.shape}."
        )
      # Row k of example b is one-hot on its own latent latents[b, k].
      cts = jax.nn.one_hot(latents.T, d, dtype=z.dtype)
    d = cts.shape[0]  # The number of maps per example from here on.
    chunk = chunk_size
    if chunk is None and ops.fast_path():
      # XLA:CPU runs the pullback about 2x faster on chunks of a few hundred
      # rows, which stay in cache, than on all D * B rows at once.
      chunk = max(1, _CPU_CHUNK_ROWS // b)
    if chunk is None or chunk >= d:
      (grads,) = jax.vmap(pullback)(cts)
    else:
      num_chunks = -(-d // chunk)
      pad = num_chunks * chunk - d
      cts = jnp.pad(cts, ((0, pad), (0, 0), (0, 0)))
      cts = cts.reshape(num_chunks, chunk, b, d)
      (grads,) = lax.map(jax.vmap(pullback), cts)
      grads = jax.tree.map(lambda g: g.reshape(-1, *g.shape[2:])[:d], grads)

    maps = {}
    for name, path in paths.items():
      g, a = grads[path], acts[path]  # g [D, B, h|1, w|1, n], a [B, h, w, n]
      h, w = a.shape[1:3]
      if gradient_scale == "rms":
        rms = jnp.sqrt(jnp.mean(g**2, axis=(2, 3, 4), keepdims=True))
        g = g / (rms + 1e-5)
      alpha = g.sum(axis=(2, 3)) / (h * w)  # [D, B, n]
      per_latent = rectify(jnp.einsum("bhwn,dbn->bdhw", a, alpha))
      # The mean over D as a matmul (XLA:CPU reductions are slow).
      mean = jnp.einsum("bdhw,d->bhw", per_latent, jnp.full((d,), 1.0 / d))
      maps[name] = AttentionMaps(per_latent, mean.astype(per_latent.dtype))
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
) -> Callable[..., Any]:
  """Creates a function that evaluates per-latent Grad-CAM maps at ``layer``.

  For each latent element ``z_i`` of the chosen code, the map is
  ``M_i = ReLU(sum_k a_ik A_k)`` with ``a_ik`` the spatial mean of
  ``d z_i / d A_k`` (eq. 3), and ``M`` their mean (eq. 4). All ``D`` maps come
  from one forward pass and one vectorised pullback.

  Args: see :func:`value_and_attention`.

  Returns:
    A function ``(variables, x, *args, key=None, stats=None, latents=None,
    **kwargs) -> maps`` with the arguments of ``encode_fn`` (plus ``key`` for
    sampled codes, ``stats`` for ``code="difference"`` and optionally
    ``latents`` ``[B, K]`` to compute only those maps); ``maps`` is an
    :class:`AttentionMaps` with ``per_latent`` ``[B, D, h, w]`` and ``mean``
    ``[B, h, w]``, or a dict of them when ``layer`` is a sequence.

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
  )

  @functools.wraps(encode_fn)
  def attention_fn(*args, **kwargs):
    return fn(*args, **kwargs)[1]

  return attention_fn


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


def upsample(maps: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """Bilinearly resizes maps ``[..., h, w]`` to ``[..., H, W]``.

  Equals ``jax.image.resize(maps, (..., H, W), "bilinear")`` (half-pixel
  centres, as ``F.interpolate(align_corners=False)``), computed as two small
  interpolation matrices, which is faster on CPU.

  Args:
    maps: ``[..., h, w]``, e.g. ``AttentionMaps.per_latent`` or ``.mean``.
    size: ``H`` (square) or ``(H, W)``, usually the input image size.

  Returns:
    ``[..., H, W]`` maps.
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  rh = _interpolation_matrix(out_h, maps.shape[-2]).astype(maps.dtype)
  rw = _interpolation_matrix(out_w, maps.shape[-1]).astype(maps.dtype)
  return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


def normalize(maps: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Min-max normalises each map ``[..., h, w]`` to ``[0, 1]`` for display."""
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  return (maps - lo) / jnp.maximum(hi - lo, eps)
