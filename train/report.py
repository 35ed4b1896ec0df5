"""A run's closing report: loss curves, attention maps and traversals.

Every trainer writes ``<workdir>/report/`` at the end (process 0):
``loss_curves.png``, ``attention.png`` (Fig. 8 style: images, their mean map
(eq. 4) and their most responsive latents' maps), ``traversals.png`` and
``report.md`` listing them with the final scores.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import attention, losses
from workflow import figures, writers

_log = logging.getLogger(__name__)

REPORT_DIR = "report"


class _Run(NamedTuple):
  """What ``workflow.figures.traversal_figure`` reads of a run."""

  model: Any
  variables: dict
  input_shape: tuple[int, ...]

  def encode_fn(self, variables, x):
    return self.model.apply(variables, x, method=self.model.encode)


def write(
  run_dir: str | os.PathLike,
  images: np.ndarray,
  *,
  model,
  variables: dict,
  layer: str,
  step: int,
  num_latents: int = 6,
) -> pathlib.Path:
  """Writes ``<run_dir>/report/`` for a finished run; returns ``report.md``.

  Args:
    run_dir: a finished run folder.
    images: ``float32 [N, H, W, C]`` in [0, 1], the model's input shape (the
      first one is traversed).
    model, variables: the trained VAE and its final variables.
    layer: the attention layer (``encoder/conv1``).
    step: the final step.
    num_latents: latents shown per image (those of largest map mass).
  """
  run_dir = pathlib.Path(run_dir)
  out = run_dir / REPORT_DIR
  out.mkdir(exist_ok=True)
  # This process's copy of the replicated arrays: no collective (the other
  # processes of a multi-process run do not take part in the report).
  variables = jax.tree.map(
    lambda a: (
      np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a
    ),
    variables,
  )
  run = _Run(model, variables, tuple(images.shape[1:]))
  rows = writers.read_scalars(run_dir)
  _log.info("Report: loss curves, attention maps, traversals -> %s", out)
  figures.scalar_curves(out / "loss_curves.png", rows)
  x = np.asarray(images, np.float32)
  mu_logvar = jax.jit(run.encode_fn)(run.variables, jnp.asarray(x))
  mu, logvar = (np.asarray(a) for a in mu_logvar)
  latent_dim = mu.shape[-1]
  k = min(num_latents, latent_dim)
  maps = jax.jit(attention.attention(run.encode_fn, layer))(run.variables, x)
  figures.attention_figure(
    out / "attention.png",
    x,
    jax.device_get(maps),
    k=k,
    order="response",
    scale="image",
    title=f"attention at {layer}: mean (eq. 4) and the {k} most responsive "
    "latents",
  )
  kl = np.asarray(losses.gaussian_kl_per_dim(mu, logvar)).mean(axis=0)
  figures.traversal_figure(
    run,
    x[:1],
    kl,
    str(out / "traversals.png"),
    num_latents=min(8, latent_dim),
    limit=2.5,
    steps=9,
    title="latent traversals (rows: latents by mean KL of the images)",
  )
  last = {}
  for row in rows:
    last.update(row)
  scores = "\n".join(
    f"- {k}: {v:.4g}"
    for k, v in sorted(last.items())
    if k.startswith("eval/") or k in ("train/loss", "train/recon", "train/kl")
  )
  path = out / "report.md"
  path.write_text(
    f"# {run_dir.name}: training report\n\n"
    f"Step {step}; attention layer {layer}.\n\n"
    f"Last logged values:\n\n{scores}\n\n"
    "The eval/ values are the trainer's quick checks on small samples; "
    "python -m eval.disentanglement or eval.localization score a run at "
    "the published sample sizes.\n\n"
    "![loss curves](loss_curves.png)\n\n"
    "![attention](attention.png)\n\n"
    "![traversals](traversals.png)\n"
  )
  return path
