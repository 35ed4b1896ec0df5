"""The attention transform against a hand-split Grad-CAM reference."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_attn import anomaly, attention, losses, models
from vae_attn.models.blocks import ConvBlock, ConvSpec, GaussianHead

D = 4


@pytest.fixture(scope="module")
def mnist():
  model = models.mnist_vae(latent_dim=D)
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  return model, variables, x, encode


def _split_encoder(variables):
  """The MNIST encoder by hand: features (conv1, conv2) and head."""
  p = variables["params"]["encoder"]

  def features(x):
    a = ConvBlock(ConvSpec(64)).apply({"params": p["conv1"]}, x)
    return ConvBlock(ConvSpec(128)).apply({"params": p["conv2"]}, a)

  def head(a):
    return GaussianHead(D, (1024,)).apply({"params": p["head"]}, a)

  return features, head


def _reference_maps(variables, x, code_fn, positive=jax.nn.relu, rms=False):
  """Grad-CAM per latent with jax.grad of each z_bi, one at a time."""
  features, head = _split_encoder(variables)
  a = features(x)
  maps = np.zeros((x.shape[0], D, a.shape[1], a.shape[2]), np.float32)
  for b in range(x.shape[0]):
    for i in range(D):
      g = jax.grad(lambda a_b, b=b, i=i: code_fn(*head(a_b[None]), b)[0, i])(
        a[b]
      )
      if rms:
        g = g / (jnp.sqrt(jnp.mean(g**2)) + 1e-5)
      alpha = g.mean(axis=(0, 1))
      maps[b, i] = positive(jnp.einsum("hwn,n->hw", a[b], alpha))
  return maps


def test_per_latent_maps_equal_hand_split_reference(mnist):
  _, variables, x, encode = mnist
  maps = attention.attention(encode, "encoder/conv2")(variables, x)
  ref = _reference_maps(variables, x, lambda mu, logvar, b: mu)
  chex.assert_shape(maps.per_latent, (2, D, 7, 7))
  np.testing.assert_allclose(maps.per_latent, ref, atol=1e-5, rtol=1e-5)
  assert np.abs(ref).max() > 1e-4  # Not a trivially zero comparison.


@pytest.mark.parametrize("positive", ["relu", "abs"])
def test_rms_scaling_and_abs_match_reference(mnist, positive):
  _, variables, x, encode = mnist
  fn = attention.attention(
    encode, "conv2", positive=positive, gradient_scale="rms"
  )
  rect = jax.nn.relu if positive == "relu" else jnp.abs
  ref = _reference_maps(
    variables, x, lambda mu, lv, b: mu, positive=rect, rms=True
  )
  np.testing.assert_allclose(fn(variables, x).per_latent, ref, atol=1e-4)


def test_sample_and_difference_codes_match_reference(mnist):
  _, variables, x, encode = mnist
  key = jax.random.key(7)
  eps = jax.random.normal(key, (2, D))
  stats = anomaly.LatentStats(
    jnp.linspace(-1, 1, D), jnp.linspace(0.5, 2, D), jnp.asarray(10.0)
  )
  sample = attention.attention(encode, "conv2", code="sample")
  ref = _reference_maps(
    variables,
    x,
    lambda mu, lv, b: mu + jnp.exp(0.5 * lv) * eps[b],
  )
  np.testing.assert_allclose(
    sample(variables, x, key=key).per_latent, ref, atol=1e-5
  )
  diff = attention.attention(encode, "conv2", code="difference")
  ref = _reference_maps(
    variables,
    x,
    lambda mu, lv, b: (
      (stats.mean - mu) + jnp.sqrt(stats.var + jnp.exp(lv)) * eps[b]
    ),
  )
  np.testing.assert_allclose(
    diff(variables, x, key=key, stats=stats).per_latent, ref, atol=1e-5
  )


def test_mean_map_is_mean_of_per_latent_maps(mnist):
  _, variables, x, encode = mnist
  maps = attention.attention(encode, "conv2")(variables, x)
  np.testing.assert_allclose(maps.mean, maps.per_latent.mean(1), rtol=1e-6)


def test_jit_equals_no_jit_and_vmap_equals_batch(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")
  eager = fn(variables, x)
  jitted = jax.jit(fn)(variables, x)
  chex.assert_trees_all_close(eager, jitted, atol=1e-6)
  single = jax.vmap(lambda xi: fn(variables, xi[None]))(x)
  chex.assert_trees_all_close(
    single.per_latent[:, 0], eager.per_latent, atol=1e-6
  )


def test_chunked_pullback_equals_vmap(mnist):
  _, variables, x, encode = mnist
  full = attention.attention(encode, "conv2")(variables, x)
  chunked = attention.attention(encode, "conv2", chunk_size=3)(variables, x)
  chex.assert_trees_all_close(full, chunked, atol=1e-6)


def test_selected_latents_equal_the_rows_of_all_maps(mnist):
  _, variables, x, encode = mnist
  full = attention.attention(encode, "conv2")(variables, x)
  latents = jnp.array([[2, 0], [1, 3]])
  (mu, _), some = attention.value_and_attention(encode, "conv2")(
    variables, x, latents=latents
  )
  chex.assert_shape(some.per_latent, (2, 2, 7, 7))
  expected = jnp.take_along_axis(
    full.per_latent, latents[:, :, None, None], axis=1
  )
  np.testing.assert_allclose(some.per_latent, expected, atol=1e-6)
  np.testing.assert_allclose(some.mean, expected.mean(1), atol=1e-6)
  np.testing.assert_allclose(mu, encode(variables, x)[0], atol=1e-6)
  with pytest.raises(ValueError, match=r"latents must be integer indices"):
    attention.attention(encode, "conv2")(variables, x, latents=latents[0])


def test_several_layers_in_one_call_equal_single_calls(mnist):
  _, variables, x, encode = mnist
  both = attention.attention(encode, ["conv1", "encoder/conv2"])(variables, x)
  assert set(both) == {"conv1", "encoder/conv2"}
  chex.assert_shape(both["conv1"].per_latent, (2, D, 14, 14))
  for layer in both:
    single = attention.attention(encode, layer)(variables, x)
    chex.assert_trees_all_close(both[layer], single, atol=1e-6)


def test_value_and_attention_returns_the_posterior(mnist):
  _, variables, x, encode = mnist
  (mu, logvar), maps = attention.value_and_attention(encode, "conv2")(
    variables, x
  )
  ref_mu, ref_logvar = encode(variables, x)
  np.testing.assert_allclose(mu, ref_mu, atol=1e-6)
  np.testing.assert_allclose(logvar, ref_logvar, atol=1e-6)
  chex.assert_shape(maps.mean, (2, 7, 7))


def test_l_ad_gradient_through_attention_is_finite_and_nonzero(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")

  def loss(params):
    maps = fn({"params": params}, x)
    return losses.attention_disentanglement(
      maps.per_latent, jax.random.key(0)
    ).mean()

  grads = jax.grad(loss)(variables["params"])
  chex.assert_tree_all_finite(grads)
  enc = grads["encoder"]
  total = sum(jnp.abs(g).sum() for g in jax.tree.leaves(enc))
  assert total > 0
  # Second order: the head's weights only reach L_AD through dz/dA.
  assert jnp.abs(enc["head"]["fc1"]["kernel"]).sum() > 0


def test_step_does_not_retrace(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(variables, x):
    return fn(variables, x).mean.sum()

  step(variables, x)
  step(variables, x + 1.0)


def test_unknown_layer_lists_valid_paths(mnist):
  _, variables, x, encode = mnist
  with pytest.raises(ValueError, match="conv7") as err:
    attention.attention(encode, "conv7")(variables, x)
  assert "encoder/conv1" in str(err.value)
  assert "encoder/conv2  (2, 7, 7, 128)" in str(err.value)


def test_wrong_input_shape_is_a_clear_error(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")
  with pytest.raises(ValueError, match=r"NHWC images \[B, H, W, C\]"):
    fn(variables, x[0])
  with pytest.raises(ValueError, match=r"input of shape \(2, 32, 32, 1\)"):
    fn(variables, jnp.zeros((2, 32, 32, 1)))


def test_bad_options_and_missing_arguments(mnist):
  _, variables, x, encode = mnist
  with pytest.raises(ValueError, match="Unknown code"):
    attention.attention(encode, "conv2", code="z")
  with pytest.raises(ValueError, match="Unknown positive"):
    attention.attention(encode, "conv2", positive="softplus")
  with pytest.raises(ValueError, match="pass key"):
    attention.attention(encode, "conv2", code="sample")(variables, x)
  with pytest.raises(ValueError, match="pass stats"):
    attention.attention(encode, "conv2", code="difference")(
      variables, x, key=jax.random.key(0)
    )


@pytest.mark.parametrize("size", [(28, 20), (3, 2), (56, 3)])
def test_upsample_equals_jax_image_resize(size):
  # Half-pixel bilinear without antialiasing (F.interpolate's), also when it
  # shrinks; to float32 rounding of the sample positions (XLA may fuse them).
  maps = jax.random.uniform(jax.random.key(0), (2, 3, 7, 5))
  up = attention.upsample(maps, size)
  ref = jax.image.resize(maps, (2, 3, *size), "bilinear", antialias=False)
  np.testing.assert_allclose(up, ref, atol=1e-6)


def test_upsample_inside_jit_with_new_shapes():
  # The interpolation matrices are cached: a first call under jit must not
  # leave a tracer in the cache for later traces.
  for size in ((5, 6), (5, 6), (3, 4)):
    maps = jnp.ones((2, *size))
    out = jax.jit(lambda m: attention.upsample(m, (10, 12)))(maps)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  np.testing.assert_allclose(attention.upsample(jnp.ones((5, 6)), 10), 1.0)


def test_normalize_maps_to_unit_range():
  maps = jax.random.normal(jax.random.key(0), (2, 4, 4))
  out = attention.normalize(maps)
  np.testing.assert_allclose(out.min((-2, -1)), 0.0, atol=1e-7)
  np.testing.assert_allclose(out.max((-2, -1)), 1.0, atol=1e-6)


# Misuse: one clear error each (issue 12 section 4, issue 14).
# ----------------------------------------------------------------------------


def test_latents_validated_when_concrete(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")
  for bad in ([[D, 0], [1, 2]], [[-1, 0], [1, 2]]):
    with pytest.raises(ValueError, match=rf"latents must lie in \[0, {D}\)"):
      fn(variables, x, latents=jnp.array(bad))
  with pytest.raises(TypeError, match="latents must be integer indices"):
    fn(variables, x, latents=jnp.array([[0.0, 1.0], [1.0, 2.0]]))
  with pytest.raises(ValueError, match="ragged"):
    fn(variables, x, latents=[[0, 1], [2]])
  with pytest.raises(ValueError, match=r"K >= 1"):
    fn(variables, x, latents=jnp.zeros((2, 0), jnp.int32))
  # A nested list is taken as the array it spells.
  as_list = fn(variables, x, latents=[[2, 0], [1, 3]])
  as_array = fn(variables, x, latents=jnp.array([[2, 0], [1, 3]]))
  chex.assert_trees_all_close(as_list, as_array, atol=1e-6)


def test_traced_latents_out_of_range_give_nan_maps(mnist):
  _, variables, x, encode = mnist
  fn = jax.jit(attention.attention(encode, "conv2"))
  maps = fn(variables, x, latents=jnp.array([[1, D], [2, -1]]))
  full = fn(variables, x, latents=jnp.array([[1, 0], [2, 0]]))
  np.testing.assert_allclose(maps.per_latent[:, 0], full.per_latent[:, 0])
  assert np.isnan(maps.per_latent[:, 1]).all()
  assert np.isnan(maps.mean).all()  # Not a halved mean.


def test_layer_must_be_a_path(mnist):
  _, variables, x, encode = mnist
  for bad in (None, 3, [], ["conv2", None], ""):
    with pytest.raises(TypeError, match="layer must be a layer path"):
      attention.attention(encode, bad)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32])
def test_integer_images_are_refused_with_the_conversion(mnist, dtype):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2")
  with pytest.raises(TypeError, match=r"floating-point images.*astype"):
    fn(variables, (x * 255).astype(dtype))


def test_empty_batch_is_a_clear_error(mnist):
  _, variables, x, encode = mnist
  with pytest.raises(ValueError, match="empty batch"):
    attention.attention(encode, "conv2")(variables, x[:0])


def _stats(mean, var):
  return anomaly.LatentStats(jnp.asarray(mean), jnp.asarray(var), 10.0)


def test_stats_checked_and_accepted_as_the_checkpoint_dict(mnist):
  _, variables, x, encode = mnist
  fn = attention.attention(encode, "conv2", code="difference")
  key = jax.random.key(0)
  stats = _stats(jnp.linspace(-1, 1, D), jnp.linspace(0.5, 2, D))
  want = fn(variables, x, key=key, stats=stats)
  # As the one-class trainer saves it: LatentStats._asdict().
  got = fn(variables, x, key=key, stats=stats._asdict())
  chex.assert_trees_all_close(got, want, atol=0)
  with pytest.raises(ValueError, match=rf"shape \(5,\).*D={D}"):
    fn(variables, x, key=key, stats=_stats(jnp.zeros(5), jnp.ones(5)))
  with pytest.raises(ValueError, match="NaN or infinite"):
    fn(variables, x, key=key, stats=_stats(jnp.zeros(D), jnp.full(D, jnp.nan)))
  with pytest.raises(ValueError, match="non-negative"):
    fn(variables, x, key=key, stats=_stats(jnp.zeros(D), -jnp.ones(D)))
  with pytest.raises(TypeError, match="'mean' and 'var'"):
    fn(variables, x, key=key, stats={"mean": stats.mean})
  with pytest.raises(TypeError, match="stats must be"):
    fn(variables, x, key=key, stats=stats.var)


def test_traced_negative_variance_gives_nan_maps(mnist):
  _, variables, x, encode = mnist
  fn = jax.jit(attention.attention(encode, "conv2", code="difference"))
  var = jnp.ones(D).at[1].set(-0.5)
  maps = fn(
    variables, x, key=jax.random.key(0), stats=_stats(jnp.zeros(D), var)
  )
  assert np.isnan(maps.per_latent).all()  # Every z_i depends on all of A.


@pytest.mark.parametrize("code", ["mu", "sample"])
def test_stats_with_another_code_is_refused(mnist, code):
  _, variables, x, encode = mnist
  stats = _stats(jnp.zeros(D), jnp.ones(D))
  with pytest.raises(ValueError, match=r'stats= is used only by code="diff'):
    attention.attention(encode, "conv2", code=code)(
      variables, x, key=jax.random.key(0), stats=stats
    )


@pytest.mark.parametrize("size", [0, (0, 5), (5, -1), 2.5, (3,)])
def test_upsample_to_a_non_positive_size_is_refused(size):
  with pytest.raises(ValueError, match="size must be a positive int"):
    attention.upsample(jnp.ones((2, 3, 3)), size)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_normalize_of_a_constant_map_is_zero_in_every_dtype(dtype):
  maps = jnp.stack([jnp.full((4, 4), 3.0), jnp.arange(16.0).reshape(4, 4)])
  out = attention.normalize(maps.astype(dtype))
  assert out.dtype == dtype
  np.testing.assert_array_equal(np.asarray(out[0], np.float32), 0.0)
  np.testing.assert_allclose(
    np.asarray(out[1], np.float32), np.arange(16).reshape(4, 4) / 15, atol=4e-3
  )


class _Encoder(nn.Module):
  """MNIST-like encoder, ``remat`` naming which stages are rematerialised."""

  remat: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x):
    for i, features in enumerate((4, 6)):
      name = f"conv{i + 1}"
      block = nn.remat(ConvBlock) if name in self.remat else ConvBlock
      x = block(ConvSpec(features), name=name)(x)
    return GaussianHead(3, (8,), name="head")(x)


def test_remat_around_the_target_gives_the_same_maps():
  # nn.remat traces the block into a jax.checkpoint call, which is inlined.
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 1))
  plain = _Encoder()
  variables = jax.jit(plain.init)(jax.random.key(1), x)
  want = attention.attention(plain.apply, "conv1")(variables, x)
  lifted = _Encoder(remat=("conv1",))
  got = jax.jit(attention.attention(lifted.apply, "conv1"))(variables, x)
  chex.assert_trees_all_close(got, want, atol=1e-6)
  assert np.abs(want.per_latent).max() > 1e-3


def test_remat_elsewhere_gives_the_same_maps():
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 1))
  plain = _Encoder()
  variables = jax.jit(plain.init)(jax.random.key(1), x)
  want = attention.attention(plain.apply, "conv1")(variables, x)
  lifted = _Encoder(remat=("conv2",))
  got = attention.attention(lifted.apply, "conv1")(variables, x)
  chex.assert_trees_all_close(got, want, atol=1e-6)
  assert np.abs(want.per_latent).max() > 1e-3


def test_layer_paths_lists_each_target_once(mnist):
  _, variables, x, encode = mnist
  assert list(attention.layer_paths(encode, variables, x)) == [
    "encoder/conv1",
    "encoder/conv2",
  ]
  # The bare conv inside a block is still a valid (pre-ReLU) target.
  inner = attention.attention(encode, "conv2/conv")(variables, x)
  chex.assert_shape(inner.per_latent, (2, D, 7, 7))


def test_resnet_layer_paths_are_blocks_not_their_layers():
  model = models.make_model("resnet18", latent_dim=D, image_size=64)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, jax.random.key(1))
  )
  encode = functools.partial(model.apply, method=model.encode)
  paths = list(attention.layer_paths(encode, variables, x))
  stage = [p for p in paths if p.startswith("encoder/stage2_block1")]
  assert stage == [
    "encoder/stage2_block1",
    "encoder/stage2_block1/conv1",
    "encoder/stage2_block1/conv2",
    "encoder/stage2_block1/downsample",
  ]
  assert paths[0] == "encoder/stem"
  assert len(paths) == 1 + 4 * 2 * 3 + 3  # Stem, blocks and convs, downs.


class _PoolingHead(nn.Module):
  """Pools before its first Dense (no flatten to fold the offset into)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8, name="fc1")(x.mean((1, 2))))
    return nn.Dense(3, name="mu")(x), nn.Dense(3, name="logvar")(x)


class _Encoder2(nn.Module):
  head: nn.Module

  @nn.compact
  def __call__(self, x):
    return self.head(ConvBlock(ConvSpec(4), name="conv1")(x))


def test_heads_that_fold_or_not_match_the_hand_split_reference():
  # The flatten -> Dense head takes the offset folded in closed form; the
  # pooling head takes it as it is. Both equal jax.grad of the split model.
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 1))
  for head in (GaussianHead(3, (8,)), _PoolingHead()):
    model = _Encoder2(head)
    variables = jax.jit(model.init)(jax.random.key(1), x)
    p = variables["params"]
    a = ConvBlock(ConvSpec(4)).apply({"params": p["conv1"]}, x)

    def mu_fn(a_b, p=p, head=head):
      return head.apply({"params": p["head"]}, a_b[None])[0][0]

    g = jax.vmap(jax.jacrev(mu_fn))(a)
    want = jax.nn.relu(jnp.einsum("bhwn,bkn->bkhw", a, g.mean((2, 3))))
    got = attention.attention(model.apply, "conv1")(variables, x)
    np.testing.assert_allclose(got.per_latent, want, atol=1e-6)
    assert np.abs(want).max() > 1e-3


def test_resolve_layers_gives_full_paths_or_lists_the_valid_ones(mnist):
  _, variables, x, encode = mnist
  got = attention.resolve_layers(
    encode, variables, x, ["conv2", "encoder/conv1", "conv1/conv"]
  )
  assert got == {
    "conv2": "encoder/conv2",
    "encoder/conv1": "encoder/conv1",
    "conv1/conv": "encoder/conv1/conv",
  }
  assert attention.resolve_layers(encode, variables, x, "conv1") == {
    "conv1": "encoder/conv1"
  }
  # An ambiguous name lists its matches; an unknown one the close names.
  with pytest.raises(
    ValueError,
    match=r"(?s)'conv' matches 2 layers; did you mean "
    r"'encoder/conv1/conv', 'encoder/conv2/conv'\?.*"
    r"encoder/conv2  \(2, 7, 7, 128\)",
  ):
    attention.resolve_layers(encode, variables, x, "conv")
  with pytest.raises(
    ValueError,
    match=r"'conv9' matches no layer; did you mean 'encoder/conv1', "
    r"'encoder/conv2'\?",
  ):
    attention.resolve_layers(encode, variables, x, ["conv9"])
  with pytest.raises(
    ValueError,
    match=r"'cnov2' matches no layer; did you mean .*'encoder/conv2'",
  ):
    attention.resolve_layers(encode, variables, x, ["cnov2"])
