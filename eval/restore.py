"""Rebuilds a trained VAE from a training workdir, for the eval drivers.

``load_run(workdir)`` restores the latest checkpoint written by any trainer
(``train.factorvae``, ``train.oneclass``) through
``train.common.load_checkpoint`` and rebuilds the model from the restored
parameters themselves: the architecture, latent size and input size are read
off the parameter shapes, so the drivers do not depend on one trainer's
config schema. ``init_model`` builds a randomly initialised model for demos.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import anomaly, models

# Input shape [H, W, C] of each architecture (the ResNet's size varies).
INPUT_SHAPES = {
  "mnist": (28, 28, 1),
  "ped1": (100, 100, 1),
  "resnet18": (256, 256, 3),
  "factorvae": (64, 64, 1),
}


class Run(NamedTuple):
  """A restored (or freshly initialised) VAE.

  Attributes:
    name: architecture, a key of ``vae_attn.models.MODELS``.
    model: the Flax module.
    variables: ``{"params": ..., ["batch_stats": ...]}`` of the VAE only.
    input_shape: ``(H, W, C)`` the model expects.
    latent_dim: ``D``.
    config: the training config as a dict (``{}`` without a workdir).
    step: the checkpoint step (0 without a workdir).
    latent_stats: the normal-data statistics saved by a one-class trainer,
      or ``None``.
    workdir: the workdir it came from, or ``None``.
  """

  name: str
  model: nn.Module
  variables: dict
  input_shape: tuple[int, int, int]
  latent_dim: int
  config: dict
  step: int
  latent_stats: anomaly.LatentStats | None
  workdir: str | None

  @property
  def encode_fn(self):
    """``(variables, x) -> (mu, logvar)``."""
    return functools.partial(self.model.apply, method=self.model.encode)

  @property
  def default_layer(self) -> str:
    """The paper's attention layer of this architecture."""
    return models.DEFAULT_LAYERS[self.name]

  def reconstruct(self, x: jax.Array) -> jax.Array:
    """Decodes the posterior means: ``sigmoid(decode(mu(x)))``, NHWC."""
    mu, _ = self.encode_fn(self.variables, x)
    logits = self.model.apply(self.variables, mu, method=self.model.decode)
    return jax.nn.sigmoid(logits)


def infer_architecture(params: Mapping[str, Any]) -> tuple[str, dict, tuple]:
  """Reads the architecture off a VAE's parameter tree.

  Args:
    params: the ``params`` collection of a ``vae_attn.models`` VAE (with
      top-level ``encoder`` and ``decoder``); arrays or shape structs.

  Returns:
    ``(name, make_model kwargs, input_shape)``.

  Raises:
    ValueError: the tree is not one of the paper's VAEs.
  """
  if "encoder" not in params or "decoder" not in params:
    raise ValueError(
      f"Not a vae_attn VAE parameter tree (top-level keys {sorted(params)}); "
      "pass the workdir of a train.factorvae or train.oneclass run."
    )
  enc = params["encoder"]
  shape = lambda leaf: tuple(getattr(leaf, "shape", None) or np.shape(leaf))
  latent_dim = int(shape(enc["head"]["mu"]["kernel"])[-1])
  if "stem" in enc:
    # ResNet-18 head: flatten (S / 32)^2 * 512 -> Linear.
    fan_in = int(shape(enc["head"]["fc1"]["kernel"])[0])
    side = math.isqrt(fan_in // 512) * 32
    return (
      "resnet18",
      {"latent_dim": latent_dim, "image_size": side},
      (side, side, 3),
    )
  num_convs = sum(1 for k in enc if k.startswith("conv"))
  name = {2: "mnist", 3: "ped1", 4: "factorvae"}.get(num_convs)
  if name is None:
    raise ValueError(
      f"Unknown encoder with {num_convs} conv blocks ({sorted(enc)}); "
      f"expected one of the architectures {sorted(models.MODELS)}."
    )
  return name, {"latent_dim": latent_dim}, INPUT_SHAPES[name]


def _vae_variables(state: Mapping[str, Any]) -> dict:
  params = state["params"]
  if "vae" in params:  # FactorVAE state: {"vae": ..., "disc": ...}.
    params = params["vae"]
  variables = {"params": params}
  batch_stats = state.get("batch_stats") or {}
  if "vae" in batch_stats:
    batch_stats = batch_stats["vae"]
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return jax.tree.map(jnp.asarray, variables)


def _latent_stats(value: Any) -> anomaly.LatentStats | None:
  """A restored ``LatentStats`` (saved as a NamedTuple, restored untyped)."""
  if value is None:
    return None
  if isinstance(value, Mapping):
    if not {"mean", "var"} <= set(value):
      return None
    count = value.get("count", np.nan)
    return anomaly.LatentStats(
      jnp.asarray(value["mean"]), jnp.asarray(value["var"]), jnp.asarray(count)
    )
  if isinstance(value, (list, tuple)) and len(value) == 3:
    return anomaly.LatentStats(*(jnp.asarray(v) for v in value))
  return None


def _checkpoint_items(workdir: str | os.PathLike, step: int) -> list[str]:
  step_dir = pathlib.Path(workdir).absolute() / "ckpt" / str(step)
  if not step_dir.is_dir():
    return ["state", "config"]
  return sorted(
    p.name for p in step_dir.iterdir() if p.is_dir() and p.name[0] not in "._"
  )


def load_run(workdir: str | os.PathLike, *, step: int | None = None) -> Run:
  """Restores the VAE of a training workdir.

  Args:
    workdir: the ``--workdir`` of a ``train.factorvae`` or ``train.oneclass``
      run (holding ``ckpt/``).
    step: checkpoint step (default: the latest).

  Returns:
    A :class:`Run`. Extra checkpoint items named ``latent_stats`` become
    ``Run.latent_stats``.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint; the message says
      where it looked.
  """
  from train import common  # Deferred: importing train pulls in orbax.

  workdir = str(workdir)
  if not (pathlib.Path(workdir) / common.CKPT_DIR).is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {os.path.join(workdir, common.CKPT_DIR)}: pass the "
      "--workdir of a finished training run (python -m train.oneclass or "
      "python -m train.factorvae)."
    )
  latest, _ = common.load_checkpoint(workdir, step=step, items=("config",))
  items = _checkpoint_items(workdir, latest)
  step, restored = common.load_checkpoint(workdir, step=latest, items=items)
  variables = _vae_variables(restored["state"])
  name, kwargs, input_shape = infer_architecture(variables["params"])
  return Run(
    name=name,
    model=models.make_model(name, **kwargs),
    variables=variables,
    input_shape=input_shape,
    latent_dim=kwargs["latent_dim"],
    config=dict(restored.get("config") or {}),
    step=int(step),
    latent_stats=_latent_stats(restored.get("latent_stats")),
    workdir=workdir,
  )


@functools.lru_cache(maxsize=8)
def _compiled_init(name: str, kwargs: tuple):
  """``jax.jit(model.init)``, compiled once per architecture (much cheaper
  than running the initialisers op by op)."""
  return jax.jit(models.make_model(name, **dict(kwargs)).init)


def init_model(
  name: str,
  *,
  latent_dim: int = 32,
  image_size: int | None = None,
  seed: int = 0,
) -> Run:
  """A randomly initialised VAE (for demos and tests).

  Args:
    name: a key of ``vae_attn.models.MODELS``.
    latent_dim: ``D``.
    image_size: input side of the ``resnet18`` model (multiple of 64;
      default 256); the other models have a fixed input size.
    seed: parameter seed.

  Returns:
    A :class:`Run` with step 0 and no config.
  """
  if name not in models.MODELS:
    raise ValueError(
      f"Unknown model {name!r}; choose one of {sorted(models.MODELS)}."
    )
  kwargs = {"latent_dim": latent_dim}
  input_shape = INPUT_SHAPES[name]
  if name == "resnet18":
    side = image_size or 256
    kwargs["image_size"] = side
    input_shape = (side, side, 3)
  elif image_size not in (None, input_shape[0]):
    raise ValueError(
      f"The {name} VAE takes {input_shape[0]}x{input_shape[1]} inputs; "
      f"image_size={image_size} applies to resnet18 only."
    )
  model = models.make_model(name, **kwargs)
  key_params, key_eps = jax.random.split(jax.random.key(seed))
  x = jnp.zeros((1, *input_shape), jnp.float32)
  init_fn = _compiled_init(name, tuple(sorted(kwargs.items())))
  variables = dict(init_fn(key_params, x, key_eps))
  return Run(
    name=name,
    model=model,
    variables=variables,
    input_shape=input_shape,
    latent_dim=latent_dim,
    config={},
    step=0,
    latent_stats=None,
    workdir=None,
  )
