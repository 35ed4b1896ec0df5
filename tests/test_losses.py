"""Known answers for the per-example losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_attn import losses, models
from vae_attn.attention import value_and_attention


def test_bernoulli_nll_matches_manual_bce():
  logits = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
  x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
  p = jax.nn.sigmoid(logits)
  manual = -(x * jnp.log(p) + (1 - x) * jnp.log(1 - p)).sum((1, 2, 3))
  np.testing.assert_allclose(losses.bernoulli_nll(logits, x), manual, rtol=1e-5)


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match="same shape"):
    losses.bernoulli_nll(jnp.zeros((2, 4)), jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="same shape"):
    losses.gaussian_kl(jnp.zeros((2, 4)), jnp.zeros((2, 3)))


def test_gaussian_kl_known_values():
  mu = jnp.array([[0.0, 0.0], [1.0, 2.0]])
  logvar = jnp.array([[0.0, 0.0], [jnp.log(2.0), 0.0]])
  expected = jnp.array([0.0, 0.5 * (1 + 2 - jnp.log(2.0) - 1) + 0.5 * 4])
  np.testing.assert_allclose(losses.gaussian_kl(mu, logvar), expected, 1e-6)


def test_elbo_terms_known_values():
  # Logits 0 give p = 1/2: the Bernoulli NLL is D log 2 whatever x is; mu = 1
  # and logvar = 0 cost 1/2 nat per latent element.
  logits = jnp.zeros((2, 8))
  x = jnp.array([[0.0] * 8, [1.0, 0.3, 0.0, 1.0, 0.5, 0.0, 1.0, 0.2]])
  mu = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  logvar = jnp.zeros((2, 3))
  np.testing.assert_allclose(
    losses.bernoulli_nll(logits, x), [8 * np.log(2)] * 2, rtol=1e-6
  )
  np.testing.assert_allclose(losses.gaussian_kl(mu, logvar), [0.5, 1.5])


def test_gaussian_kl_per_dim_known_values_and_sum():
  mu = jnp.array([[0.0, 1.0, 2.0]])
  logvar = jnp.array([[0.0, 0.0, np.log(2.0)]])
  # 0.5 (mu^2 + var - log var - 1): 0, 0.5, 0.5 (4 + 2 - log 2 - 1).
  expected = [[0.0, 0.5, 0.5 * (5.0 - np.log(2.0))]]
  per_dim = losses.gaussian_kl_per_dim(mu, logvar)
  np.testing.assert_allclose(per_dim, expected, rtol=1e-6)
  np.testing.assert_allclose(
    losses.gaussian_kl(mu, logvar), per_dim.sum(-1), rtol=1e-6
  )


def test_permute_dims_permutes_each_column_independently():
  z = jnp.arange(64.0 * 3).reshape(64, 3)
  zp = losses.permute_dims(jax.random.key(0), z)
  for i in range(3):
    np.testing.assert_array_equal(jnp.sort(zp[:, i]), z[:, i])
  # Columns are shuffled with different permutations.
  rows_p = (zp - z[0]) // 3
  assert not jnp.array_equal(rows_p[:, 0], rows_p[:, 1])


def test_total_correlation_and_discriminator_loss():
  logits = jnp.array([[2.0, -1.0], [0.0, 0.0]])
  np.testing.assert_allclose(losses.total_correlation(logits), [3.0, 0.0])
  with pytest.raises(ValueError, match=r"\[B, 2\]"):
    losses.total_correlation(jnp.zeros((2, 3)))
  real = jnp.array([[10.0, -10.0]])
  perm = jnp.array([[-10.0, 10.0]])
  assert losses.discriminator_loss(real, perm)[0] < 1e-6
  np.testing.assert_allclose(
    losses.discriminator_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2))),
    [jnp.log(2.0)],
    rtol=1e-6,
  )


def test_attention_overlap_known_answers():
  a = jax.random.uniform(jax.random.key(0), (2, 5, 5))
  np.testing.assert_allclose(losses.attention_overlap(a, a), 1.0, rtol=1e-6)
  left = jnp.zeros((1, 4, 4)).at[:, :, :2].set(1.0)
  right = jnp.zeros((1, 4, 4)).at[:, :, 2:].set(1.0)
  np.testing.assert_allclose(losses.attention_overlap(left, right), 0.0)
  half = jnp.zeros((1, 4, 4)).at[:, :, 1:3].set(1.0)
  np.testing.assert_allclose(losses.attention_overlap(left, half), 0.5)
  zero = jnp.zeros((1, 4, 4))
  np.testing.assert_allclose(losses.attention_overlap(zero, zero), 0.0)


@pytest.mark.parametrize("mode", losses.PAIR_MODES)
def test_l_ad_in_unit_interval_and_known_extremes(mode):
  maps = jax.random.uniform(jax.random.key(0), (8, 6, 5, 5)) ** 4
  out = losses.attention_disentanglement(maps, jax.random.key(1), mode=mode)
  chex.assert_shape(out, (8,))
  assert jnp.all((out >= 0) & (out <= 1))
  same = jnp.broadcast_to(maps[:, :1], maps.shape)
  np.testing.assert_allclose(
    losses.attention_disentanglement(same, jax.random.key(1), mode=mode),
    1.0,
    rtol=1e-6,
  )
  # One pixel per latent: all pairs are disjoint.
  disjoint = jnp.eye(6).reshape(1, 6, 6, 1) * jnp.ones((8, 1, 1, 1))
  np.testing.assert_allclose(
    losses.attention_disentanglement(disjoint, jax.random.key(1), mode=mode),
    0.0,
  )


def test_l_ad_random_pairs_are_distinct_latents():
  # Each latent map is constant with a distinct value: overlap of i and j is
  # 2 min / (vi + vj) < 1 unless i == j.
  d = 5
  vals = jnp.arange(1.0, d + 1)
  maps = jnp.broadcast_to(vals[None, :, None, None], (256, d, 2, 2))
  out = losses.attention_disentanglement(maps, jax.random.key(3))
  assert jnp.all(out < 1.0 - 1e-6)


def test_l_ad_all_mode_is_mean_over_pairs():
  maps = jax.random.uniform(jax.random.key(0), (2, 4, 3, 3))
  pairs = [
    losses.attention_overlap(maps[:, i], maps[:, j])
    for i in range(4)
    for j in range(i + 1, 4)
  ]
  np.testing.assert_allclose(
    losses.attention_disentanglement(maps, mode="all"),
    jnp.stack(pairs).mean(0),
    rtol=1e-6,
  )


def test_l_ad_top2_uses_scores():
  maps = jax.random.uniform(jax.random.key(0), (2, 4, 3, 3))
  scores = jnp.array([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 2.0, 1.0]])
  out = losses.attention_disentanglement(maps, mode="top2", scores=scores)
  expected = jnp.stack(
    [
      losses.attention_overlap(maps[0:1, 1], maps[0:1, 3])[0],
      losses.attention_overlap(maps[1:2, 0], maps[1:2, 2])[0],
    ]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_l_ad_bad_arguments():
  maps = jnp.ones((2, 3, 4, 4))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    losses.attention_disentanglement(maps)
  with pytest.raises(ValueError, match="Unknown pair mode"):
    losses.attention_disentanglement(maps, mode="pairs")
  with pytest.raises(ValueError, match=r"\[B, D, h, w\]"):
    losses.attention_disentanglement(maps[0], mode="all")


def test_random_pair_ad_equals_the_loss_on_all_maps():
  model = models.make_model("factorvae")
  x = (np.random.default_rng(0).random((4, 64, 64, 1)) < 0.2).astype("f4")
  variables = jax.jit(model.init)(jax.random.key(0), x, jax.random.key(1))
  encode_fn = lambda v, x: model.apply(v, x, method=model.encode)
  key = jax.random.key(7)

  @jax.jit
  def both(variables, x):
    (mu, _), maps = value_and_attention(encode_fn, "encoder/conv1")(
      variables, x
    )
    full = losses.attention_disentanglement(maps.per_latent, key)
    (pair_mu, _), pair = losses.random_pair_ad(
      encode_fn, "encoder/conv1", variables, x, key
    )
    return full, pair, mu, pair_mu

  full, pair, mu, pair_mu = both(variables, x)
  assert np.all(np.asarray(full) > 0)
  np.testing.assert_allclose(pair, full, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(pair_mu, mu, rtol=1e-6, atol=1e-6)
