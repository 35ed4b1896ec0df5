"""Latent population statistics and eq. 5 anomaly maps."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_attn import anomaly, attention, models


def test_streaming_statistics_equal_the_aggregate_posterior_moments():
  key_mu, key_lv = jax.random.split(jax.random.key(0))
  mu = jax.random.normal(key_mu, (50, 3)) * 2 + 1
  logvar = jax.random.normal(key_lv, (50, 3))
  acc = anomaly.StatsAccumulator.init(3)
  for start in range(0, 50, 16):  # Uneven batches: 16, 16, 16, 2.
    acc = acc.update(mu[start : start + 16], logvar[start : start + 16])
  stats = acc.result()
  np.testing.assert_allclose(stats.mean, mu.mean(0), rtol=1e-5)
  expected_var = jnp.exp(logvar).mean(0) + mu.var(0)
  np.testing.assert_allclose(stats.var, expected_var, rtol=1e-5)
  assert int(stats.count) == 50


def test_latent_statistics_of_an_encoder():
  model = models.mnist_vae(latent_dim=4)
  x = jax.random.uniform(jax.random.key(0), (10, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  batches = [{"image": np.asarray(x[:6])}, {"image": np.asarray(x[6:])}]
  stats = anomaly.latent_statistics(encode, variables, batches)
  mu, logvar = encode(variables, x)
  np.testing.assert_allclose(stats.mean, mu.mean(0), atol=1e-5)
  np.testing.assert_allclose(
    stats.var, jnp.exp(logvar).mean(0) + mu.var(0), atol=1e-5
  )
  with pytest.raises(ValueError, match="no batches"):
    anomaly.latent_statistics(encode, variables, [])


@pytest.mark.parametrize("code", ["difference", "sample"])
def test_mean_over_draws_averages_the_code_draws(code):
  model = models.mnist_vae(latent_dim=4)
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  stats = anomaly.LatentStats(jnp.zeros(4), jnp.ones(4), jnp.asarray(1.0))
  key = jax.random.key(3)
  extra = {"stats": stats} if code == "difference" else {}
  got = anomaly.mean_over_draws(
    encode, "conv2", variables, x, key, code=code, num_samples=3, **extra
  )
  chex.assert_shape(got.mean, (2, 7, 7))
  fn = attention.attention(encode, "conv2", code=code)
  draws = jnp.stack(
    [fn(variables, x, key=k, **extra).mean for k in jax.random.split(key, 3)]
  )
  np.testing.assert_allclose(got.mean, draws.mean(0), atol=1e-6)
  assert jnp.any(draws.std(0) > 0)  # The draws differ: a real average.


def test_residual_map():
  x = jnp.zeros((1, 2, 2, 3))
  x_hat = jnp.ones((1, 2, 2, 3)) * jnp.array([0.0, 0.3, 0.6])
  np.testing.assert_allclose(anomaly.residual_map(x, x_hat), 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    anomaly.residual_map(x, x_hat[:, :1])


def test_difference_attention_takes_the_checkpoint_dict_and_checks_stats():
  model = models.mnist_vae(latent_dim=4)
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  stats = anomaly.LatentStats(
    jnp.linspace(-1, 1, 4), jnp.linspace(0.5, 2, 4), jnp.asarray(5.0)
  )
  key = jax.random.key(3)
  want = anomaly.difference_attention(encode, "conv2", variables, x, stats, key)
  got = anomaly.difference_attention(
    encode, "conv2", variables, x, stats._asdict(), key
  )
  chex.assert_trees_all_close(got, want, atol=0)
  bad = stats._replace(var=stats.var.at[0].set(-1.0))
  with pytest.raises(ValueError, match="non-negative"):
    anomaly.difference_attention(encode, "conv2", variables, x, bad, key)
  with pytest.raises(ValueError, match=r"shape \(3,\).*D=4"):
    anomaly.difference_attention(
      encode, "conv2", variables, x, stats._replace(mean=jnp.zeros(3)), key
    )


def test_difference_attention_several_layers_averages_each_draw():
  model = models.mnist_vae(latent_dim=4)
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  stats = anomaly.LatentStats(jnp.zeros(4), jnp.ones(4), jnp.asarray(1.0))
  key = jax.random.key(3)
  layers = ["encoder/conv1", "conv2"]
  got = jax.jit(
    lambda v, x, s, k: anomaly.difference_attention(
      encode, layers, v, x, s, k, num_samples=3
    )
  )(variables, x, stats, key)
  assert set(got) == set(layers)  # jit returns dicts in key order.
  chex.assert_shape(got["conv2"].per_latent, (2, 4, 7, 7))
  chex.assert_shape(got["encoder/conv1"].mean, (2, 14, 14))
  for layer in layers:
    fn = attention.attention(encode, layer, code="difference")
    draws = [
      fn(variables, x, key=k, stats=stats) for k in jax.random.split(key, 3)
    ]
    for field in ("per_latent", "mean"):
      expected = jnp.stack([getattr(d, field) for d in draws]).mean(0)
      np.testing.assert_allclose(
        getattr(got[layer], field), expected, atol=1e-6
      )
  # One layer alone gives the same average.
  one = anomaly.difference_attention(
    encode, "conv2", variables, x, stats, key, num_samples=3
  )
  np.testing.assert_allclose(one.mean, got["conv2"].mean, atol=1e-6)
  with pytest.raises(ValueError, match="num_samples"):
    anomaly.difference_attention(
      encode, "conv2", variables, x, stats, key, num_samples=0
    )
