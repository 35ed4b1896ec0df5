"""Argument checks of the attention transform (private).

Options are checked when :func:`vae_attn.attention.value_and_attention`
builds the transform, call arguments when the returned function runs. Each
failure is one ``TypeError`` or ``ValueError`` that names the problem and
the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn import _attention_precision as precision_lib

CODES = ("mu", "sample", "difference")
POSITIVES = ("relu", "abs")
GRADIENT_SCALES = (None, "rms")


def check_options(
  encode_fn, layer, code, positive, gradient_scale, chunk_size, precision
) -> tuple[str, ...]:
  """The requested layers, once every option of the transform is checked.

  Raises:
    TypeError: ``encode_fn`` is not callable; ``layer`` is not a path or a
      sequence of paths.
    ValueError: an unknown ``code``, ``positive``, ``gradient_scale`` or
      ``precision``, or ``chunk_size < 1``.
  """
  if not callable(encode_fn):
    raise TypeError(f"encode_fn must be callable, got {encode_fn!r}.")
  layers = check_layer(layer)
  if code not in CODES:
    raise ValueError(f"Unknown code {code!r}; choose one of {CODES}.")
  if positive not in POSITIVES:
    raise ValueError(
      f"Unknown positive {positive!r}; choose one of {POSITIVES}."
    )
  if gradient_scale not in GRADIENT_SCALES:
    raise ValueError(
      f"Unknown gradient_scale {gradient_scale!r}; choose one of "
      f"{GRADIENT_SCALES}."
    )
  if chunk_size is not None and (
    not isinstance(chunk_size, int) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
  precision_lib.precision_name(precision)
  return layers


def _concrete(value) -> np.ndarray | None:
  """``value`` as a NumPy array, or ``None`` if it is traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def check_layer(layer) -> tuple[str, ...]:
  """``layer`` (a name or a sequence of names) as a tuple of names."""
  layers = (layer,) if isinstance(layer, str) else layer
  if isinstance(layers, Sequence) and layers:
    layers = tuple(layers)
    if all(isinstance(name, str) and name for name in layers):
      return layers
  raise TypeError(
    f"layer must be a layer path such as 'encoder/conv2' (a unique suffix "
    f"such as 'conv2' works too) or a list of them, got {layer!r}. "
    "attention.layer_paths(encode_fn, variables, x) lists the layers."
  )


def check_images(x) -> None:
  """Raises unless ``x`` is a non-empty float batch ``[B, H, W, C]``."""
  if not hasattr(x, "ndim") or x.ndim != 4:
    shape = getattr(x, "shape", type(x).__name__)
    raise ValueError(
      f"attention expects a batch of NHWC images [B, H, W, C], got {shape}; "
      "add a batch axis with x[None] for a single image."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"attention needs floating-point images (it differentiates the "
      f"encoder), got dtype {x.dtype}; convert them first, e.g. "
      "x.astype(jnp.float32) / 255 for 8-bit images in [0, 255]."
    )
  if x.shape[0] == 0:
    raise ValueError(
      f"attention got an empty batch (x of shape {tuple(x.shape)}); pass "
      "at least one image."
    )


def code_shape(output) -> tuple[int, int]:
  """``(B, D)`` of ``encode_fn``'s ``(mu, logvar)``, checked."""
  if (
    isinstance(output, (tuple, list))
    and len(output) == 2
    and all(getattr(o, "ndim", 0) == 2 for o in output)
  ):
    return tuple(output[0].shape)
  raise TypeError(
    "encode_fn must return the posterior (mu, logvar), each [B, D], e.g. "
    "functools.partial(model.apply, method=model.encode); got "
    f"{jax.tree.map(lambda o: o.shape, output)}."
  )


def check_code_args(code: str, key, stats) -> None:
  """Raises unless ``key`` and ``stats`` are given where ``code`` needs them."""
  if code != "mu" and key is None:
    raise ValueError(f'code="{code}" samples noise: pass key=...')
  if code == "difference" and stats is None:
    raise ValueError(
      'code="difference" needs the latent statistics of the normal data: '
      "pass stats=vae_attn.anomaly.latent_statistics(...)."
    )
  if code != "difference" and stats is not None:
    raise ValueError(
      f'stats= is used only by code="difference" (eq. 5), and this '
      f'transform differentiates code="{code}"; drop stats= or build the '
      'transform with code="difference".'
    )


class Stats(NamedTuple):
  """Latent statistics of the normal data, checked (``[D]`` each)."""

  mean: jax.Array
  var: jax.Array


def check_stats(stats, d: int) -> Stats:
  """``stats`` (``LatentStats`` or its dict) as ``Stats``, checked.

  Concrete statistics with a non-finite value or a negative variance raise;
  traced ones cannot be inspected, and a negative variance becomes NaN, so
  that every map it touches is NaN rather than silently wrong.
  """
  if isinstance(stats, Mapping):
    if not {"mean", "var"} <= set(stats):
      raise TypeError(
        "stats as a dict needs the entries 'mean' and 'var' (as "
        f"LatentStats._asdict() saves them), got keys {sorted(stats)}."
      )
    mean, var = stats["mean"], stats["var"]
  elif not any(
    callable(getattr(stats, name, callable)) for name in ("mean", "var")
  ):
    mean, var = stats.mean, stats.var
  else:
    raise TypeError(
      "stats must be vae_attn.anomaly.LatentStats (attributes mean and var, "
      "[D] each) or a dict with 'mean' and 'var' entries, got "
      f"{type(stats).__name__}."
    )
  mean, var = jnp.asarray(mean), jnp.asarray(var)
  for name, value in (("mean", mean), ("var", var)):
    if value.shape != (d,):
      raise ValueError(
        f"stats.{name} has shape {value.shape}, but the encoder's code has "
        f"D={d} elements: pass the statistics of this model "
        "(vae_attn.anomaly.latent_statistics with its encoder)."
      )
  mean_np, var_np = _concrete(mean), _concrete(var)
  if mean_np is None or var_np is None:
    return Stats(mean, jnp.where(var >= 0, var, jnp.nan))
  if not (np.isfinite(mean_np).all() and np.isfinite(var_np).all()):
    raise ValueError(
      "stats holds NaN or infinite values; recompute them with "
      "vae_attn.anomaly.latent_statistics on finite normal data."
    )
  if (var_np < 0).any():
    raise ValueError(
      f"stats.var must be non-negative (a variance), got minimum "
      f"{var_np.min():.3g}; recompute it with "
      "vae_attn.anomaly.latent_statistics."
    )
  return Stats(mean, var)


def check_latents(latents, b: int, d: int):
  """``(latents [B, K] integers, valid [B, K] or None)``.

  Concrete indices are checked here; traced ones cannot be, and the maps of
  an index outside ``[0, D)`` are NaN (``valid`` marks them).
  """
  if isinstance(latents, (list, tuple)):
    try:
      latents = np.asarray(latents)
    except ValueError as e:
      raise ValueError(
        f"latents must be integer indices [B, K], got a ragged list: {e}"
      ) from e
  dtype = getattr(latents, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"latents must be integer indices [B, K] in [0, D), got "
      f"{dtype or type(latents).__name__}; e.g. jnp.array([[0, 3], [1, 2]])."
    )
  if latents.ndim != 2 or latents.shape[0] != b or latents.shape[1] == 0:
    raise ValueError(
      f"latents must be integer indices [B, K] with B={b} and K >= 1, got "
      f"shape {latents.shape}."
    )
  values = _concrete(latents)
  if values is None:
    latents = jnp.asarray(latents)
    return latents, (latents >= 0) & (latents < d)
  bad = values[(values < 0) | (values >= d)]
  if bad.size:
    raise ValueError(
      f"latents must lie in [0, {d}) (the code has D={d} elements), got "
      f"{sorted(set(bad.tolist()))[:8]}."
    )
  return jnp.asarray(values), None
