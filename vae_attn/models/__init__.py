"""The paper's VAEs (Flax Linen) and ``make_model`` to pick one by name."""

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
from vae_attn.models.factorvae import Discriminator, factorvae
from vae_attn.models.mnist import mnist_vae
from vae_attn.models.ped1 import ped1_vae
from vae_attn.models.resnet import ResNet18Encoder, resnet_vae

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


__all__ = [
  "DEFAULT_LAYERS",
  "MODELS",
  "VAE",
  "ConvBlock",
  "ConvDecoder",
  "ConvEncoder",
  "ConvSpec",
  "DeconvBlock",
  "Discriminator",
  "GaussianHead",
  "ResNet18Encoder",
  "factorvae",
  "input_shape",
  "make_model",
  "mnist_vae",
  "ped1_vae",
  "reparameterize",
  "resnet_vae",
]
