"""Anomaly maps of a test split: attention (eq. 3-5) and the residual.

A method is named ``attention_<code>/<layer>`` (``layer`` without its
``encoder/`` prefix) or ``residual``. Attention maps stay at their layer's
resolution ``[N, h, w]`` and the residual at the model's input size
``[N, H, W]``; ``eval.localization_scores`` upsamples both
(``vae_attn.attention.upsample``) to the resolution of the chosen protocol.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eval import cli, restore
from eval import localization_data as data_lib
from vae_attn import anomaly
from vae_attn import attention as attention_lib
from vae_attn.data import pipeline

CODES = ("mu", "difference")


def short(layer: str) -> str:
  """``encoder/conv2`` -> ``conv2`` (the name used in reports)."""
  return layer.removeprefix("encoder/")


def method_name(code: str, layer: str) -> str:
  """The name of the attention maps of ``code`` at ``layer``."""
  return f"attention_{code}/{short(layer)}"


def _probe(run: restore.Run) -> jax.Array:
  return jnp.zeros((1, *run.input_shape), jnp.float32)


def ablation_layers(run: restore.Run) -> list[str]:
  """Every top-level encoder conv block (``encoder/conv1``...), or for the
  ResNet the first conv of each stage."""
  valid = attention_lib.layer_paths(run.encode_fn, run.variables, _probe(run))
  convs = [p for p in valid if re.fullmatch(r"encoder/conv\d+", p)]
  if convs:
    return convs
  return [p for p in valid if re.fullmatch(r"encoder/stage\d_block1/conv1", p)]


def resolve_layers(run: restore.Run, layers: Sequence[str]) -> list[str]:
  """Full paths of ``layers`` (unique suffixes allowed), without repeats.

  Raises:
    ValueError: a layer is unknown or ambiguous (the valid ones are listed).
  """
  try:
    paths = attention_lib.resolve_layers(
      run.encode_fn, run.variables, _probe(run), list(layers)
    )
  except ValueError as e:
    raise ValueError(f"--layers: {e}") from None
  return list(dict.fromkeys(paths.values()))


def make_maps_fn(
  run: restore.Run,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  **attention_kwargs,
):
  """A jitted ``fn(variables, x, stats, key) -> {method: maps}``.

  Attention maps come at layer resolution ``[B, h, w]``, the residual
  ``|x - sigmoid(decode(mu))|`` at image size ``[B, H, W]``. The parameters
  and statistics are arguments, not constants of the compiled program.
  """
  layers = list(layers)
  encode_fn, model = run.encode_fn, run.model

  def maps_fn(variables, x, stats, key):
    out = {}
    (mu, _), maps = attention_lib.value_and_attention(
      encode_fn, layers, code="mu", **attention_kwargs
    )(variables, x)
    if "mu" in codes:
      for layer in layers:
        out[method_name("mu", layer)] = maps[layer].mean
    if "difference" in codes:
      draws = anomaly.difference_attention(
        encode_fn,
        layers,
        variables,
        x,
        stats,
        key,
        num_samples=num_samples,
        **attention_kwargs,
      )
      for layer in layers:
        out[method_name("difference", layer)] = draws[layer].mean
    x_hat = jax.nn.sigmoid(model.apply(variables, mu, method=model.decode))
    out["residual"] = anomaly.residual_map(x, x_hat)
    return out

  return jax.jit(maps_fn)


def _records(batch: dict, channels: int) -> dict[str, np.ndarray]:
  """The fields of a test batch that scoring and figures need."""
  n = len(batch["image"])
  return {
    "image": data_lib.to_channels(
      np.asarray(batch["image"], np.float32), channels
    ),
    "mask": np.asarray(batch["mask"])[..., 0] > 0.5,
    "label": np.asarray(batch["label"]).astype(bool),
    "has_mask": np.asarray(batch.get("has_mask", np.ones(n))).astype(bool),
    "defect_type": np.asarray(
      batch.get("defect_type", np.array([""] * n)), dtype=object
    ),
  }


def compute_maps(
  run: restore.Run,
  test_source,
  stats: anomaly.LatentStats | None,
  *,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  batch_size: int,
  seed: int,
  **attention_kwargs,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs the test split through the model; returns ``(maps, data)``.

  ``maps``: method -> float32 maps (``[N, h, w]`` at layer resolution for
  attention, ``[N, H, W]`` for the residual), in the order codes x layers,
  then the residual. ``data``: ``image [N, H, W, C]``, ``mask [N, H, W]``
  (bool, at model size), ``label [N]``, ``has_mask [N]`` and
  ``defect_type [N]``.

  Raises:
    ValueError: the test split is empty.
  """
  fn = make_maps_fn(run, layers, codes, num_samples, **attention_kwargs)
  key = jax.random.key(seed)
  channels = run.input_shape[-1]
  maps: dict[str, list] = {}
  data: dict[str, list] = {}
  num_batches = -(-len(test_source) // batch_size)
  batches = pipeline.single_pass(test_source, batch_size, num_threads=0)
  bar = cli.progress(batches, total=num_batches, desc="maps")
  for i, batch in enumerate(bar):
    records = _records(batch, channels)
    out = fn(
      run.variables,
      jnp.asarray(records["image"]),
      stats,
      jax.random.fold_in(key, i),
    )
    for name, value in jax.device_get(out).items():
      maps.setdefault(name, []).append(np.asarray(value, np.float32))
    for name, value in records.items():
      data.setdefault(name, []).append(value)
  if not data:
    raise ValueError(
      "The test split is empty; check --data-dir and --category."
    )
  order = [method_name(c, p) for c in codes for p in layers]
  maps_np = {k: np.concatenate(maps[k]) for k in [*order, "residual"]}
  return maps_np, {k: np.concatenate(v) for k, v in data.items()}


def latent_stats(
  run: restore.Run, train_source, batch_size: int
) -> tuple[anomaly.LatentStats, str]:
  """The checkpoint's statistics, or one pass over the training split."""
  if run.latent_stats is not None:
    return run.latent_stats, "checkpoint"
  channels = run.input_shape[-1]
  to_channels = functools.partial(data_lib.to_channels, channels=channels)
  passes = pipeline.single_pass(train_source, batch_size, num_threads=0)
  total = -(-len(train_source) // batch_size)
  batches = (
    to_channels(np.asarray(b["image"], np.float32))
    for b in cli.progress(passes, total=total, desc="latent statistics")
  )
  stats = anomaly.latent_statistics(run.encode_fn, run.variables, batches)
  return stats, f"computed from the training split ({int(stats.count)} images)"
