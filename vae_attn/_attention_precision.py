"""Matmul precision of the attention transform (private).

Re-exported by :mod:`vae_attn.attention` (``PRECISIONS``,
``matmul_precision``); its module docstring gives the measurements behind
the default ``"highest"``.
"""

from __future__ import annotations

import contextlib

import jax
from jax import lax

# Names of `precision`, as `jax.default_matmul_precision` takes them.
PRECISIONS = ("highest", "high", "default")

Precision = str | lax.Precision | None


def precision_name(precision: Precision) -> str | None:
  """``precision`` as one of :data:`PRECISIONS`, or ``None``.

  Raises:
    ValueError: an unknown precision.
  """
  if precision is None:
    return None
  if isinstance(precision, lax.Precision):
    return precision.name.lower()
  if isinstance(precision, str) and precision.lower() in PRECISIONS:
    return precision.lower()
  raise ValueError(
    f"Unknown precision {precision!r}; choose one of {PRECISIONS}, a "
    "jax.lax.Precision, or None (the caller's jax_default_matmul_precision)."
  )


def matmul_precision(precision: Precision = "highest"):
  """A context manager: JAX code traced inside uses ``precision``.

  ``jax.default_matmul_precision`` under this module's names. Every dot and
  convolution traced inside the ``with`` block without its own precision
  gets ``precision`` (it is read when a function is traced, so wrap the
  code that traces: a ``jax.jit``-ed step's first call, or the body of the
  step function). The convolutions of :mod:`vae_attn.models.ops` keep it in
  their derivatives, also when these are traced after the block (the
  backward pass of a ``jax.grad`` taken outside it). Nothing global
  changes: the setting is local to the block and thread.

  Args:
    precision: ``"highest"`` (full float32 on every backend), ``"high"``,
      ``"default"`` (the backend's fastest: TF32 on recent NVIDIA GPUs,
      bfloat16 passes on TPU), the same as a ``jax.lax.Precision``, or
      ``None`` (a no-op: the caller's setting stays).

  Returns:
    A context manager.

  Raises:
    ValueError: an unknown precision.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from vae_attn import attention
    >>> with attention.matmul_precision("highest"):
    ...   text = jax.jit(jnp.dot).lower(jnp.ones(3), jnp.ones(3)).as_text()
    >>> "HIGHEST" in text
    True
  """
  name = precision_name(precision)
  if name is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name)
