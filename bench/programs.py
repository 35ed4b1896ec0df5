"""Hashes of the compiled programs: did a change touch the computation?

  python -m bench.programs        # in two checkouts; compare the lines

Prints a hash of the lowered StableHLO text of the AD-FactorVAE train step
(smoke preset, batch 8) and, for every paper model, of its attention maps at
the default layer and of its forward pass. Equal hashes in two trees mean
the same programs, so the same speed: a refactoring that keeps them equal
needs no timing to show it costs nothing.
"""

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp

from train import factorvae, loop
from vae_attn import attention, models


def h(text):
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def main() -> None:
  config = dataclasses.replace(
    factorvae.PRESETS["smoke"], loss="ad", batch_size=8
  )
  state = factorvae.create_train_state(jax.random.key(0), config)
  batch = {"x": jnp.zeros((8, 64, 64, 1)), "x2": jnp.zeros((8, 64, 64, 1))}
  weights = {k: jnp.float32(v) for k, v in loop.weights(config).items()}
  step = functools.partial(factorvae.train_step, config=config)
  with attention.matmul_precision("highest"):
    lowered = jax.jit(step).lower(state, batch, jax.random.key(1), weights)
  print("train_step ad", h(lowered.as_text()))
  for name in ("mnist", "factorvae", "ped1", "resnet18"):
    model = models.make_model(name, latent_dim=8)
    x = jnp.zeros((2, *models.input_shape(model)))
    v = model.init(jax.random.key(0), x, jax.random.key(1))
    encode = functools.partial(model.apply, method=model.encode)
    layer = models.DEFAULT_LAYERS[name]
    maps = jax.jit(attention.attention(encode, layer)).lower(v, x)
    apply = jax.jit(model.apply).lower(v, x, jax.random.key(1))
    print(name, layer, h(maps.as_text()), h(apply.as_text()))


if __name__ == "__main__":
  main()
