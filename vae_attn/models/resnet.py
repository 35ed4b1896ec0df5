"""MVTec-AD ResNet-18 VAE (paper supplement; docs/paper.md#architectures).

Input 256x256x3. enc ResNet-18 without avg-pool and fc: ``stem`` (Conv7x7/64/2
BatchNorm ReLU, MaxPool3x3/2; 64x64) -> ``stage1`` (64x64x64) -> ``stage2``
(32x32x128) -> ``stage3`` (16x16x256) -> ``stage4`` (8x8x512), two basic
blocks each (``stage2_block1`` ... with convs ``conv1``/``conv2``) -> flatten ->
Linear 1024 ReLU -> Linear D (mu, logvar). dec Linear 1024 ReLU -> Linear
1024*4*4 ReLU -> 4x4x1024 -> five ConvT4x4/2/1 (512, 256, 128, 64, 32) with
BatchNorm and ReLU -> ConvT4x4/3/2/1 (logits). Trained from scratch.

BatchNorm uses batch statistics with ``train=True`` (pass
``mutable=["batch_stats"]``) and running averages otherwise. Attention maps
are computed in eval mode, where every example is independent.
A public reproduction took attention at ``encoder/stage2_block1/conv1``.
"""

import flax.linen as nn
import jax

from vae_attn.models.blocks import (
  VAE,
  ConvBlock,
  ConvDecoder,
  ConvSpec,
  GaussianHead,
)


class BasicBlock(nn.Module):
  """ResNet basic block; ``conv1`` (conv+BN+ReLU) and ``conv2`` (conv+BN)."""

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = ConvBlock(
      ConvSpec(self.features, kernel=3, stride=self.stride, padding=1),
      norm=True,
      name="conv1",
    )(x, train)
    y = ConvBlock(
      ConvSpec(self.features, kernel=3, stride=1, padding=1),
      norm=True,
      activation=False,
      name="conv2",
    )(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = ConvBlock(
        ConvSpec(self.features, kernel=1, stride=self.stride, padding=0),
        norm=True,
        activation=False,
        name="downsample",
      )(x, train)
    return nn.relu(x + y)


class ResNet18Encoder(nn.Module):
  """ResNet-18 features (8x8x512 at 256x256) and a Gaussian head."""

  latent_dim: int = 32
  widths: tuple[int, ...] = (64, 128, 256, 512)
  hidden: tuple[int, ...] = (1024,)

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    x = ConvBlock(
      ConvSpec(self.widths[0], kernel=7, stride=2, padding=3),
      norm=True,
      name="stem",
    )(x, train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, width in enumerate(self.widths):
      for b in range(2):
        stride = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(width, stride, name=f"stage{s + 1}_block{b + 1}")(
          x, train
        )
    return GaussianHead(self.latent_dim, self.hidden, name="head")(x)


def resnet_vae(latent_dim: int = 32, image_size: int = 256) -> VAE:
  """The MVTec-AD VAE for ``[B, S, S, 3]`` inputs (``S = image_size``).

  The decoder starts at ``S / 64`` (4 at 256) and doubles six times.
  """
  if image_size % 64:
    raise ValueError(
      f"image_size must be a multiple of 64 for the ResNet-18 VAE, got "
      f"{image_size}; resize the images (the paper uses 256)."
    )
  base = image_size // 64
  decoder = ConvDecoder(
    hidden=(1024,),
    base_shape=(base, base, 1024),
    stages=tuple(ConvSpec(c) for c in (512, 256, 128, 64, 32, 3)),
    norm=True,
  )
  return VAE(encoder=ResNet18Encoder(latent_dim), decoder=decoder)
