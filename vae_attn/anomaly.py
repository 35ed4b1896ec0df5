"""Anomaly attention: latent statistics of normal data and eq. 5 maps.

A one-class VAE is trained on normal data only. The population statistics of
the normal data in latent space (docs/paper.md#decisions: the moments of
the aggregate posterior, ``mean = E[mu(x)]`` and
``var = E[sigma(x)^2] + Var[mu(x)]``) define, for a test image ``y``, the
normal difference distribution of eq. 5,

    u_i ~ N(mu^x_i - mu^y_i, (sigma^x_i)^2 + (sigma^y_i)^2),

sampled with the reparameterisation (:func:`difference_code`) so that its
Grad-CAM maps at a conv layer localise what makes ``y`` abnormal. The
baseline is the per-pixel reconstruction residual ``|x - x_hat|``.

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, https://arxiv.org/abs/1911.07389 (section 3.3, eq. 5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import attention as attention_lib
from vae_attn.attention import difference_code

__all__ = [
  "LatentStats",
  "StatsAccumulator",
  "difference_attention",
  "difference_code",
  "latent_statistics",
  "mean_over_draws",
  "residual_map",
]


class LatentStats(NamedTuple):
  """Latent population statistics of a data set (a pytree).

  Attributes:
    mean: ``[D]``, ``mu^x = E_x[mu(x)]``.
    var: ``[D]``, ``(sigma^x)^2 = E_x[sigma(x)^2] + Var_x[mu(x)]``.
    count: number of examples they were computed from.
  """

  mean: jax.Array
  var: jax.Array
  count: jax.Array


class StatsAccumulator(NamedTuple):
  """Streaming state: count, mean and M2 of ``mu``, and sum of ``sigma^2``.

  Batches merge with Chan et al.'s parallel update, so the result does not
  depend on how the data set is batched (up to float rounding).
  """

  count: jax.Array
  mean_mu: jax.Array
  m2_mu: jax.Array
  sum_var: jax.Array

  @classmethod
  def init(cls, latent_dim: int) -> StatsAccumulator:
    zeros = jnp.zeros((latent_dim,), jnp.float32)
    return cls(jnp.zeros((), jnp.float32), zeros, zeros, zeros)

  def update(self, mu: jax.Array, logvar: jax.Array) -> StatsAccumulator:
    """Adds a batch of posteriors ``mu, logvar`` ``[B, D]``."""
    n_b = jnp.asarray(mu.shape[0], jnp.float32)
    mean_b = mu.mean(axis=0)
    m2_b = ((mu - mean_b) ** 2).sum(axis=0)
    n = self.count + n_b
    delta = mean_b - self.mean_mu
    mean = self.mean_mu + delta * n_b / n
    m2 = self.m2_mu + m2_b + delta**2 * self.count * n_b / n
    return StatsAccumulator(n, mean, m2, self.sum_var + jnp.exp(logvar).sum(0))

  def result(self) -> LatentStats:
    """The statistics of everything added so far."""
    var = (self.sum_var + self.m2_mu) / self.count
    return LatentStats(self.mean_mu, var, self.count)


def latent_statistics(
  encode_fn: Callable[..., tuple[jax.Array, jax.Array]],
  variables,
  batches: Iterable[np.ndarray | dict],
) -> LatentStats:
  """The :class:`LatentStats` of a data set streamed through the encoder.

  Args:
    encode_fn: ``(variables, x) -> (mu, logvar)``.
    variables: the model variables.
    batches: one pass of ``[B, H, W, C]`` arrays or of dicts with an
      ``"image"`` entry (e.g. ``data.pipeline.single_pass``).

  Raises:
    ValueError: ``batches`` is empty.
  """

  @jax.jit
  def step(acc, x):
    mu, logvar = encode_fn(variables, x)
    return acc.update(mu, logvar)

  acc = None
  for batch in batches:
    x = batch["image"] if isinstance(batch, dict) else batch
    if acc is None:
      mu_shape = jax.eval_shape(encode_fn, variables, jnp.asarray(x))[0]
      acc = StatsAccumulator.init(mu_shape.shape[-1])
    acc = step(acc, jnp.asarray(x))
  if acc is None:
    raise ValueError("latent_statistics got no batches: pass the normal data.")
  return acc.result()


def mean_over_draws(
  encode_fn: Callable[..., tuple[jax.Array, jax.Array]],
  layer: str | Sequence[str],
  variables,
  x: jax.Array,
  key: jax.Array,
  *,
  code: str,
  stats: LatentStats | None = None,
  num_samples: int = 8,
  **attention_kwargs,
) -> attention_lib.AttentionMaps | dict[str, attention_lib.AttentionMaps]:
  """Attention maps of a sampled code, averaged over ``num_samples`` draws.

  Each draw of ``eps`` gives the code (``"sample"``: ``z = mu + sigma *
  eps``; ``"difference"``: the eq. 5 code of :func:`difference_code`) and
  its per-latent maps (eq. 3) and mean map (eq. 4) at every requested layer,
  from one encoder pass per draw, in one compiled loop (``jax.lax.map``).
  Every array is an argument, so ``jax.jit`` with ``encode_fn`` and
  ``layer`` bound compiles the parameters as inputs, not constants.

  Args:
    encode_fn: ``(variables, x) -> (mu, logvar)``.
    layer: a conv layer path such as ``"encoder/conv2"`` (or a unique
      suffix), or a sequence of them (the layer ablation).
    variables: model variables.
    x: images, floating point ``[B, H, W, C]``.
    key: PRNG key of the draws.
    code: ``"sample"`` or ``"difference"``.
    stats: normal-data statistics (``"difference"`` only) from
      :func:`latent_statistics`, or the dict of their ``mean`` and ``var``
      as checkpoints store it.
    num_samples: number of draws, ``>= 1``.
    **attention_kwargs: passed to :func:`vae_attn.attention.attention`
      (``positive``, ``gradient_scale``, ``chunk_size``, ``precision``).

  Returns:
    An :class:`vae_attn.attention.AttentionMaps` (``per_latent [B, D, h, w]``
    and ``mean [B, h, w]``, float32, averaged over the draws) for one layer,
    or a dict from each requested layer name to one.

  Raises:
    TypeError, ValueError: ``num_samples`` is not a positive int, or as
      :func:`vae_attn.attention.value_and_attention` (unknown layer, bad
      images or statistics).
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int):
    raise TypeError(f"num_samples must be an int, got {num_samples!r}.")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  fn = attention_lib.attention(encode_fn, layer, code=code, **attention_kwargs)
  extra = {} if stats is None else {"stats": stats}
  keys = jax.random.split(key, num_samples)
  draws = jax.lax.map(lambda k: fn(variables, x, key=k, **extra), keys)
  return jax.tree.map(lambda m: m.mean(axis=0), draws)


def difference_attention(
  encode_fn: Callable[..., tuple[jax.Array, jax.Array]],
  layer: str | Sequence[str],
  variables,
  x: jax.Array,
  stats: LatentStats,
  key: jax.Array,
  *,
  num_samples: int = 8,
  **attention_kwargs,
) -> attention_lib.AttentionMaps | dict[str, attention_lib.AttentionMaps]:
  """Anomaly attention of eq. 5: :func:`mean_over_draws` of the difference
  code of test images ``x`` from the normal-data ``stats``.

  References:
    Liu et al., CVPR 2020, section 3.3, eq. 5 (docs/paper.md).
  """
  return mean_over_draws(
    encode_fn,
    layer,
    variables,
    x,
    key,
    code="difference",
    stats=stats,
    num_samples=num_samples,
    **attention_kwargs,
  )


def residual_map(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """The reconstruction-residual baseline ``|x - x_hat|``, channel mean.

  Args:
    x: images ``[B, H, W, C]`` in ``[0, 1]``.
    x_hat: reconstructions (probabilities, e.g. ``sigmoid(logits)``), same
      shape.

  Returns:
    ``[B, H, W]`` residual maps.

  Raises:
    ValueError: the shapes differ.
  """
  if x.shape != x_hat.shape:
    raise ValueError(
      f"x and x_hat must have the same shape, got {x.shape} and "
      f"{x_hat.shape}; pass probabilities, not a different resolution."
    )
  return jnp.abs(x - x_hat).mean(axis=-1)
