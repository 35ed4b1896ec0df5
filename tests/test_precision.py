"""Precision of the attention transform: lowered program and float64 truth."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_attn import attention, models

D = 4
_OP = re.compile(r"stablehlo\.(dot_general|convolution)")


def _model(name, **kwargs):
  model = models.make_model(name, latent_dim=D, **kwargs)
  return model, functools.partial(model.apply, method=model.encode)


# (model, its arguments, input shape, the paper's layers at that input).
PAPER = {
  "mnist": ({}, (2, 28, 28, 1), ["conv1", "conv2"]),
  # Ped1's conv stages at a smaller input (48 -> 24 -> 12 -> 6).
  "ped1": ({}, (2, 48, 48, 1), ["conv1", "conv2", "conv3"]),
  "factorvae": ({}, (2, 64, 64, 1), ["conv1", "conv2", "conv3", "conv4"]),
  # At 64x64 the last stage is 2x2: the matmul fast path of ops.py runs.
  "resnet18": (
    {"image_size": 64},
    (2, 64, 64, 3),
    [f"stage{s}_block1/conv1" for s in (1, 2, 3, 4)],
  ),
}


def _precisions(text: str) -> list[str]:
  """The operand precisions of every dot_general and convolution."""
  found = []
  for line in text.splitlines():
    if not _OP.search(line):
      continue
    names = re.findall(r"precision(?:_config)? = \[([^\]]*)\]", line)
    assert names, f"no precision on: {line.strip()[:200]}"
    found += re.findall(r"(DEFAULT|HIGHEST|HIGH)\b", names[0])
  return found


@pytest.mark.parametrize("name", ["mnist", "factorvae", "resnet18"])
@pytest.mark.parametrize(
  "precision, want", [("highest", "HIGHEST"), ("default", "DEFAULT")]
)
def test_every_dot_and_conv_carries_the_precision(name, precision, want):
  """Also in the second-order derivative, whose custom VJPs (ops.py) are
  traced after the transform returns, outside its precision scope."""
  kwargs, shape, layers = PAPER[name]
  model, encode = _model(name, **kwargs)
  x = jnp.zeros((1, *shape[1:]))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, jax.random.key(1))
  )
  fn = attention.attention(encode, layers[0], precision=precision)

  def loss(params, variables):
    maps = fn({**variables, "params": params}, x)
    return jnp.sum(maps.per_latent**2)

  text = jax.jit(jax.grad(loss)).lower(variables["params"], variables)
  text = text.as_text()
  found = _precisions(text)
  assert len(found) > 20  # Forward, pullback and their derivatives.
  assert set(found) == {want}


def test_precision_none_inherits_the_callers_setting():
  model, encode = _model("mnist")
  x = jnp.zeros((1, 28, 28, 1))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, jax.random.key(1))
  )
  inherit = attention.attention(encode, "conv2", precision=None)
  with attention.matmul_precision("high"):
    text = jax.jit(inherit).lower(variables, x).as_text()
  assert set(_precisions(text)) == {"HIGH"}
  enum = attention.attention(encode, "conv2", precision=lax.Precision.HIGHEST)
  assert set(_precisions(jax.jit(enum).lower(variables, x).as_text())) == {
    "HIGHEST"
  }
  with pytest.raises(ValueError, match="Unknown precision 'tf32'"):
    attention.attention(encode, "conv2", precision="tf32")
  with pytest.raises(ValueError, match="Unknown precision"):
    attention.matmul_precision("fast")


def test_precision_changes_nothing_on_cpu():
  """XLA:CPU computes float32 dots in float32 at any precision."""
  model, encode = _model("mnist")
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  fast = jax.jit(attention.attention(encode, "conv2", precision="default"))
  full = jax.jit(attention.attention(encode, "conv2"))
  got, want = fast(variables, x), full(variables, x)
  np.testing.assert_array_equal(got.per_latent, want.per_latent)
  np.testing.assert_array_equal(got.mean, want.mean)


def _relative_max(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _numpy_variables(abstract, seed=0):
  """Random float32 variables of the shapes of ``abstract``, made by NumPy
  (a jitted init of these models takes seconds to compile)."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "var":
      value = rng.uniform(0.5, 1.5, size=shape)
    elif name == "scale":
      value = 1 + 0.1 * rng.normal(size=shape)
    else:
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, abstract)


@pytest.mark.parametrize("name", list(PAPER))
def test_float64_runs_and_float32_maps_match_it(name):
  """Under jax_enable_x64 every model initialises (its parameters float32,
  as in flax; the decoder's transposed convs were created in float64 and
  failed beside float32 images) and runs with float64 images, giving
  float64 maps; the float32 maps of every paper layer match those to 1e-5
  (max abs difference / max abs map)."""
  kwargs, shape, layers = PAPER[name]
  model, encode = _model(name, **kwargs)
  fn = attention.attention(encode, layers)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(keys[0], shape)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    for images in (x, x64):  # The whole init, traced (compiling it is slow).
      abstract = jax.eval_shape(model.init, keys[1], images, keys[2])
      dtypes = {a.dtype for a in jax.tree.leaves(abstract)}
      assert dtypes == {jnp.dtype(jnp.float32)}, images.dtype
    variables = _numpy_variables(abstract)
    # Traced, not run: a dtype clash fails the trace (running it eagerly
    # took 1.9 s for the ResNet).
    logits, mu, _, _ = jax.eval_shape(model.apply, variables, x64, keys[2])
    assert logits.dtype == mu.dtype == jnp.float64
    assert logits.ndim == 4 and mu.shape == (shape[0], D)
    variables64 = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    maps64 = jax.jit(fn)(variables64, x64)
  maps32 = jax.jit(fn)(variables, x)
  for layer in layers:
    assert maps64[layer].per_latent.dtype == jnp.float64
    assert maps32[layer].per_latent.dtype == jnp.float32
    want = maps64[layer].per_latent
    assert np.abs(want).max() > 0, layer
    error = _relative_max(maps32[layer].per_latent, want)
    assert error < 1e-5, (layer, error)
