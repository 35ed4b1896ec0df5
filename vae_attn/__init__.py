"""vae_attn: visually explaining VAEs (Liu et al., CVPR 2020) in JAX/Flax.

The package holds modules only:
  ``vae_attn.attention``: the transform, ``attention`` and
  ``value_and_attention`` (per-latent Grad-CAM maps of any JAX encoder,
  paper eq. 3-4), ``AttentionMaps``, ``layer_paths``, ``upsample``,
  ``normalize``.
  ``vae_attn.anomaly``: latent statistics and eq. 5 anomaly maps.
  ``vae_attn.losses``: ELBO pieces, FactorVAE TC and L_AD (eq. 6).
  ``vae_attn.models``: the paper's VAEs.
  ``vae_attn.ops``: convolutions that XLA:CPU runs fast.
  ``vae_attn.data``: loaders and the batching pipeline.

Only the attention module is imported here, so that ``from vae_attn import
attention`` loads nothing else; ``from vae_attn import models`` (or
``anomaly``, ``losses``...) imports that submodule.
"""

from vae_attn import attention as attention

__all__ = ["attention"]
