"""Building blocks shared by every architecture of the paper.

Each conv stage is a named module whose output is the post-activation feature
map, so a target layer of the attention transform is a short path such as
``"encoder/conv2"``. Convolutions follow PyTorch's ``(kernel, stride, pad)``
notation of the paper's supplement: ``Conv4x4/64/2/1`` is
``ConvBlock(64, kernel=4, stride=2, padding=1)`` and ``ConvT4x4/64/2/1`` is
``DeconvBlock(64, kernel=4, stride=2, padding=1)``; both give the output sizes
of the paper's tables (28 -> 14 -> 7, 100 -> 50 -> 25 -> 12, 12 -> 25, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One conv stage in the paper's notation: kernel, channels, stride, pad."""

  features: int
  kernel: int = 4
  stride: int = 2
  padding: int = 1


def conv(
  spec: ConvSpec,
  *,
  transpose: bool = False,
  use_bias: bool = True,
  name: str | None = None,
):
  """A 2D convolution with PyTorch padding semantics; with ``transpose``, a
  transposed one matching ``torch.nn.ConvTranspose2d(k, s, p)`` sizes.

  The transposed output size is ``(in - 1) * stride - 2 * pad + kernel``:
  the stride-1 convolution of the input dilated by the stride and padded by
  ``kernel - 1 - pad``, with the ``[k, k, in, out]`` kernel used unflipped
  (the same family of functions as PyTorch's; only the parameter layout
  differs).
  """
  k = spec.kernel
  p = k - 1 - spec.padding if transpose else spec.padding
  return (nn.ConvTranspose if transpose else nn.Conv)(
    spec.features,
    (k, k),
    strides=(spec.stride, spec.stride),
    padding=((p, p), (p, p)),
    use_bias=use_bias,
    name=name,
  )


class ConvBlock(nn.Module):
  """Conv -> (BatchNorm) -> activation; its output is an attention target."""

  spec: ConvSpec
  norm: bool = False
  activation: bool = True
  _transpose: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    name, bias = "deconv" if self._transpose else "conv", not self.norm
    x = conv(self.spec, transpose=self._transpose, use_bias=bias, name=name)(x)
    if self.norm:
      x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    return nn.relu(x) if self.activation else x


class DeconvBlock(ConvBlock):
  """Transposed conv -> (BatchNorm) -> activation."""

  _transpose: ClassVar[bool] = True


class GaussianHead(nn.Module):
  """Flatten -> hidden Dense layers (ReLU) -> ``(mu, logvar)``, each ``[B, D]``.

  The paper's ``Linear 2D`` output split into ``mu`` and ``logvar`` is written
  as two ``Dense(D)`` layers named ``mu`` and ``logvar`` (the same function).
  """

  latent_dim: int
  hidden: Sequence[int] = (1024,)

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(x))
    mu = nn.Dense(self.latent_dim, name="mu")(x)
    logvar = nn.Dense(self.latent_dim, name="logvar")(x)
    return mu, logvar


class ConvEncoder(nn.Module):
  """Conv stages ``conv1..convN`` followed by a :class:`GaussianHead`.

  Input ``[B, H, W, C]``; output ``(mu, logvar)``, each ``[B, latent_dim]``.
  """

  stages: Sequence[ConvSpec]
  latent_dim: int
  hidden: Sequence[int] = (1024,)

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    for i, spec in enumerate(self.stages):
      x = ConvBlock(spec, name=f"conv{i + 1}")(x, train)
    return GaussianHead(self.latent_dim, self.hidden, name="head")(x)


class ConvDecoder(nn.Module):
  """Dense layers -> reshape to ``base_shape`` -> transposed conv stages.

  The last stage has no activation: the decoder returns logits of the
  Bernoulli likelihood (``jax.nn.sigmoid`` gives the paper's Sigmoid output).
  """

  hidden: Sequence[int]
  base_shape: tuple[int, int, int]
  stages: Sequence[ConvSpec]
  norm: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    x = z
    widths = (*self.hidden, math.prod(self.base_shape))
    for i, width in enumerate(widths):
      x = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(x))
    x = x.reshape(x.shape[0], *self.base_shape)
    last = len(self.stages) - 1
    for i, spec in enumerate(self.stages):
      x = DeconvBlock(
        spec,
        norm=self.norm and i < last,
        activation=i < last,
        name=f"deconv{i + 1}",
      )(x, train)
    return x


def reparameterize(
  key: jax.Array, mu: jax.Array, logvar: jax.Array
) -> jax.Array:
  """Samples ``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``."""
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + jnp.exp(0.5 * logvar) * eps


class VAE(nn.Module):
  """A VAE from an encoder and a decoder module.

  ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``; calling the module
  runs both with a reparameterised sample and returns
  ``(logits, mu, logvar, z)``. Parameters live under ``encoder/`` and
  ``decoder/``, so attention layers are paths like ``"encoder/conv2"``.
  """

  encoder: nn.Module
  decoder: nn.Module

  def encode(
    self, x: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x, train)

  def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
    return self.decoder(z, train)

  def __call__(self, x: jax.Array, key: jax.Array, train: bool = False):
    mu, logvar = self.encode(x, train)
    z = reparameterize(key, mu, logvar)
    return self.decode(z, train), mu, logvar, z
