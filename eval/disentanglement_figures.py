"""Figures of python -m eval.disentanglement: Fig. 8 maps and traversals."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from eval import disentanglement_report as report
from eval import figures, restore
from vae_attn import attention as attention_lib
from vae_attn import losses

_LOG = logging.getLogger(__name__)


def top_latent_figure(
  run: restore.Run,
  x: np.ndarray,
  layer: str,
  path: str,
  title: str,
) -> dict:
  """Fig. 8: the maps of each input's two highest-responding latents.

  "Highest-responding" is the total mass of a latent's map, the rule of
  ``L_AD``'s ``top2`` pair mode.
  """
  fn = attention_lib.attention(run.encode_fn, layer)
  maps = jax.device_get(jax.jit(fn)(run.variables, jnp.asarray(x)))
  per_latent = np.asarray(maps.per_latent)
  n, d = per_latent.shape[:2]
  response = per_latent.reshape(n, d, -1).sum(-1)
  top = np.argsort(-response, axis=1, kind="stable")[:, :2]
  shown = np.take_along_axis(per_latent, top[:, :, None, None], axis=1)
  shown = np.asarray(attention_lib.upsample(jnp.asarray(shown), x.shape[1:3]))
  overlap = losses.attention_disentanglement(
    jnp.asarray(per_latent), jax.random.key(0), mode="top2"
  )
  figures.top_latent_maps(path, x, shown, top, title=title)
  return {
    "layer": layer,
    "top_latents": top.tolist(),
    "top2_overlap_l_ad": [float(v) for v in np.asarray(overlap)],
  }


def traversal_figure(
  run: restore.Run,
  x: np.ndarray,
  kl: np.ndarray,
  path: str,
  *,
  num_latents: int,
  limit: float,
  steps: int,
  title: str,
) -> dict:
  """Decodes ``mu(x)`` with one latent swept over ``[-limit, limit]``.

  The rows are the ``num_latents`` latents of largest mean KL (the
  informative ones first); ``x`` is one image ``[1, H, W, C]``.
  """
  mu, _ = jax.jit(run.encode_fn)(run.variables, jnp.asarray(x))
  order = np.argsort(-kl, kind="stable")[:num_latents]
  values = np.linspace(-limit, limit, steps, dtype=np.float32)
  z = np.repeat(np.asarray(mu), len(order) * steps, axis=0)
  z = z.reshape(len(order), steps, -1)
  z[
    np.arange(len(order))[:, None], np.arange(steps)[None, :], order[:, None]
  ] = values[None, :]
  # One jitted decode: the traversals, then the reconstruction of mu.
  decode = jax.jit(
    lambda variables, z: jax.nn.sigmoid(
      run.model.apply(variables, z, method=run.model.decode)
    )
  )
  images = np.asarray(
    decode(run.variables, jnp.concatenate([z.reshape(-1, z.shape[-1]), mu]))
  )
  decoded = images[:-1].reshape(len(order), steps, *run.input_shape)
  recon = images[-1:]
  figures.traversals(
    path,
    decoded,
    order,
    values,
    reference=[x[0], np.asarray(recon)[0]],
    reference_labels=["input", "reconstruction"],
    row_labels=[f"KL {kl[i]:.2f}" for i in order],
    title=title,
  )
  return {"latents": order.tolist(), "values": values.tolist()}


def make_figures(
  config, run, data, mu_and_kl, out: str
) -> tuple[dict, np.ndarray]:
  """attention.png and traversals.png; returns their data and the mean KL."""
  rng = np.random.RandomState(config.seed)
  x = np.asarray(data.sample_observations(config.num_images, rng), np.float32)
  kl = mu_and_kl(data.sample_observations(512, rng))[:, run.latent_dim :]
  kl = kl.mean(axis=0)
  objective = report.objective(run.config)
  layer = config.layer or run.default_layer
  _LOG.info("figure 1/2: attention maps of %d images at %s", len(x), layer)
  attention = top_latent_figure(
    run,
    x,
    layer,
    os.path.join(out, "attention.png"),
    f"{objective}: two highest-responding latents",
  )
  _LOG.info("figure 2/2: latent traversals")
  traversals = traversal_figure(
    run,
    x[:1],
    kl,
    os.path.join(out, "traversals.png"),
    num_latents=min(config.num_traversals, run.latent_dim),
    limit=config.traversal_range,
    steps=config.traversal_steps,
    title=f"{objective}: latent traversals",
  )
  return {"attention": attention, "traversals": traversals}, kl
