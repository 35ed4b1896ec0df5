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

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.errors
import jax
import jax.numpy as jnp
from jax import lax

# The parts live in private modules (argument checks, layer resolution, the
# offsets at the target layers, post-processing, precision); the public
# names among them are re-exported here.
from vae_attn import _attention_checks as checks
from vae_attn import _attention_layers as layers_lib
from vae_attn import _attention_offsets as offsets_lib
from vae_attn._attention_checks import CODES as CODES
from vae_attn._attention_checks import GRADIENT_SCALES as GRADIENT_SCALES
from vae_attn._attention_checks import POSITIVES as POSITIVES
from vae_attn._attention_layers import EncodeFn as EncodeFn
from vae_attn._attention_layers import layer_paths as layer_paths
from vae_attn._attention_layers import resolve_layers as resolve_layers
from vae_attn._attention_post import normalize as normalize
from vae_attn._attention_post import upsample as upsample
from vae_attn._attention_precision import PRECISIONS as PRECISIONS
from vae_attn._attention_precision import Precision as Precision
from vae_attn._attention_precision import matmul_precision as matmul_precision
from vae_attn.models import ops

_CPU_CHUNK_ROWS = 256  # Rows (latents x examples) per pullback chunk on CPU.


class AttentionMaps(NamedTuple):
  """Attention maps of one layer.

  Attributes:
    per_latent: ``[B, D, h, w]``, the map ``M_i`` of every latent element.
    mean: ``[B, h, w]``, their mean over ``D`` (eq. 4).
  """

  per_latent: jax.Array
  mean: jax.Array


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


def _code_fn(code: str, *, key, stats) -> Callable[..., jax.Array]:
  """``(mu, logvar) -> z``, the code that is differentiated."""

  def code_fn(mu, logvar):
    if code == "mu":
      return mu
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    if code == "sample":
      return mu + jnp.exp(0.5 * logvar) * eps
    return difference_code(mu, logvar, stats, eps)

  return code_fn


# Grad-CAM from the pullback.
# ----------------------------------------------------------------------------


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


# One call of the transform.
# ----------------------------------------------------------------------------


class _Call(NamedTuple):
  """One call's checked arguments and what the encoder's abstract pass shows."""

  traced: layers_lib.Traced
  paths: dict[str, str]  # Requested layer name -> full path.
  stats: checks.Stats | None
  latents: jax.Array | None  # [B, K] latent indices, or None for all D.
  valid: jax.Array | None  # [B, K], which traced latents lie in [0, D).
  num_examples: int  # B.
  code_size: int  # D.


def _trace(encode_fn, variables, x, args, kwargs) -> layers_lib.Traced:
  """:func:`layers_lib.trace`; an encoder that fails names the input shape."""
  try:
    return layers_lib.trace(encode_fn, variables, x, *args, **kwargs)
  except (TypeError, ValueError, flax.errors.FlaxError) as e:
    raise ValueError(
      f"encode_fn failed on an input of shape {tuple(x.shape)}; the "
      "model expects the NHWC shape it was built for. Original error: "
      f"{e}"
    ) from e


def _check_call(
  encode_fn, layers, code, variables, x, args, kwargs, *, key, stats, latents
) -> _Call:
  """Checks one call's arguments against an abstract pass of the encoder."""
  checks.check_images(x)
  checks.check_code_args(code, key, stats)
  traced = _trace(encode_fn, variables, x, args, kwargs)
  b, d = checks.code_shape(traced.output)
  if stats is not None:
    stats = checks.check_stats(stats, d)
  valid = None
  if latents is not None:
    latents, valid = checks.check_latents(latents, b, d)
  paths = layers_lib.resolve(layers, traced)
  return _Call(traced, paths, stats, latents, valid, b, d)


# The transform.
# ----------------------------------------------------------------------------


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
  single = isinstance(layer, str)
  layers = checks.check_options(
    encode_fn, layer, code, positive, gradient_scale, chunk_size, precision
  )
  rectify = jax.nn.relu if positive == "relu" else jnp.abs

  @functools.wraps(encode_fn)
  def value_and_attention_fn(
    variables, x, *args, key=None, stats=None, latents=None, **kwargs
  ):
    with matmul_precision(precision):
      call = _check_call(
        encode_fn,
        layers,
        code,
        variables,
        x,
        args,
        kwargs,
        key=key,
        stats=stats,
        latents=latents,
      )
      perturbed_code = offsets_lib.perturbed_code_fn(
        encode_fn,
        variables,
        x,
        args,
        kwargs,
        code_fn=_code_fn(code, key=key, stats=call.stats),
        offsets_folded=not gradient_scale,
      )
      deltas = offsets_lib.zero_offsets(
        call.traced.outputs,
        call.paths.values(),
        per_element=gradient_scale is not None,
      )
      z, pullback, (mu, logvar, acts) = jax.vjp(
        perturbed_code, deltas, has_aux=True
      )
      # Cotangent row k is one-hot on a latent for every example: examples
      # are independent, so its pullback holds d z_bi / d A_b for each b.
      cts = _cotangents(
        call.latents, call.num_examples, call.code_size, z.dtype
      )
      grads = _pull_all(pullback, cts, chunk_size)
      maps = {
        name: _maps(grads[p], acts[p], rectify, gradient_scale, call.valid)
        for name, p in call.paths.items()
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
