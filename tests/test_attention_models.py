"""The attention transform on models it did not write: Flax NNX, plain JAX
(``checkpoint_name``), activations written as functions, its errors, and the
official code's map (issue 20)."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from vae_attn import anomaly, attention

D = 3
X = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))


def _close(got, want, tol=1e-6):
  """Equal to ``tol`` times the largest value of ``want``."""
  scale = max(float(np.abs(want).max()), 1e-30)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


# A Linen encoder and its NNX twin: conv -> relu, conv -> BatchNorm -> relu.
# ----------------------------------------------------------------------------


class LinenEncoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv1")(x))
    h = nn.Conv(6, (3, 3), use_bias=False, name="conv2")(h)
    h = nn.relu(nn.BatchNorm(use_running_average=True, name="bn2")(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


class NNXEncoder(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 4, (3, 3), strides=2, rngs=rngs)
    self.conv2 = nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(6, rngs=rngs)
    self.mu = nnx.Linear(4 * 4 * 6, D, rngs=rngs)
    self.logvar = nnx.Linear(4 * 4 * 6, D, rngs=rngs)

  def encode(self, x):
    h = nnx.relu(self.conv1(x))
    h = nnx.relu(self.bn2(self.conv2(h)))
    h = h.reshape(h.shape[0], -1)
    return self.mu(h), self.logvar(h)


@pytest.fixture(scope="module")
def twins():
  """Linen variables and an NNX model with the same weights."""
  linen = LinenEncoder()
  variables = linen.init(jax.random.key(1), X)
  # Non-trivial BatchNorm statistics, so that the norm matters.
  variables = jax.tree.map(lambda v: v, variables)
  stats = variables["batch_stats"]["bn2"]
  stats["mean"] = jnp.linspace(-0.2, 0.3, 6)
  stats["var"] = jnp.linspace(0.5, 2.0, 6)
  model = NNXEncoder(nnx.Rngs(0))
  model.eval()
  p = variables["params"]
  for name in ("conv1", "conv2", "mu", "logvar"):
    for leaf, value in p[name].items():
      getattr(getattr(model, name), leaf)[...] = value
  model.bn2.scale[...] = p["bn2"]["scale"] + 0.5
  model.bn2.bias[...] = p["bn2"]["bias"] + 0.1
  variables["params"]["bn2"] = {
    "scale": p["bn2"]["scale"] + 0.5,
    "bias": p["bn2"]["bias"] + 0.1,
  }
  model.bn2.mean[...] = stats["mean"]
  model.bn2.var[...] = stats["var"]
  return linen, variables, model


def _nnx_encode(model, x):
  return model.encode(x)


STATS = anomaly.LatentStats(jnp.linspace(-1, 1, D), jnp.linspace(0.5, 2, D), 1)
KEY = jax.random.key(5)


@pytest.mark.parametrize("code", ["mu", "sample", "difference"])
def test_nnx_model_gives_the_maps_of_its_linen_twin(twins, code):
  linen, variables, model = twins
  np.testing.assert_allclose(
    _nnx_encode(model, X)[0], linen.apply(variables, X)[0], atol=1e-6
  )
  layers = ["conv1", "conv2", "bn2"]
  kw = {"key": KEY} if code != "mu" else {}
  if code == "difference":
    kw["stats"] = STATS
  want = attention.attention(linen.apply, layers, code=code)(variables, X, **kw)
  nnx_fn = attention.attention(_nnx_encode, layers, code=code)
  got = jax.jit(nnx_fn)(model, X, **kw)
  for layer in layers:
    assert np.abs(want[layer].per_latent).max() > 1e-4
    _close(got[layer].per_latent, want[layer].per_latent)
    _close(got[layer].mean, want[layer].mean)
  if code == "mu":  # vmap over single images equals the batch.
    single = jax.vmap(lambda xi: nnx_fn(model, xi[None]))(X)
    for layer in layers:
      _close(single[layer].per_latent[:, 0], want[layer].per_latent)


def test_nnx_second_order_gradient_equals_linen(twins):
  linen, variables, model = twins
  linen_fn = attention.attention(linen.apply, "conv1")
  nnx_fn = attention.attention(_nnx_encode, "conv1")

  def linen_stat(params):
    maps = linen_fn({**variables, "params": params}, X)
    return (maps.per_latent**2).mean()

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def nnx_stat(params):
    maps = nnx_fn(nnx.merge(graphdef, params, rest), X)
    return (maps.per_latent**2).mean()

  want = jax.jit(jax.grad(linen_stat))(variables["params"])
  got = jax.jit(jax.grad(nnx_stat))(params)
  for name in ("conv1", "conv2", "mu"):
    _close(got[name]["kernel"][...], want[name]["kernel"], 1e-5)
  # The head reaches the maps only through d z / d A: second order.
  assert np.abs(want["mu"]["kernel"]).max() > 0


def test_nnx_value_and_attention_with_latents_equals_linen(twins):
  linen, variables, model = twins
  latents = jnp.array([[2, 0], [1, 1]])
  (mu, logvar), want = attention.value_and_attention(linen.apply, "conv2")(
    variables, X, latents=latents
  )
  fn = attention.value_and_attention(_nnx_encode, "conv2")
  (nnx_mu, nnx_logvar), got = jax.jit(fn)(model, X, latents=latents)
  chex.assert_shape(got.per_latent, (2, 2, 4, 4))
  _close(got.per_latent, want.per_latent)
  _close(nnx_mu, mu)
  _close(nnx_logvar, logvar)


def test_nnx_layer_paths_and_suffixes(twins):
  _, _, model = twins
  paths = attention.layer_paths(_nnx_encode, model, X)
  assert list(paths) == ["conv1", "conv2", "bn2"]
  assert paths["conv2"] == (2, 4, 4, 6)


# Plain JAX: a value named with checkpoint_name.
# ----------------------------------------------------------------------------


def _features(params, x):
  h = lax.conv_general_dilated(
    x, params["w1"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return jax.nn.gelu(h + params["b1"])


def _head(params, a):
  flat = a.reshape(a.shape[0], -1)
  return jnp.tanh(flat @ params["w2"]), flat @ params["w3"]


def plain_encode(params, x):
  return _head(params, checkpoint_name(_features(params, x), "features"))


@pytest.fixture(scope="module")
def plain_params():
  keys = jax.random.split(jax.random.key(2), 4)
  return {
    "w1": jax.random.normal(keys[0], (3, 3, 1, 5)) * 0.5,
    "b1": jax.random.normal(keys[1], (5,)) * 0.1,
    "w2": jax.random.normal(keys[2], (4 * 4 * 5, D)) * 0.3,
    "w3": jax.random.normal(keys[3], (4 * 4 * 5, D)) * 0.3,
  }


def _jacrev_gradcam(head_mu, a):
  """Signed Grad-CAM of every latent from the full Jacobian ``d mu / dA``."""
  jac = jax.jacrev(head_mu)(a)  # [B, D, B, h, w, n]
  b = a.shape[0]
  own = jac[jnp.arange(b), :, jnp.arange(b)]  # [B, D, h, w, n]
  alpha = own.mean(axis=(2, 3))
  return jnp.einsum("bhwn,bkn->bkhw", a, alpha)


@pytest.mark.parametrize("positive", [None, "relu", "abs"])
def test_checkpoint_name_matches_a_jacrev_reference(plain_params, positive):
  fn = attention.attention(plain_encode, "features", positive=positive)
  maps = jax.jit(fn)(plain_params, X)
  a = _features(plain_params, X)
  want = _jacrev_gradcam(lambda a: _head(plain_params, a)[0], a)
  assert np.abs(want).max() > 1e-4
  rectify = {None: lambda m: m, "relu": jax.nn.relu, "abs": jnp.abs}
  _close(maps.per_latent, rectify[positive](want), 1e-5)
  assert attention.layer_paths(plain_encode, plain_params, X) == {
    "features": (2, 4, 4, 5)
  }


# Activations written as functions (item 4).
# ----------------------------------------------------------------------------

ACTIVATIONS = [
  nn.relu,
  nn.leaky_relu,
  nn.elu,
  nn.silu,
  nn.gelu,
  nn.softplus,
  nn.tanh,
  nn.sigmoid,
]


class FunctionActivation(nn.Module):
  """``act(Conv(x))`` (or with BatchNorm between), the activation's output
  also named ``"act"`` to compare with."""

  act: object
  norm: bool = False

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3), strides=2, use_bias=not self.norm, name="conv")(x)
    if self.norm:
      h = nn.BatchNorm(use_running_average=True, name="bn")(h)
    h = checkpoint_name(self.act(h), "act")
    h = nn.Conv(5, (3, 3), strides=2, name="conv2")(h)
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda f: f.__name__)
def test_a_conv_followed_by_an_activation_gives_the_post_activation_map(
  act, norm
):
  model = FunctionActivation(act, norm)
  variables = model.init(jax.random.key(3), X)
  if norm:  # BatchNorm statistics away from the identity.
    stats = dict(variables["batch_stats"]["bn"])
    stats["mean"] = jnp.linspace(-0.3, 0.3, 4)
    variables = {**variables, "batch_stats": {"bn": stats}}
  fn = functools.partial(attention.attention, model.apply, positive=None)
  after = fn("act")(variables, X).per_latent
  assert np.abs(after).max() > 1e-4
  _close(fn("conv")(variables, X).per_latent, after)
  if norm:  # The norm's output flows into the activation too.
    _close(fn("bn")(variables, X).per_latent, after)
  before = fn("conv", after_activation=False)(variables, X).per_latent
  assert np.abs(before - after).max() > 1e-3 * np.abs(after).max()


class WrappedConv(nn.Module):
  """``relu(wrap(nn.Conv)(x))``: the target sits in a call body (remat/jit)."""

  wrap: object = None

  @nn.compact
  def __call__(self, x):
    conv = self.wrap(nn.Conv) if self.wrap else nn.Conv
    h = nn.relu(conv(4, (3, 3), strides=2, name="conv")(x))
    h = nn.relu(nn.Conv(5, (3, 3), strides=2, name="conv2")(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


@pytest.mark.parametrize("wrap", [nn.remat, nn.jit], ids=["remat", "jit"])
def test_a_wrapped_conv_gives_the_post_activation_map(wrap):
  variables = WrappedConv().init(jax.random.key(3), X)
  fn = functools.partial(attention.attention, layer="conv", positive=None)
  want = fn(WrappedConv().apply)(variables, X).per_latent
  before = fn(WrappedConv().apply, after_activation=False)(variables, X)
  assert np.abs(before.per_latent - want).max() > 1e-3 * np.abs(want).max()
  got = jax.jit(fn(WrappedConv(wrap).apply))(variables, X).per_latent
  _close(got, want)


class _Doubled(nn.Module):
  """A conv whose output is used twice inside the module: ``y + y / 2``."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(4, (3, 3), strides=2, name="conv")(x)
    return y + 0.5 * y


class _ReluStage(nn.Module):
  """conv -> relu inside one module."""

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))


def _wrapped_stage(x):  # nn.remat(conv -> relu), then BatchNorm outside.
  h = checkpoint_name(nn.remat(_ReluStage)(name="stage")(x), "A")
  return nn.BatchNorm(use_running_average=True)(h)


# (stage, dtype of the next conv): ``stage(x)`` names the paper's ``A`` "A"
# and targets ``conv`` (or ``stage/conv``) before it.
CHAINS = {
  "conv -> relu -> BatchNorm": lambda x: nn.BatchNorm(use_running_average=True)(
    checkpoint_name(nn.relu(nn.Conv(4, (3, 3), 2, name="conv")(x)), "A")
  ),
  "conv -> relu -> 2h + 1": lambda x: (
    2.0 * checkpoint_name(nn.relu(nn.Conv(4, (3, 3), 2, name="conv")(x)), "A")
    + 1.0
  ),
  "conv -> sinh": lambda x: checkpoint_name(
    jnp.sinh(nn.Conv(4, (3, 3), 2, name="conv")(x)), "A"
  ),
  "remat(conv, y + y / 2) -> relu": lambda x: checkpoint_name(
    nn.relu(nn.remat(_Doubled)(name="stage")(x)), "A"
  ),
  "remat(conv -> relu) -> BatchNorm": _wrapped_stage,
  "conv -> relu -> bfloat16 conv": lambda x: checkpoint_name(
    nn.relu(nn.Conv(4, (3, 3), 2, name="conv")(x)), "A"
  ),
}


class Chain(nn.Module):
  chain: str

  @nn.compact
  def __call__(self, x):
    h = CHAINS[self.chain](x)
    bf16 = "bfloat16" in self.chain
    h = nn.Conv(5, (3, 3), 2, dtype=jnp.bfloat16 if bf16 else None)(h)
    h = h.astype(jnp.float32).reshape(h.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_the_map_is_taken_after_the_last_nonlinearity(chain):
  """After the activation, without the affine steps that follow it, through
  call bodies, casts and every elementwise nonlinearity (the trials'
  cases; each was the pre-activation map)."""
  model = Chain(chain)
  variables = model.init(jax.random.key(3), X)
  stats = variables.get("batch_stats", {})
  stats = jax.tree.map(lambda v: v + jnp.linspace(0.1, 0.4, v.shape[-1]), stats)
  variables = {**variables, "batch_stats": stats} if stats else variables
  fn = functools.partial(attention.attention, model.apply, positive=None)
  want = fn("A")(variables, X).per_latent
  assert np.abs(want).max() > 1e-4
  got = jax.jit(fn("conv"))(variables, X).per_latent
  _close(got, want)


class NNXTransformed(NNXEncoder):
  """``encode`` runs its first stage under ``nnx.remat`` (no BatchNorm in
  training mode: the rebuilt state is not an update)."""

  def encode(self, x):
    h = nnx.remat(lambda conv, x: nnx.relu(conv(x)))(self.conv1, x)
    h = nnx.relu(self.bn2(self.conv2(h)))
    h = h.reshape(h.shape[0], -1)
    return self.mu(h), self.logvar(h)


def test_nnx_transforms_inside_encode_give_the_same_maps(twins):
  _, _, model = twins
  layers = ["conv1", "conv2"]
  want = attention.attention(_nnx_encode, layers)(model, X)
  twin = NNXTransformed(nnx.Rngs(0))
  nnx.update(twin, nnx.state(model))
  twin.eval()
  got = attention.attention(_nnx_encode, layers)(twin, X)

  def jitted(m, x):
    return nnx.jit(lambda m, x: m.encode(x))(m, x)

  got_jit = attention.attention(jitted, layers)(model, X)
  for layer in layers:
    _close(got[layer].per_latent, want[layer].per_latent)
    _close(got_jit[layer].per_latent, want[layer].per_latent)


class UsedTwice(nn.Module):
  """The conv's output feeds its activation and, beside it, the head."""

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3), strides=2, name="conv")(x)
    h = jnp.concatenate([h, nn.relu(h)], axis=-1).reshape(x.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


def test_a_value_used_beside_its_activation_is_taken_as_named():
  model = UsedTwice()
  variables = model.init(jax.random.key(3), X)
  fn = functools.partial(
    attention.attention, model.apply, "conv", positive=None
  )
  named = fn(after_activation=False)(variables, X).per_latent
  assert np.abs(named).max() > 1e-4
  _close(fn()(variables, X).per_latent, named)


# The official code's map (item 7).
# ----------------------------------------------------------------------------


class Official(nn.Module):
  """conv -> ReLU twice, then the Gaussian head."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv1")(x))
    h = nn.relu(nn.Conv(6, (3, 3), strides=2, name="conv2")(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D, name="mu")(h), nn.Dense(D, name="logvar")(h)


def _official_gradcam(variables, x):
  """liuem607/expVAE code/gradcam.py, step by step, at conv2 before its
  ReLU: backward of sum(mu), grads / (RMS over the batch + 1e-5), weights =
  spatial mean, grouped conv3d = sum_k w_k A_k, bilinear upsample, abs."""
  p = variables["params"]

  def to_conv2(x):
    h = nn.relu(nn.Conv(4, (3, 3), strides=2).apply({"params": p["conv1"]}, x))
    return nn.Conv(6, (3, 3), strides=2).apply({"params": p["conv2"]}, h)

  def from_conv2(a):
    h = nn.relu(a).reshape(a.shape[0], -1)
    return nn.Dense(D).apply({"params": p["mu"]}, h)

  activation = to_conv2(x)
  grads = jax.grad(lambda a: from_conv2(a).sum())(activation)
  grads = grads / (jnp.sqrt(jnp.mean(grads**2)) + 1e-5)
  weights = grads.mean(axis=(1, 2))  # AvgPool2d over the map: [B, n].
  gcam = jnp.einsum("bhwn,bn->bhw", activation, weights)
  size = x.shape[1:3]
  up = jax.image.resize(gcam, (x.shape[0], *size), "bilinear")
  return jnp.abs(up)


def test_official_options_reproduce_the_official_map():
  model = Official()
  x = jax.random.uniform(jax.random.key(4), (3, 16, 16, 1))
  variables = model.init(jax.random.key(3), x)
  fn = attention.attention(
    model.apply,
    "conv2",
    sum_latents=True,
    gradient_scale="batch_rms",
    positive=None,
    after_activation=False,
  )
  maps = jax.jit(fn)(variables, x)
  chex.assert_shape(maps.per_latent, (3, 1, 4, 4))
  got = jnp.abs(attention.upsample(maps.mean, x.shape[1:3]))
  want = _official_gradcam(variables, x)
  assert np.abs(want).max() > 1e-4
  _close(got, want, 1e-5)


# Errors that name the cause (item 5): (case, exception, key words).
# ----------------------------------------------------------------------------


class TrainingBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.BatchNorm(use_running_average=False, name="bn")(
      nn.Conv(2, (3, 3))(x)
    )
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D)(h), nn.Dense(D)(h)


class TrainingDropout(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dropout(0.5, deterministic=False)(nn.Conv(2, (3, 3), name="c")(x))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(D)(h), nn.Dense(D)(h)


class CalledTwice(nn.Module):
  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(1, (3, 3), name="conv")
    h = conv(conv(x)).reshape(x.shape[0], -1)
    return nn.Dense(D)(h), nn.Dense(D)(h)


def _case(name):
  """``(fn, args)`` of one misuse."""
  linen = LinenEncoder()
  variables = linen.init(jax.random.key(1), X)
  if name == "batchnorm in training mode":
    m = TrainingBatchNorm()
    return attention.attention(m.apply, "bn"), (m.init(KEY, X), X)
  if name == "batchnorm updating its mutable stats":  # As Linen trains.
    m = TrainingBatchNorm()

    def encode(v, x):
      return m.apply(v, x, mutable=["batch_stats"])[0]

    return attention.attention(encode, "bn"), (m.init(KEY, X), X)
  if name == "dropout given its rng":
    m = TrainingDropout()

    def encode(v, x):
      return m.apply(v, x, rngs={"dropout": KEY})

    return attention.attention(encode, "c"), (m.init(KEY, X), X)
  if name == "python control flow on a traced value":  # Not a shape error.

    def branchy(p, x):
      return (x.mean((1, 2, 3))[:, None] * p,) * 2 if x.mean() > 0 else None

    return attention.attention(branchy, "conv1"), (jnp.ones((1, D)), X)
  if name == "nnx batchnorm in training mode":
    model = NNXEncoder(nnx.Rngs(0))
    model.train()
    return attention.attention(_nnx_encode, "conv1"), (model, X)
  if name == "another channel count (nnx)":  # lax.conv's own ValueError.
    model = NNXEncoder(nnx.Rngs(0))
    model.eval()
    x3 = jnp.zeros((*X.shape[:3], 3))
    return attention.attention(_nnx_encode, "conv1"), (model, x3)
  if name == "variables['params'] alone":
    return attention.attention(linen.apply, "conv1"), (variables["params"], X)
  if name == "another input shape":
    return attention.attention(linen.apply, "conv1"), (
      variables,
      jnp.zeros((2, 12, 12, 1)),
    )
  if name == "no named value":
    return attention.attention(
      lambda p, x: (x.mean((1, 2, 3))[:, None] * p,) * 2, "conv1"
    ), (jnp.ones((1, D)), X)
  if name == "nnx merged inside encode_fn":
    graphdef, state = nnx.split(NNXEncoder(nnx.Rngs(0)))
    return attention.attention(
      lambda s, x: nnx.merge(graphdef, s).encode(x), "conv1"
    ), (state, X)
  if name == "layer called twice":
    m = CalledTwice()
    return attention.attention(m.apply, "conv"), (m.init(KEY, X), X)
  if name == "not a feature map":
    return attention.attention(linen.apply, "mu"), (variables, X)
  if name == "unknown layer":
    return attention.attention(linen.apply, "conv7"), (variables, X)
  if name == "images as a python list":  # Printed the whole list.
    return attention.attention(linen.apply, "conv1"), (variables, X.tolist())
  if name == "variables without batch_stats":  # Flax's own error.
    params = {"params": variables["params"]}
    return attention.attention(linen.apply, "conv1"), (params, X)
  if name == "an nnx model given to a linen apply":  # "not iterable"
    return attention.attention(linen.apply, "conv1"), (
      NNXEncoder(nnx.Rngs(0)),
      X,
    )
  if name == "a typo where no value is a feature map":  # Listed nothing.

    def flat(p, x):
      h = checkpoint_name(jnp.tanh(x.reshape(len(x), -1) @ p), "features")
      return h, h

    return attention.attention(flat, "feature"), (jnp.ones((64, D)), X)
  raise AssertionError(name)


ERRORS = [
  ("batchnorm in training mode", ValueError, ["BatchNorm", "evaluation mode"]),
  ("nnx batchnorm in training mode", ValueError, ["BatchNorm", "eval()"]),
  ("batchnorm updating its mutable stats", ValueError, ["BatchNorm 'bn'"]),
  ("dropout given its rng", ValueError, ["Dropout 'Dropout_0'", "determin"]),
  ("python control flow on a traced value", TypeError, ["bool"]),
  ("variables['params'] alone", ValueError, ["variables['params']"]),
  ("another input shape", ValueError, ["NHWC", "(2, 12, 12, 1)"]),
  ("another channel count (nnx)", ValueError, ["NHWC", ", 3)", "feature"]),
  ("no named value", ValueError, ["names no value", "checkpoint_name"]),
  ("nnx merged inside encode_fn", ValueError, ["nnx.Module", "first"]),
  ("layer called twice", ValueError, ["'conv'", "2 times"]),
  ("not a feature map", ValueError, ["'mu'", "[B, h, w, n]"]),
  ("unknown layer", ValueError, ["'conv7'", "conv1", "bn2"]),
  ("images as a python list", ValueError, ["got list", "jnp.asarray"]),
  ("variables without batch_stats", ValueError, ["whole variables dict"]),
  ("an nnx model given to a linen apply", TypeError, ["Linen", "nnx.Module"]),
  (
    "a typo where no value is a feature map",
    ValueError,
    ["did you mean 'features'", "features  (2, 3)"],
  ),
]


@pytest.mark.parametrize(
  "name, error, words", ERRORS, ids=[e[0] for e in ERRORS]
)
def test_errors_name_the_cause(name, error, words):
  fn, args = _case(name)
  with pytest.raises(error) as info:
    fn(*args)
  if name in ("no named value", "nnx merged inside encode_fn"):
    with pytest.raises(error, match="names no value"):  # Not an empty dict.
      attention.layer_paths(fn.__wrapped__, *args)
  for word in words:
    assert word in str(info.value), (word, str(info.value))
  nhwc = (
    "another input shape",
    "another channel count (nnx)",
    "images as a python list",
  )
  assert "NHWC" not in str(info.value) or name in nhwc
  assert len(str(info.value)) < 1000


class _Stage(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), strides=2, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.conv(x))


class _Nested(nnx.Module):
  def __init__(self, rngs):
    self.stage = _Stage(rngs)
    self.mu = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def encode(self, x):
    h = self.stage(x).reshape(x.shape[0], -1)
    return self.mu(h), jnp.zeros((x.shape[0], 3))


def test_an_nnx_path_may_be_written_with_dots_as_in_python():
  model = _Nested(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))

  def maps(layer):
    return attention.attention(lambda m, x: m.encode(x), layer)(model, x)

  dotted, slashed = maps("stage.conv"), maps("stage/conv")
  np.testing.assert_array_equal(dotted.per_latent, slashed.per_latent)
  assert dotted.per_latent.shape == (2, 3, 4, 4)
