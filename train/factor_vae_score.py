"""The FactorVAE score of a training run: the evaluation hook of
``train.factorvae`` (every ``--eval-every`` steps and at the end).

The metric itself is ``eval.metrics.factor_vae.compute_factor_vae`` (the
scripts in ``eval/`` score a saved run the same way); this module turns a
train state into the representation and KL functions it needs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from train import common
from vae_attn import losses, models
from vae_attn.data import dsprites


def factor_vae_score(
  state: common.TrainState, config: Any, source, encode_fn=None
) -> dict:
  """The FactorVAE metric of the posterior means (``eval.metrics``).

  With the ``paper`` convention, latents whose mean KL to the prior is below
  0.05 nats are pruned (Kim & Mnih 2018).

  Args:
    state: the train state.
    config: the run's ``train.factorvae.Config`` (its seed seeds the
      metric's random state; its ``score_*`` fields set the sample sizes).
    source: the dSprites source (its ground-truth interface if it has one).
    encode_fn: jitted ``(variables, x) -> (mu, logvar)`` (default: built).

  Returns:
    ``{"factor_vae_eval_accuracy": ..., "factor_vae_train_accuracy": ...,
    "factor_vae_num_active_dims": ...}``.
  """
  # Deferred: scikit-learn takes ~1 s to import.
  from eval.metrics import factor_vae

  if encode_fn is None:
    model = models.make_model("factorvae", latent_dim=config.latent_dim)
    encode_fn = jax.jit(functools.partial(model.apply, method=model.encode))
  variables = {"params": jax.device_get(state.params["vae"])}
  ground_truth = (
    source if hasattr(source, "sample_factors") else (dsprites.procedural())
  )

  def representation_fn(x: np.ndarray) -> np.ndarray:
    return np.asarray(encode_fn(variables, x)[0])

  def kl_fn(x: np.ndarray) -> np.ndarray:
    mu, logvar = (np.asarray(a) for a in encode_fn(variables, x))
    return np.asarray(losses.gaussian_kl_per_dim(mu, logvar))

  counts = {
    "num_train": config.score_num_train,
    "num_eval": config.score_num_eval,
    "num_variance_estimate": config.score_num_variance,
  }
  scores = factor_vae.compute_factor_vae(
    ground_truth,
    representation_fn,
    np.random.RandomState(config.seed),
    convention=config.score_convention,
    kl_function=kl_fn if config.score_convention == "paper" else None,
    **{k: v for k, v in counts.items() if v > 0},
  )
  return {f"factor_vae_{k}": float(v) for k, v in scores.items()}
