"""Rebuilds a trained VAE from a training workdir, for the eval drivers.

``load_run(workdir)`` restores the newest good checkpoint written by any
trainer (``train.factorvae``, ``train.oneclass``) through
``workflow.runs.restore``, onto the current devices (a run trained on 8
devices or by several processes evaluates on one), and rebuilds the model
from the run spec saved with it (``workflow.runs.RunSpec``: model name and
arguments, input shape, data source and folder, layer): nothing is inferred.
``init_model`` builds a randomly initialised model for demos.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import anomaly, models
from workflow import runs


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
    spec: the run spec (model, data source and folder, layer), or ``None``
      without a workdir.
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
  spec: runs.RunSpec | None = None

  @property
  def encode_fn(self):
    """``(variables, x) -> (mu, logvar)``."""
    return functools.partial(self.model.apply, method=self.model.encode)

  @property
  def default_layer(self) -> str:
    """The run's attention layer (its spec), else the paper's for the model."""
    if self.spec is not None and self.spec.layer:
      return self.spec.layer
    return models.DEFAULT_LAYERS[self.name]


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


def load_run(workdir: str | os.PathLike, *, step: int | None = None) -> Run:
  """Restores the VAE of a training workdir.

  Args:
    workdir: the ``--workdir`` of a ``train.factorvae`` or ``train.oneclass``
      run (holding ``spec.json`` and ``ckpt/``).
    step: checkpoint step (default: the newest complete, readable and finite
      one; damaged newer steps are skipped with a warning).

  Returns:
    A :class:`Run`. Extra checkpoint items named ``latent_stats`` become
    ``Run.latent_stats``.

  Raises:
    FileNotFoundError: the workdir does not exist or holds no run; the
      message says where it looked.
    NotADirectoryError: the workdir is a file.
    workflow.runs.CheckpointError: no checkpoint is usable (each step and
      why is named).
  """
  workdir = str(workdir)
  runs.check_run_dir(workdir)
  if not runs.ckpt_dir(workdir).is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {runs.ckpt_dir(workdir)}: pass the --workdir of a "
      "finished training run (python -m train.oneclass or python -m "
      "train.factorvae)."
    )
  spec = runs.read_spec(workdir)
  step, restored = runs.restore(
    workdir,
    items=("state",),
    optional_items=("latent_stats",),
    step=step,
  )
  variables = _vae_variables(restored["state"])
  return Run(
    name=spec.model,
    model=models.make_model(spec.model, **spec.model_kwargs),
    variables=variables,
    input_shape=tuple(spec.input_shape),
    latent_dim=int(spec.model_kwargs.get("latent_dim", 32)),
    config=runs.read_config(workdir),
    step=int(step),
    latent_stats=_latent_stats(restored.get("latent_stats")),
    workdir=workdir,
    spec=spec,
  )


@functools.lru_cache(maxsize=8)
def _compiled_init(name: str, kwargs: tuple):
  """``jax.jit(model.init)``, compiled once per architecture."""
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
    image_size: input side of a model whose size is an argument
      (``resnet18``: a multiple of 64, default 256); the others have a
      fixed input size.
    seed: parameter seed.

  Returns:
    A :class:`Run` with step 0 and no config; its input shape is the one
    the model's decoder produces.

  Raises:
    ValueError: an unknown model, or ``image_size`` for a fixed-size one.
  """
  if name not in models.MODELS:
    raise ValueError(
      f"Unknown model {name!r}; choose one of {sorted(models.MODELS)}."
    )
  kwargs = {"latent_dim": latent_dim}
  sized = "image_size" in inspect.signature(models.MODELS[name]).parameters
  if sized and image_size is not None:
    kwargs["image_size"] = image_size
  model = models.make_model(name, **kwargs)
  # (H, W, C): the shape the decoder produces (traced, nothing computed).
  z = jnp.zeros((1, latent_dim), jnp.float32)
  decoded, _ = jax.eval_shape(
    lambda: model.init_with_output(jax.random.key(0), z, method=model.decode)
  )
  input_shape = tuple(int(d) for d in decoded.shape[1:])
  if not sized and image_size not in (None, input_shape[0]):
    raise ValueError(
      f"The {name} VAE takes {input_shape[0]}x{input_shape[1]} inputs; "
      f"image_size={image_size} applies to models of variable size only."
    )
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
