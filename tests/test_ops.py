"""Exactness of the ops in vae_attn.ops against stock lax ops."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_attn import attention, losses, models, ops
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
    return sum(0.5 * jnp.sum(g**2) for g in grads)

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
# The models' k4 s2 p1 is covered by the vmap, transposed and model tests.
STRIDED = [((7, 9), 6, 3, ((0, 2), (2, 1)))]


@pytest.mark.parametrize("hw, k, stride, padding", STRIDED)
def test_strided_conv_equals_lax(hw, k, stride, padding):
  x, w = _normal(0, (2, *hw, 3)), _normal(1, (k, k, 3, 4))

  def ref(x, w):
    return lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=NHWC
    )

  fast = functools.partial(ops.strided_conv, stride=stride, padding=padding)
  _assert_same_function(fast, ref, x, w)


# (input hw, kernel hw, strides, padding): ResNet-18's last stage at 64x64
# (2x2, 3x3 SAME), its stride-2 entry, a 1x1, odd and uneven geometries.
SMALL = [
  ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
  ((4, 3), (3, 3), (2, 2), ((1, 1), (0, 1))),
  ((3, 3), (1, 1), (2, 2), ((0, 0), (0, 0))),
  ((1, 5), (2, 3), (1, 2), ((1, 0), (2, 1))),
]


@pytest.mark.parametrize("hw, kernel, strides, padding", SMALL)
def test_small_conv_equals_lax(hw, kernel, strides, padding):
  x, w = _normal(0, (2, *hw, 3)), _normal(1, (*kernel, 3, 4))

  def ref(x, w):
    return lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=NHWC
    )

  fast = functools.partial(ops.small_conv, strides=strides, padding=padding)
  _assert_same_function(fast, ref, x, w)


def test_conv_general_dilated_picks_the_matmul_for_tiny_outputs(monkeypatch):
  small_conv, calls = ops.small_conv, []

  def counted(*args, **kwargs):
    calls.append(1)
    return small_conv(*args, **kwargs)

  monkeypatch.setattr(ops, "small_conv", counted)
  x, w = _normal(0, (2, 2, 2, 3)), _normal(1, (3, 3, 3, 4))
  got = ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert calls == [1]
  big = _normal(2, (2, 5, 5, 3))  # 25 output positions: the stock conv.
  ops.conv_general_dilated(big, w, (1, 1), "SAME", dimension_numbers=NHWC)
  assert calls == [1]


def test_strided_conv_under_vmap_and_of_its_own_gradient():
  x, w = _normal(0, (3, 2, 8, 8, 3)), _normal(1, (4, 4, 3, 4))
  pads = ((1, 1), (1, 1))

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=NHWC)

  fast = functools.partial(ops.strided_conv, stride=2, padding=pads)

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
  fast = functools.partial(ops.strided_conv, stride=stride, padding=padding)

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


# Depth-to-space (80 output positions); one matmul (4 and 12 positions).
@pytest.mark.parametrize(
  "hw, k, padding", [((4, 5), 4, 1), ((1, 1), 4, 1), ((2, 3), 3, 1)]
)
def test_conv_transpose_fast_path_equals_dilated_lax(hw, k, padding):
  x, w = _normal(0, (2, *hw, 3)), _normal(1, (k, k, 3, 4))

  def ref(x, w):
    pad = k - 1 - padding
    return lax.conv_general_dilated(
      x,
      w,
      (1, 1),
      ((pad, pad), (pad, pad)),
      lhs_dilation=(2, 2),
      dimension_numbers=NHWC,
    )

  fast = functools.partial(ops.conv_transpose, stride=2, padding=padding)
  assert ops.fast_path()
  _assert_same_function(fast, ref, x, w)


def _traced_afresh(fn):
  """``jax.jit(fn)`` that traces again: jit caches traces by function, and
  ``fast_path`` is read while tracing."""
  return jax.jit(lambda *args: fn(*args))


def test_vae_is_unchanged_by_the_fast_path(monkeypatch):
  """A small VAE of the same blocks: loss and gradients on both paths."""
  model = models.VAE(
    encoder=ConvEncoder((ConvSpec(4),), latent_dim=3, hidden=()),
    decoder=ConvDecoder((), (4, 4, 4), (ConvSpec(1),)),
  )
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))

  def value_and_grad(x):
    params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))[
      "params"
    ]

    def loss(params):
      logits, mu, logvar, _ = model.apply(
        {"params": params}, x, jax.random.key(3)
      )
      return jnp.mean(losses.beta_vae(logits, x, mu, logvar))

    return jax.value_and_grad(loss)(params)

  fast = _traced_afresh(value_and_grad)(x)
  monkeypatch.setattr(ops, "fast_path", lambda: False)
  stock = _traced_afresh(value_and_grad)(x)
  for f, s in zip(jax.tree.leaves(fast), jax.tree.leaves(stock), strict=True):
    np.testing.assert_allclose(f, s, rtol=1e-4, atol=1e-5)


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


def test_resnet_tiny_stages_are_unchanged_by_the_fast_path(monkeypatch):
  """Value and gradients of the blocks that take the small-output path."""
  model = _TinyStages()
  x = _normal(0, (2, 4, 4, 5))
  variables = jax.jit(model.init)(jax.random.key(1), x)

  def value_and_grad(x):
    def loss(params):
      value, _ = model.apply(
        {**variables, "params": params}, x, mutable=["batch_stats"]
      )
      return value

    return jax.value_and_grad(loss)(variables["params"])

  fast = _traced_afresh(value_and_grad)(x)
  monkeypatch.setattr(ops, "fast_path", lambda: False)
  stock = _traced_afresh(value_and_grad)(x)
  for f, s in zip(jax.tree.leaves(fast), jax.tree.leaves(stock), strict=True):
    np.testing.assert_allclose(f, s, rtol=0, atol=1e-4 * np.abs(s).max())


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
  "name",
  ["strided", "small", "conv_transpose", "conv_transpose_small"],
)
def test_derivatives_traced_later_keep_the_forward_precision(name):
  """A pullback called after the precision scope has closed (as jax.grad's
  backward pass is) and its own derivative carry the forward precision."""
  fns = {
    "strided": (
      lambda x, w: ops.conv_general_dilated(
        x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC
      ),
      (2, 8, 8, 3),
      (4, 4, 3, 5),
    ),
    "small": (
      lambda x, w: ops.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC
      ),
      (2, 2, 2, 3),
      (3, 3, 3, 5),
    ),
    "conv_transpose": (
      lambda x, w: ops.conv_transpose(x, w, stride=2, padding=1),
      (2, 4, 4, 3),
      (4, 4, 3, 5),
    ),
    "conv_transpose_small": (
      lambda x, w: ops.conv_transpose(x, w, stride=2, padding=1),
      (2, 1, 1, 3),
      (4, 4, 3, 5),
    ),
  }
  fn, x_shape, w_shape = fns[name]
  x, w = _normal(0, x_shape), _normal(1, w_shape)
  assert ops.fast_path()
  with jax.default_matmul_precision("highest"):
    y, pullback = jax.vjp(fn, x, w)

  def second(y):
    return jax.grad(lambda y: sum(jnp.sum(g**2) for g in pullback(y)))(y)

  assert _lowered_precisions(pullback, y) == {"HIGHEST"}
  assert _lowered_precisions(second, y) == {"HIGHEST"}
  # Without a scope, as before: the backend's default.
  _, plain = jax.vjp(fn, x, w)
  assert _lowered_precisions(plain, y) == {"DEFAULT"}


def test_conv_transpose_module_dtypes_under_x64():
  module = ops.ConvTranspose(4)
  with jax.enable_x64(True):
    for dtype in (jnp.float32, jnp.float64):
      x = jnp.ones((1, 3, 3, 2), dtype)
      variables = module.init(jax.random.key(0), x)
      kinds = {a.dtype for a in jax.tree.leaves(variables)}
      assert kinds == {jnp.dtype(jnp.float32)}  # As nn.Conv's param_dtype.
      assert module.apply(variables, x).dtype == dtype
