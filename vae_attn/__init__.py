"""vae_attn: visually explaining VAEs (Liu et al., CVPR 2020) in JAX/Flax."""
