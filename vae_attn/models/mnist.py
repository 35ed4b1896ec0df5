"""MNIST one-class VAE (paper supplement; docs/paper.md#mnist).

enc Conv4x4/64/2/1 ReLU -> Conv4x4/128/2/1 ReLU (7x7x128, ``encoder/conv2``,
the attention layer) -> flatten 6272 -> Linear 1024 ReLU -> Linear D (mu),
Linear D (logvar). dec Linear 1024 ReLU -> Linear 6272 ReLU -> 7x7x128 ->
ConvT4x4/64/2/1 ReLU -> ConvT4x4/1/2/1 (logits; Sigmoid in the loss).
"""

from vae_attn.models.blocks import VAE, ConvDecoder, ConvEncoder, ConvSpec


def mnist_vae(latent_dim: int = 32) -> VAE:
  """The MNIST VAE for ``[B, 28, 28, 1]`` inputs."""
  encoder = ConvEncoder(
    stages=(ConvSpec(64), ConvSpec(128)), latent_dim=latent_dim, hidden=(1024,)
  )
  decoder = ConvDecoder(
    hidden=(1024,),
    base_shape=(7, 7, 128),
    stages=(ConvSpec(64), ConvSpec(1)),
  )
  return VAE(encoder=encoder, decoder=decoder)
