"""FactorVAE / AD-FactorVAE for dSprites and its TC discriminator.

docs/paper.md#architectures (Kim & Mnih 2018, D = 32 as in the paper): enc
Conv4x4/32/2/1 (32x32x32, ``encoder/conv1``, the L_AD layer) -> Conv4x4/32/2/1
-> Conv4x4/64/2/1 -> Conv4x4/64/2/1 (4x4x64), ReLU after each -> Linear 128
ReLU -> Linear D (mu), Linear D (logvar). dec Linear 128 ReLU -> Linear 1024
ReLU -> 4x4x64 -> ConvT4x4/64/2/1 ReLU -> ConvT4x4/32/2/1 ReLU ->
ConvT4x4/32/2/1 ReLU -> ConvT4x4/1/2/1 (logits).
Discriminator: MLP D -> 1000 x 5 (LeakyReLU 0.2) -> 2 logits.
"""

import flax.linen as nn
import jax

from vae_attn.models.blocks import VAE, ConvDecoder, ConvEncoder, ConvSpec


def factorvae(latent_dim: int = 32) -> VAE:
  """The FactorVAE for ``[B, 64, 64, 1]`` inputs."""
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
  """The FactorVAE TC discriminator: ``[B, D] -> [B, 2]`` logits.

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
