"""Rebuilds a trained VAE from a training workdir, for the eval drivers.

``load_run(workdir)`` restores the newest good checkpoint of any trainer
onto the current devices and rebuilds the model from the run spec saved
with it (``workflow.runs.RunSpec``): nothing is inferred. ``init_model``
builds a randomly initialised model for demos.
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

  ``name`` is a key of ``vae_attn.models.MODELS``; ``variables`` are the
  VAE's only; ``config`` is the training config (``{}``), ``step`` the
  checkpoint step (0), ``latent_stats`` the normal-data statistics a
  one-class trainer saves, ``workdir`` and ``spec`` the run's (``None`` for
  a random model).
  """

  name: str
  model: nn.Module
  variables: dict
  input_shape: tuple[int, int, int]
  latent_dim: int
  config: dict
  step: int = 0
  latent_stats: anomaly.LatentStats | None = None
  workdir: str | None = None
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
  if isinstance(value, Mapping) and {"mean", "var"} <= set(value):
    value = (value["mean"], value["var"], value.get("count", np.nan))
  if isinstance(value, (list, tuple)) and len(value) == 3:
    return anomaly.LatentStats(*(jnp.asarray(v) for v in value))
  return None


def load_run(workdir: str | os.PathLike, *, step: int | None = None) -> Run:
  """Restores the VAE of a training workdir (``spec.json`` and ``ckpt/``).

  ``step`` defaults to the newest complete, readable and finite checkpoint
  (damaged newer steps are skipped with a warning).

  Raises:
    FileNotFoundError: the workdir does not exist or holds no run.
    NotADirectoryError: the workdir is a file.
    workflow.runs.CheckpointError: no checkpoint is usable.
  """
  workdir = str(workdir)
  runs.check_run_dir(workdir)
  if not runs.ckpt_dir(workdir).is_dir():
    members = [p.name for p in runs.member_runs(workdir)]
    if members:
      shown = ", ".join(members[:4]) + (", ..." if len(members) > 4 else "")
      raise FileNotFoundError(
        f"{workdir} is a grid folder: pass the --workdir of one of its member "
        f"runs ({shown}), e.g. --workdir={os.path.join(workdir, members[0])}."
      )
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
  """A randomly initialised VAE (for demos and tests), at the input shape
  its decoder produces; ``image_size`` sets the input side of a model of
  variable size (``resnet18``: a multiple of 64, default 256).

  Raises:
    ValueError: an unknown model, or ``image_size`` for a fixed-size one.
  """
  kwargs = {"latent_dim": latent_dim}
  build = models.MODELS.get(name)
  sized = (
    build is not None and "image_size" in inspect.signature(build).parameters
  )
  if sized and image_size is not None:
    kwargs["image_size"] = image_size
  model = models.make_model(name, **kwargs)  # ValueError: an unknown name.
  input_shape = models.input_shape(model)
  if not sized and image_size not in (None, input_shape[0]):
    raise ValueError(
      f"The {name} VAE takes {input_shape[0]}x{input_shape[1]} inputs; "
      f"image_size={image_size} applies to models of variable size only."
    )
  key_params, key_eps = jax.random.split(jax.random.key(seed))
  x = jnp.zeros((1, *input_shape), jnp.float32)
  init_fn = _compiled_init(name, tuple(sorted(kwargs.items())))
  variables = dict(init_fn(key_params, x, key_eps))
  return Run(name, model, variables, input_shape, latent_dim, config={})
