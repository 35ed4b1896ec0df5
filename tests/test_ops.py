"""Exactness of the ops in vae_attn.models.ops against stock lax ops."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_attn import attention
from vae_attn.models import ops
from vae_attn.models.blocks import ConvEncoder, ConvSpec

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
    ((9, 9), (4, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((7, 6), (3, 2), (1, 2), ((1, 2), (0, 1)), (1, 1)),
    ((8, 8), (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
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
  stages = (ConvSpec(4), ConvSpec(6, kernel=3, stride=1, padding=1))
  model = _Wrap(ConvEncoder(stages=stages, latent_dim=3, hidden=(8,)))
  x = jax.random.uniform(jax.random.key(0), (2, 10, 10, 1))
  variables = model.init(jax.random.key(1), x)
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
