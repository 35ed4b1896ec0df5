"""The precision that every op of :mod:`vae_attn.models.ops` carries (private).

``resolve_precision`` is re-exported by :mod:`vae_attn.models.ops`, whose
module docstring states the rule: ``None`` means the ambient default, read
once when the op is traced and passed explicitly to every ``lax`` call.
"""

from __future__ import annotations

import jax


def resolve_precision(precision=None):
  """``precision``, or the ambient default matmul precision if ``None``.

  Read when a function is traced, so that the result can be passed
  explicitly to every ``lax`` op (and stored in the static arguments of
  custom derivatives, which may be traced later, outside the caller's
  ``jax.default_matmul_precision`` scope).

  Args:
    precision: anything ``lax.dot_general`` accepts as ``precision``, or
      ``None``.

  Returns:
    ``precision`` if not ``None``, else the current value of
    ``jax_default_matmul_precision`` (a name such as ``"highest"``, or
    ``None`` when unset). Hashable.
  """
  if precision is not None:
    return tuple(precision) if isinstance(precision, list) else precision
  return jax.config.jax_default_matmul_precision
