"""UCSD Ped1 VAE (paper supplement; docs/paper.md#ucsd-ped1).

Frames resized to 100x100x1. enc Conv4x4/64/2/1 (50x50, ``encoder/conv1``) ->
Conv4x4/128/2/1 (25x25, ``encoder/conv2``) -> Conv4x4/256/2/1 (12x12,
``encoder/conv3``), ReLU after each -> flatten 36864 -> Linear 1024 ReLU ->
Linear D. dec Linear 1024 ReLU -> Linear 36864 ReLU -> 12x12x256 ->
ConvT5x5/128/2/1 (25x25) -> ConvT4x4/64/2/1 (50x50) -> ConvT4x4/1/2/1
(100x100, logits). The three conv stages are the layer ablation of Table 1.
"""

from vae_attn.models.blocks import VAE, ConvDecoder, ConvEncoder, ConvSpec


def ped1_vae(latent_dim: int = 32) -> VAE:
  """The UCSD Ped1 VAE for ``[B, 100, 100, 1]`` inputs."""
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
