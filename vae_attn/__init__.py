"""vae_attn: visually explaining VAEs (Liu et al., CVPR 2020) in JAX/Flax.

Public API:
  ``attention`` / ``value_and_attention``: per-latent Grad-CAM maps of a VAE
  encoder (paper eq. 3-4) as a JAX transform; module ``vae_attn.attention``
  also holds ``upsample`` and ``normalize``.
  ``anomaly``: latent statistics and eq. 5 anomaly maps.
  ``losses``: ELBO pieces, FactorVAE TC and L_AD (eq. 6).
  ``models``: the paper's VAEs.
"""

from vae_attn import anomaly, losses, models
from vae_attn import attention as attention
from vae_attn.attention import AttentionMaps, value_and_attention

__all__ = [
  "AttentionMaps",
  "anomaly",
  "attention",
  "losses",
  "models",
  "value_and_attention",
]
