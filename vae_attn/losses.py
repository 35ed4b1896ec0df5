"""Per-example losses of the paper: ELBO pieces, FactorVAE TC and L_AD.

Every function returns one value per example (shape ``[B]``); reductions are
the caller's, as in optax. Shapes are checked, never silently broadcast.

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, https://arxiv.org/abs/1911.07389 (eq. 6-7).
  Kim & Mnih, "Disentangling by Factorising", ICML 2018,
  https://arxiv.org/abs/1802.05983 (FactorVAE, eq. 2-3).
  Higgins et al., "beta-VAE", ICLR 2017.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vae_attn.attention import value_and_attention

PAIR_MODES = ("random", "top2", "all")


def _check_same_shape(a: jax.Array, b: jax.Array, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(
      f"{names} must have the same shape, got {a.shape} and {b.shape}."
    )


def _sum_but_batch(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).sum(axis=-1)


def _random_pair(key: jax.Array, b: int, d: int) -> tuple[jax.Array, jax.Array]:
  """Two distinct latents ``i, j`` ``[B]`` per example, uniform."""
  k1, k2 = jax.random.split(key)
  i = jax.random.randint(k1, (b,), 0, d)
  return i, (i + jax.random.randint(k2, (b,), 1, d)) % d  # j: of the others.


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Bernoulli negative log-likelihood from logits, summed per example.

  ``-sum_p [x_p log sigmoid(l_p) + (1 - x_p) log(1 - sigmoid(l_p))]``, the BCE
  reconstruction term of the paper's VAEs (their Sigmoid output folded into a
  numerically stable loss). ``x`` may be soft targets in ``[0, 1]``.

  Args:
    logits: decoder output ``[B, ...]``.
    x: targets in ``[0, 1]``, same shape.

  Returns:
    ``[B]`` negative log-likelihoods in nats.
  """
  _check_same_shape(logits, x, "logits and x")
  return _sum_but_batch(optax.sigmoid_binary_cross_entropy(logits, x))


def gaussian_kl_per_dim(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL( N(mu_i, exp(logvar_i)) || N(0, 1) ) of each latent element.

  ``0.5 * (mu_i^2 + exp(logvar_i) - logvar_i - 1)`` (Kingma & Welling 2014,
  appendix B).

  Args:
    mu: posterior means ``[..., D]``.
    logvar: posterior log-variances, same shape.

  Returns:
    KL divergences in nats, the shape of ``mu``.
  """
  _check_same_shape(mu, logvar, "mu and logvar")
  return 0.5 * (mu**2 + jnp.exp(logvar) - logvar - 1.0)


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL( N(mu, diag exp(logvar)) || N(0, I) ), summed over latents.

  Args:
    mu: posterior means ``[B, D]``.
    logvar: posterior log-variances ``[B, D]``.

  Returns:
    ``[B]`` KL divergences in nats.
  """
  return _sum_but_batch(gaussian_kl_per_dim(mu, logvar))


def permute_dims(key: jax.Array, z: jax.Array) -> jax.Array:
  """Permutes each latent dimension independently across the batch.

  Samples of the product of marginals ``prod_i q(z_i)`` from samples of
  ``q(z)`` (Kim & Mnih 2018, Algorithm 1).

  Args:
    key: PRNG key.
    z: latent samples ``[B, D]``.

  Returns:
    ``[B, D]``: column ``i`` is a random permutation of ``z[:, i]``.
  """
  if z.ndim != 2:
    raise ValueError(f"z must be [B, D], got shape {z.shape}.")
  keys = jax.random.split(key, z.shape[1])
  perm = jax.vmap(lambda k: jax.random.permutation(k, z.shape[0]))(keys)
  return jnp.take_along_axis(z, perm.T, axis=0)


def total_correlation(disc_logits: jax.Array) -> jax.Array:
  """Density-ratio estimate of the total correlation, per example.

  ``TC(z) ~ log D(z) / (1 - D(z)) = logit_real - logit_perm`` for a
  discriminator with two logits, column 0 "from q(z)" and column 1 "from the
  product of marginals" (Kim & Mnih 2018, eq. 3).

  Args:
    disc_logits: discriminator logits ``[B, 2]`` on samples of ``q(z)``.

  Returns:
    ``[B]`` TC estimates.
  """
  if disc_logits.ndim != 2 or disc_logits.shape[-1] != 2:
    raise ValueError(
      f"disc_logits must be [B, 2], got shape {disc_logits.shape}."
    )
  return disc_logits[:, 0] - disc_logits[:, 1]


def discriminator_loss(
  logits_real: jax.Array, logits_perm: jax.Array
) -> jax.Array:
  """Cross-entropy of the TC discriminator, per example pair.

  ``0.5 * (CE(D(z), class 0) + CE(D(perm(z')), class 1))``.

  Args:
    logits_real: ``[B, 2]`` logits on samples of ``q(z)``.
    logits_perm: ``[B, 2]`` logits on permuted samples.

  Returns:
    ``[B]`` losses.
  """
  _check_same_shape(logits_real, logits_perm, "logits_real and logits_perm")
  real = optax.softmax_cross_entropy_with_integer_labels(
    logits_real, jnp.zeros(logits_real.shape[0], jnp.int32)
  )
  perm = optax.softmax_cross_entropy_with_integer_labels(
    logits_perm, jnp.ones(logits_perm.shape[0], jnp.int32)
  )
  return 0.5 * (real + perm)


def attention_overlap(map1: jax.Array, map2: jax.Array) -> jax.Array:
  """L_AD of two attention maps (paper eq. 6), per example.

  ``2 * sum_hw min(A1, A2) / sum_hw (A1 + A2)``: 1 when the maps are equal, 0
  when they do not overlap, in ``[0, 1]`` for non-negative maps. Two all-zero
  maps give 0.

  Args:
    map1: non-negative maps ``[B, h, w]``.
    map2: non-negative maps ``[B, h, w]``.

  Returns:
    ``[B]`` overlaps.
  """
  _check_same_shape(map1, map2, "map1 and map2")
  inter = _sum_but_batch(jnp.minimum(map1, map2))
  total = _sum_but_batch(map1 + map2)
  return 2.0 * inter / jnp.maximum(total, 1e-12)


def attention_disentanglement(
  maps: jax.Array,
  key: jax.Array | None = None,
  *,
  mode: str = "random",
  scores: jax.Array | None = None,
) -> jax.Array:
  """The attention disentanglement loss L_AD (paper eq. 6-7), per example.

  Picks pairs of latent elements of the same image and returns the overlap
  :func:`attention_overlap` of their maps. Pair modes (docs/paper.md#decisions):

  - ``"random"`` (default): two distinct latents drawn at random per example
    (needs ``key``), as in the public reproduction.
  - ``"top2"``: the two highest-responding latents per example, by ``scores``
    ``[B, D]`` if given, else by the total mass of each map.
  - ``"all"``: the mean overlap over all ``D (D - 1) / 2`` pairs.

  Args:
    maps: per-latent attention maps ``[B, D, h, w]`` (non-negative,
      differentiable: the paper back-propagates through them).
    key: PRNG key for ``mode="random"``.
    mode: one of ``PAIR_MODES``.
    scores: optional ``[B, D]`` responses for ``mode="top2"``.

  Returns:
    ``[B]`` values in ``[0, 1]``.
  """
  if maps.ndim != 4:
    raise ValueError(f"maps must be [B, D, h, w], got shape {maps.shape}.")
  b, d = maps.shape[:2]
  if d < 2:
    raise ValueError(f"L_AD needs at least 2 latents, got D={d}.")
  if mode not in PAIR_MODES:
    raise ValueError(f"Unknown pair mode {mode!r}; choose one of {PAIR_MODES}.")
  rows = jnp.arange(b)
  if mode == "random":
    if key is None:
      raise ValueError('mode="random" needs a PRNG key: pass key=...')
    i, j = _random_pair(key, b, d)
    return attention_overlap(maps[rows, i], maps[rows, j])
  if mode == "top2":
    if scores is None:
      scores = maps.reshape(b, d, -1).sum(-1)
    elif scores.shape != (b, d):
      raise ValueError(f"scores must be [B, D]={b, d}, got {scores.shape}.")
    _, top = jax.lax.top_k(jax.lax.stop_gradient(scores), 2)
    return attention_overlap(maps[rows, top[:, 0]], maps[rows, top[:, 1]])
  # mode == "all": every unordered pair once.
  flat = maps.reshape(b, d, -1)
  inter = jnp.minimum(flat[:, :, None, :], flat[:, None, :, :]).sum(-1)
  mass = flat.sum(-1)
  total = mass[:, :, None] + mass[:, None, :]
  overlap = 2.0 * inter / jnp.maximum(total, 1e-12)
  iu, ju = jnp.triu_indices(d, k=1)
  return overlap[:, iu, ju].mean(-1)


def random_pair_ad(
  encode_fn,
  layer: str,
  variables,
  x: jax.Array,
  key: jax.Array,
  *,
  precision: str | None = "highest",
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """The posterior and L_AD of one random pair of latents per example.

  Equal to ``attention_disentanglement(maps, key, mode="random")`` on the
  maps of all D latents (the same pair), but computing only the two maps
  used (``latents=``), from the encoder pass that gives ``(mu, logvar)``.

  Args:
    encode_fn: ``(variables, x) -> (mu, logvar)``.
    layer: the attention layer (``"encoder/conv1"`` in the paper).
    variables: the encoder's variables.
    x: images ``[B, H, W, C]``.
    key: draws the pair ``i != j`` of each example.
    precision: of the encoder pass and the maps (``attention.PRECISIONS``);
      ``None`` keeps the caller's (a train step traced under its own).

  Returns:
    ``((mu, logvar), l_ad)`` with ``l_ad`` of shape ``[B]`` (eq. 6).
  """
  d = jax.eval_shape(encode_fn, variables, x)[0].shape[-1]
  i, j = _random_pair(key, x.shape[0], d)
  (mu, logvar), maps = value_and_attention(
    encode_fn, layer, precision=precision
  )(variables, x, latents=jnp.stack([i, j], axis=1))
  l_ad = attention_overlap(maps.per_latent[:, 0], maps.per_latent[:, 1])
  return (mu, logvar), l_ad
