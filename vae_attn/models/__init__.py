"""The paper's VAEs (Flax Linen) and ``make_model`` to pick one by name.

The MNIST, UCSD Ped1 and FactorVAE (dSprites) VAEs are here, in the paper
supplement's notation (docs/paper.md#architectures; ``Conv4x4/64/2/1`` is
kernel, channels, stride, padding, see ``blocks``); the MVTec-AD ResNet-18
VAE is ``resnet``; the blocks they share are ``blocks``. The names in
``backquotes`` are the attention transform's layer paths.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_attn.models.blocks import (
  VAE,
  ConvBlock,
  ConvDecoder,
  ConvEncoder,
  ConvSpec,
  DeconvBlock,
  GaussianHead,
  reparameterize,
)
from vae_attn.models.resnet import ResNet18Encoder, resnet_vae


def mnist_vae(latent_dim: int = 32) -> VAE:
  """The MNIST VAE for ``[B, 28, 28, 1]`` inputs (docs/paper.md#mnist).

  enc Conv4x4/64/2/1 ReLU -> Conv4x4/128/2/1 ReLU (7x7x128, ``encoder/conv2``,
  the attention layer) -> flatten 6272 -> Linear 1024 ReLU -> Linear D (mu),
  Linear D (logvar). dec Linear 1024 ReLU -> Linear 6272 ReLU -> 7x7x128 ->
  ConvT4x4/64/2/1 ReLU -> ConvT4x4/1/2/1 (logits; Sigmoid in the loss).
  """
  encoder = ConvEncoder(
    stages=(ConvSpec(64), ConvSpec(128)), latent_dim=latent_dim, hidden=(1024,)
  )
  decoder = ConvDecoder(
    hidden=(1024,),
    base_shape=(7, 7, 128),
    stages=(ConvSpec(64), ConvSpec(1)),
  )
  return VAE(encoder=encoder, decoder=decoder)


def ped1_vae(latent_dim: int = 32) -> VAE:
  """The UCSD Ped1 VAE for ``[B, 100, 100, 1]`` inputs (frames resized;
  docs/paper.md#ucsd-ped1).

  enc Conv4x4/64/2/1 (50x50, ``encoder/conv1``) -> Conv4x4/128/2/1 (25x25,
  ``encoder/conv2``) -> Conv4x4/256/2/1 (12x12, ``encoder/conv3``), ReLU
  after each -> flatten 36864 -> Linear 1024 ReLU -> Linear D. dec Linear
  1024 ReLU -> Linear 36864 ReLU -> 12x12x256 -> ConvT5x5/128/2/1 (25x25) ->
  ConvT4x4/64/2/1 (50x50) -> ConvT4x4/1/2/1 (100x100, logits). The three
  conv stages are the layer ablation of Table 1.
  """
  encoder = ConvEncoder(
    stages=(ConvSpec(64), ConvSpec(128), ConvSpec(256)),
    latent_dim=latent_dim,
    hidden=(1024,),
  )
  decoder = ConvDecoder(
    hidden=(1024,),
    base_shape=(12, 12, 256),
    stages=(ConvSpec(128, kernel=5), ConvSpec(64), ConvSpec(1)),
  )
  return VAE(encoder=encoder, decoder=decoder)


def factorvae(latent_dim: int = 32) -> VAE:
  """The FactorVAE / AD-FactorVAE for dSprites, ``[B, 64, 64, 1]`` inputs
  (Kim & Mnih 2018, D = 32 as in the paper).

  enc Conv4x4/32/2/1 (32x32x32, ``encoder/conv1``, the L_AD layer) ->
  Conv4x4/32/2/1 -> Conv4x4/64/2/1 -> Conv4x4/64/2/1 (4x4x64), ReLU after
  each -> Linear 128 ReLU -> Linear D (mu), Linear D (logvar). dec Linear
  128 ReLU -> Linear 1024 ReLU -> 4x4x64 -> ConvT4x4/64/2/1 ReLU ->
  ConvT4x4/32/2/1 ReLU -> ConvT4x4/32/2/1 ReLU -> ConvT4x4/1/2/1 (logits).
  """
  encoder = ConvEncoder(
    stages=(ConvSpec(32), ConvSpec(32), ConvSpec(64), ConvSpec(64)),
    latent_dim=latent_dim,
    hidden=(128,),
  )
  decoder = ConvDecoder(
    hidden=(128,),
    base_shape=(4, 4, 64),
    stages=(ConvSpec(64), ConvSpec(32), ConvSpec(32), ConvSpec(1)),
  )
  return VAE(encoder=encoder, decoder=decoder)


class Discriminator(nn.Module):
  """The FactorVAE TC discriminator: ``[B, D] -> [B, 2]`` logits; an MLP
  D -> 1000 x 5 (LeakyReLU 0.2) -> 2.

  Logit 0 is "sample of q(z)" (joint), logit 1 "permuted" (product of
  marginals), as in Kim & Mnih (2018).
  """

  hidden: int = 1000
  num_layers: int = 5

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = z
    for i in range(self.num_layers):
      x = nn.leaky_relu(nn.Dense(self.hidden, name=f"fc{i + 1}")(x), 0.2)
    return nn.Dense(2, name="logits")(x)


MODELS = {
  "mnist": mnist_vae,
  "ped1": ped1_vae,
  "resnet18": resnet_vae,
  "factorvae": factorvae,
}

# The attention layer of each architecture (docs/paper.md#hyper-parameters).
DEFAULT_LAYERS = {
  "mnist": "encoder/conv2",
  "ped1": "encoder/conv2",
  "resnet18": "encoder/stage2_block1/conv1",
  "factorvae": "encoder/conv1",
}


def make_model(name: str, **kwargs) -> VAE:
  """Builds the VAE ``name`` (one of ``MODELS``) with ``kwargs``."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
  return MODELS[name](**kwargs)


def input_shape(model: VAE) -> tuple[int, int, int]:
  """``(H, W, C)`` of the images ``model`` takes: the shape its decoder
  produces, traced by ``jax.eval_shape`` (nothing is computed)."""
  z = jax.ShapeDtypeStruct((1, 1), jnp.float32)  # The head takes any width.
  decoded, _ = jax.eval_shape(
    lambda z: model.init_with_output(jax.random.key(0), z, method=model.decode),
    z,
  )
  return tuple(int(d) for d in decoded.shape[1:])
