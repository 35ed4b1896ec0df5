"""Exactness of the ops in vae_attn.ops against stock lax ops."""

import doctest
import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from vae_attn import attention, models, ops
from vae_attn.models.blocks import (
  ConvDecoder,
  ConvEncoder,
  ConvSpec,
  DeconvBlock,
)
from vae_attn.models.resnet import BasicBlock

NHWC = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _value_and_derivatives(fn, *args):
  """``fn``, its gradient and a second derivative, in one jitted call."""

  def loss(*args):
    return 0.5 * jnp.sum(fn(*args) ** 2)

  def second(*args):
    grads = jax.grad(loss, range(len(args)))(*args)
    return sum(0.5 * jnp.sum(g**2) for g in jax.tree.leaves(grads))

  @jax.jit
  def run(*args):
    argnums = range(len(args))
    return (
      fn(*args),
      jax.grad(loss, argnums)(*args),
      jax.grad(second, argnums)(*args),
    )

  return run(*args)


def _assert_same_function(fast, ref, *args, atol=1e-5):
  """Values, first and second derivatives agree."""
  got = _value_and_derivatives(fast, *args)
  want = _value_and_derivatives(ref, *args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    scale = max(1.0, float(jnp.abs(w).max()))
    np.testing.assert_allclose(g, w, atol=atol * scale, rtol=1e-4)


@pytest.mark.parametrize(
  "hw, kernel, strides, padding, dilation",
  [
    ((7, 6), (3, 2), (1, 2), ((1, 2), (0, 1)), (2, 1)),
  ],
)
def test_conv_of_constant_equals_conv_of_broadcast(
  hw, kernel, strides, padding, dilation
):
  offset, w = _normal(0, (2, 3)), _normal(1, (*kernel, 3, 5))

  def ref(offset, w):
    image = jnp.broadcast_to(offset[:, None, None, :], (2, *hw, 3))
    return lax.conv_general_dilated(
      image, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )

  def fast(offset, w):
    return ops.conv_of_constant(
      offset, w, hw, strides=strides, padding=padding, kernel_dilation=dilation
    )

  _assert_same_function(fast, ref, offset, w)


def test_flatten_dense_of_constant_equals_dense_of_broadcast():
  offset, w = _normal(0, (2, 3)), _normal(1, (4 * 5 * 3, 6))

  def ref(offset, w):
    image = jnp.broadcast_to(offset[:, None, None, :], (2, 4, 5, 3))
    return image.reshape(2, -1) @ w

  fast = functools.partial(ops.flatten_dense_of_constant, input_hw=(4, 5))
  _assert_same_function(fast, ref, offset, w)


# (input hw, kernel, stride, padding): odd sizes, uneven padding, stride 3.
STRIDED = [((7, 9), 6, 3, ((0, 2), (2, 1)))]


def test_strided_form_under_vmap_and_of_its_own_gradient():
  x, w = _normal(0, (3, 2, 8, 8, 3)), _normal(1, (4, 4, 3, 4))
  pads = ((1, 1), (1, 1))

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=NHWC)

  fast = ops.fast_convolutions(ref)

  def input_grad(conv):
    # A function of the input gradient, batched: the attention's pattern.
    def f(x, w):
      def one(xi):
        _, pullback = jax.vjp(lambda xi: conv(xi, w), xi)
        return pullback(jnp.tanh(conv(xi, w)))[0]

      return jax.vmap(one)(x)

    return f

  _assert_same_function(input_grad(fast), input_grad(ref), x, w)


@pytest.mark.parametrize("hw, k, stride, padding", STRIDED)
def test_batched_kernel_gradient_equals_lax_per_element(hw, k, stride, padding):
  """The vmap rule of the kernel gradient (both or one operand batched)."""
  x, w = _normal(0, (3, 2, *hw, 3)), _normal(1, (k, k, 3, 4))

  def conv(x, w):
    return lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=NHWC
    )

  g = _normal(2, (3, *conv(x[0], w).shape))
  fast = ops.fast_convolutions(conv)

  def kernel_grad(conv, x, g):
    return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]

  got = jax.jit(jax.vmap(functools.partial(kernel_grad, fast)))(x, g)
  want = jax.jit(jax.vmap(functools.partial(kernel_grad, conv)))(x, g)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  got = jax.jit(jax.vmap(functools.partial(kernel_grad, fast), (None, 0)))(
    x[0], g
  )
  want = jax.jit(jax.vmap(functools.partial(kernel_grad, conv), (None, 0)))(
    x[0], g
  )
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  got = jax.jit(jax.vmap(functools.partial(kernel_grad, fast), (0, None)))(
    x, g[0]
  )
  want = jax.jit(jax.vmap(functools.partial(kernel_grad, conv), (0, None)))(
    x, g[0]
  )
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def _grad_cam_reference(encode, variables, x, layer):
  """Per-latent maps from the full ``d mu / d A`` Jacobian (no folding)."""
  captured = {}

  def mu_of(delta):
    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and (
        "/".join(context.module.path) == layer
      ):
        captured["a"] = out
        return out + delta
      return out

    with nn.intercept_methods(perturb):
      return encode(variables, x)[0]

  shape = attention.layer_paths(encode, variables, x)[layer]
  jac = jax.jacrev(mu_of)(jnp.zeros(shape))  # [B, D, B, h, w, n]
  b = x.shape[0]
  jac = jac[jnp.arange(b), :, jnp.arange(b)]  # [B, D, h, w, n]
  alpha = jac.mean(axis=(2, 3))
  return jax.nn.relu(jnp.einsum("bhwn,bdn->bdhw", captured["a"], alpha))


@pytest.mark.parametrize("layer", ["encoder/conv1", "encoder/conv2"])
def test_folded_offsets_give_the_unfolded_maps(layer):
  """Offsets folded into a consumer conv / Gaussian head are exact."""
  stages = (ConvSpec(4), ConvSpec(6))
  model = _Wrap(ConvEncoder(stages=stages, latent_dim=3, hidden=(8,)))
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  encode = model.apply
  maps = jax.jit(attention.attention(encode, layer))(variables, x)
  ref = jax.jit(_grad_cam_reference, static_argnums=(0, 3))(
    encode, variables, x, layer
  )
  np.testing.assert_allclose(maps.per_latent, ref, atol=1e-5, rtol=1e-5)
  assert np.abs(ref).max() > 1e-3


class _Wrap(nn.Module):
  """An encoder named ``encoder``, so layer paths read ``encoder/conv1``."""

  encoder: nn.Module

  def __call__(self, x):
    return self.encoder(x)


def test_default_cpu_chunking_gives_the_vmapped_maps(monkeypatch):
  stages = (ConvSpec(4), ConvSpec(6))
  model = _Wrap(ConvEncoder(stages=stages, latent_dim=3, hidden=(8,)))
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  vmapped = attention.attention(model.apply, "conv1", chunk_size=3)
  monkeypatch.setattr(attention, "_CPU_CHUNK_ROWS", 4)  # 2 latents a chunk.
  chunked = attention.attention(model.apply, "conv1")
  want, got = jax.jit(vmapped)(variables, x), jax.jit(chunked)(variables, x)
  np.testing.assert_allclose(got.per_latent, want.per_latent, atol=1e-6)
  np.testing.assert_allclose(got.mean, want.mean, atol=1e-6)


# --- _interpret, fast_convolutions' equation-by-equation evaluator. ---


def _double_named(eqn, invals):
  """A rule: values named with ``checkpoint_name`` are doubled."""
  return 2 * invals[0] if eqn.primitive.name == "name" else None


def _nested(tree, x, *, power, label):
  """Named values at the top, in jit, checkpoint, scan and cond."""
  del label  # A static leaf that reaches the function unchanged.
  y = checkpoint_name(jnp.sin(tree["a"]) * x, "top")
  y = jax.jit(lambda v: checkpoint_name(v**power, "jit"))(y)
  y = jax.checkpoint(lambda v: checkpoint_name(jnp.cos(v), "remat"))(y)
  y, _ = lax.scan(lambda c, v: (c + checkpoint_name(v, "scan"), None), y, x)
  y = lax.cond(
    y.sum() > -1e9, lambda v: checkpoint_name(v, "cond"), jnp.tanh, y
  )
  return {"out": jax.nn.relu(y) + tree["b"], "aux": [x]}


def _nested_by_hand(tree, x, *, power, label):
  """``_nested`` with every named value doubled."""
  del label
  y = 2 * jnp.sin(tree["a"]) * x
  y = 2 * jnp.cos(2 * y**power)
  for v in x:
    y = y + 2 * v
  y = 2 * y
  return {"out": jax.nn.relu(y) + tree["b"], "aux": [x]}


def test_interpret_applies_the_rule_inside_every_sub_jaxpr():
  tree = {"a": _normal(0, (3,)), "b": _normal(1, (3,))}
  x = _normal(2, (3,)) * 0.5
  fn = ops._interpret(_nested, _double_named)
  kwargs = dict(power=2, label="static")
  want = _nested_by_hand(tree, x, **kwargs)
  for got in (
    fn(tree, x, **kwargs),
    jax.jit(fn, static_argnames=("power", "label"))(tree, x, **kwargs),
  ):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

  def stat(fn):
    return lambda tree, x: jnp.sum(fn(tree, x, **kwargs)["out"] ** 3)

  # First and second derivatives, and vmap over x.
  grad, ref = (
    jax.grad(stat(fn), (0, 1)),
    jax.grad(stat(_nested_by_hand), (0, 1)),
  )
  chex.assert_trees_all_close(grad(tree, x), ref(tree, x), rtol=1e-4, atol=1e-5)

  def second(grad):
    return jax.grad(
      lambda x: sum(jnp.sum(g**2) for g in jax.tree.leaves(grad(tree, x)))
    )

  chex.assert_trees_all_close(
    second(grad)(x), second(ref)(x), rtol=1e-4, atol=1e-4
  )
  xs = jnp.stack([x, 0.5 * x])
  got = jax.vmap(lambda x: fn(tree, x, **kwargs))(xs)
  want = jax.vmap(lambda x: _nested_by_hand(tree, x, **kwargs))(xs)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

  def loop(x):  # A while loop (not reverse-differentiable): values only.
    def body(c):
      return c[0] + 1, checkpoint_name(c[1], "while") * 1.5

    return lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1]

  got = ops._interpret(loop, _double_named)(x)
  np.testing.assert_allclose(got, 9 * x, rtol=1e-6)


def test_interpret_without_a_rule_is_the_function():
  tree = {"a": _normal(0, (3,)), "b": _normal(1, (3,))}
  x = _normal(2, (3,))
  got = ops._interpret(_nested, lambda eqn, invals: None)(
    tree, x, power=3, label=""
  )
  chex.assert_trees_all_close(
    got, _nested(tree, x, power=3, label=""), rtol=1e-6
  )


def test_the_docstring_examples_run():
  assert doctest.testmod(ops, raise_on_error=True).attempted >= 1


# --- fast_convolutions: the exact fast forms substituted for stock convs. ---


def _conv_fn(strides, padding, lhs_dilation=(1, 1), rhs="HWIO"):
  def fn(x, w):
    return lax.conv_general_dilated(
      x,
      w,
      strides,
      padding,
      lhs_dilation=lhs_dilation,
      dimension_numbers=("NHWC", rhs, "NHWC"),
    )

  return fn


def _input_gradient(x_shape, strides, padding):
  """JAX's own input gradient of a strided conv: lhs-dilated, kernel HWOI."""

  def fn(g, w):
    conv = _conv_fn(strides, padding)
    _, pullback = jax.vjp(lambda x: conv(x, w), jnp.zeros(x_shape))
    return pullback(g)[0]

  return fn


# (case, input shape, kernel shape, function, the form the transform picks):
# the models' k4 s2 p1, odd sizes, uneven padding, stride 3; ResNet-18's
# last stage at 64x64 (2x2, 3x3 SAME), its stride-2 entry, a 1x1, odd and
# uneven tiny geometries; transposed convs of both kinds; JAX's own input
# gradient (a transposed kernel layout); what stays stock.
FORMS = {
  "strided 3": (
    (2, 7, 9, 3),
    (6, 6, 3, 4),
    _conv_fn((3, 3), ((0, 2), (2, 1))),
    "_conv",
  ),
  "small 2x2": (
    (2, 2, 2, 3),
    (3, 3, 3, 4),
    _conv_fn((1, 1), "SAME"),
    "dot_general",
  ),
  "small stride 2": (
    (2, 4, 3, 3),
    (3, 3, 3, 4),
    _conv_fn((2, 2), ((1, 1), (0, 1))),
    "dot_general",
  ),
  "small 1x1": (
    (2, 3, 3, 3),
    (1, 1, 3, 4),
    _conv_fn((2, 2), "VALID"),
    "dot_general",
  ),
  "small odd": (
    (2, 1, 5, 3),
    (2, 3, 3, 4),
    _conv_fn((1, 2), ((1, 0), (2, 1))),
    "dot_general",
  ),
  "strided": (
    (2, 7, 8, 3),
    (4, 4, 3, 5),
    _conv_fn((2, 2), ((1, 2), (1, 1))),
    "_conv",
  ),
  "strided HWOI": (
    (2, 8, 8, 3),
    (4, 4, 5, 3),
    _conv_fn((2, 2), "SAME", rhs="HWOI"),
    "_conv",
  ),
  "transposed": (
    (2, 4, 5, 3),
    (4, 4, 3, 4),
    _conv_fn((1, 1), ((2, 1), (2, 2)), (2, 2)),
    "_conv_t",
  ),
  "transposed small": (
    (2, 1, 1, 3),
    (4, 4, 3, 4),
    _conv_fn((1, 1), ((2, 2), (2, 2)), (2, 2)),
    "dot_general",
  ),
  "input gradient": (
    (2, 4, 4, 5),
    (4, 4, 3, 5),
    _input_gradient((2, 8, 8, 3), (2, 2), ((1, 1), (1, 1))),
    "_conv_t",
  ),
  "stride 1: stock": (
    (2, 6, 6, 3),
    (3, 3, 3, 4),
    _conv_fn((1, 1), "SAME"),
    "conv_general_dilated",
  ),
}


def _forms(fn, *args) -> set[str]:
  """Primitives of ``fn``'s jaxpr; a custom_vjp call by its function's name."""
  names = set()
  for eqn in jax.make_jaxpr(fn)(*args).eqns:
    if eqn.primitive.name == "custom_vjp_call":
      names.add(eqn.params["call_jaxpr"].debug_info.func_name)
    else:
      names.add(eqn.primitive.name)
  return names


@pytest.mark.parametrize("case", list(FORMS))
def test_fast_convolutions_equal_stock_lax(case):
  x_shape, w_shape, fn, form = FORMS[case]
  x, w = _normal(0, x_shape), _normal(1, w_shape)
  fast = ops.fast_convolutions(fn)
  forms = _forms(fast, x, w)
  assert form in forms
  if form != "conv_general_dilated":
    assert "conv_general_dilated" not in forms
  _assert_same_function(fast, fn, x, w)


def test_fast_convolutions_is_the_identity_off_cpu(monkeypatch):
  x_shape, w_shape, fn, _ = FORMS["strided"]
  x, w = _normal(0, x_shape), _normal(1, w_shape)
  monkeypatch.setattr(ops, "fast_path", lambda: False)
  assert _forms(ops.fast_convolutions(fn), x, w) == {"conv_general_dilated"}
  with pytest.raises(TypeError, match="fn must be callable"):
    ops.fast_convolutions("conv")  # Refused when built, on every backend.


class _StockLinen(nn.Module):
  """Stock Linen layers of every form: strided, tiny and transposed."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (4, 4), strides=2, padding=((1, 1), (1, 1)))(x))
    x = nn.relu(nn.Conv(5, (3, 3), strides=2, padding="SAME")(x))  # 2x2
    x = nn.relu(
      nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))(x)
    )
    return nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME")(x)


@pytest.mark.parametrize("vmapped", [False, True])
def test_fast_convolutions_of_a_stock_linen_model(vmapped):
  model = _StockLinen()
  x = _normal(0, (3, 2, 8, 8, 2))
  variables = model.init(jax.random.key(1), x[0])
  apply = model.apply
  if vmapped:
    fast = jax.vmap(ops.fast_convolutions(apply), (None, 0))
    apply = jax.vmap(apply, (None, 0))
  else:
    x, fast = x[0], ops.fast_convolutions(apply)
  assert "_conv_t" in _forms(fast, variables, x)
  _assert_same_function(fast, apply, variables, x)


def test_fast_convolutions_of_an_nnx_model():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(
        2, 4, (4, 4), strides=2, padding=((1, 1), (1, 1)), rngs=rngs
      )
      self.deconv = nnx.ConvTranspose(
        4, 3, (4, 4), strides=2, padding="SAME", rngs=rngs
      )

    def __call__(self, x):
      return self.deconv(nnx.relu(self.conv(x)))

  graphdef, state = nnx.split(Model(nnx.Rngs(0)))

  def apply(state, x):
    return nnx.merge(graphdef, state)(x)

  fast = ops.fast_convolutions(apply)
  x = _normal(0, (2, 8, 8, 2))
  assert {"_conv", "_conv_t"} <= _forms(fast, state, x)
  _assert_same_function(fast, apply, state, x)


class _TinyStages(nn.Module):
  """ResNet-18's last stage at 64x64 input (4x4 -> 2x2) and the decoder's
  first transposed convs (1x1 -> 2x2 -> 4x4), narrow, with BatchNorm."""

  @nn.compact
  def __call__(self, x, train=True):
    y = BasicBlock(8, stride=2, name="block1")(x, train)
    y = BasicBlock(8, name="block2")(y, train)
    z = jnp.mean(y, axis=(1, 2), keepdims=True)  # [B, 1, 1, 8]
    for c in (6, 4):
      z = DeconvBlock(ConvSpec(c), norm=True)(z, train)
    return jnp.sum(y**2) + jnp.sum(jnp.sin(z))


def _vae_loss():
  model = models.VAE(
    encoder=ConvEncoder((ConvSpec(4),), latent_dim=3, hidden=()),
    decoder=ConvDecoder((), (4, 4, 4), (ConvSpec(1),)),
  )
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  variables = model.init(jax.random.key(1), x, jax.random.key(2))

  def loss(params):
    logits, mu, logvar, _ = model.apply(
      {"params": params}, x, jax.random.key(3)
    )
    return jnp.mean((logits - x) ** 2) + jnp.mean(mu**2 + jnp.exp(logvar))

  return loss, variables["params"]


def _tiny_stages_loss():
  model = _TinyStages()
  x = _normal(0, (2, 4, 4, 5))
  variables = model.init(jax.random.key(1), x)

  def loss(params):
    value, _ = model.apply(
      {**variables, "params": params}, x, mutable=["batch_stats"]
    )
    return value

  return loss, variables["params"]


@pytest.mark.parametrize("case", [_vae_loss, _tiny_stages_loss])
def test_paper_blocks_are_unchanged_by_the_transform(case):
  """Loss and gradients of the paper's blocks, with and without."""
  loss, params = case()
  fast = jax.jit(jax.value_and_grad(ops.fast_convolutions(loss)))(params)
  stock = jax.jit(jax.value_and_grad(loss))(params)
  for f, s in zip(jax.tree.leaves(fast), jax.tree.leaves(stock), strict=True):
    np.testing.assert_allclose(f, s, rtol=0, atol=1e-4 * np.abs(s).max())


def _lowered_precisions(fn, *args) -> set[str]:
  """Operand precisions of every dot_general and convolution of ``fn``."""
  text = jax.jit(fn).lower(*args).as_text()
  lines = [
    line
    for line in text.splitlines()
    if "stablehlo.dot_general" in line or "stablehlo.convolution" in line
  ]
  assert lines
  return {
    p for line in lines for p in re.findall(r"HIGHEST|HIGH|DEFAULT", line)
  }


@pytest.mark.parametrize(
  "case", ["strided", "small 2x2", "transposed", "transposed small"]
)
def test_derivatives_traced_later_keep_the_forward_precision(case):
  """A pullback called after the precision scope has closed (as jax.grad's
  backward pass is) and its own derivative carry the forward precision."""
  x_shape, w_shape, fn, _ = FORMS[case]
  x, w = _normal(0, x_shape), _normal(1, w_shape)
  fast = ops.fast_convolutions(fn)
  with jax.default_matmul_precision("highest"):
    y, pullback = jax.vjp(fast, x, w)

  def second(y):
    return jax.grad(lambda y: sum(jnp.sum(g**2) for g in pullback(y)))(y)

  assert _lowered_precisions(pullback, y) == {"HIGHEST"}
  assert _lowered_precisions(second, y) == {"HIGHEST"}
  # Without a scope, as before: the backend's default.
  _, plain = jax.vjp(fast, x, w)
  assert _lowered_precisions(plain, y) == {"DEFAULT"}
