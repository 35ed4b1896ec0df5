"""Temporary alias of :mod:`vae_attn.ops` (moved there; issue 22 item 5).

Deleted as soon as ``vae_attn.attention`` and ``vae_attn/_attention_*.py``
import :mod:`vae_attn.ops` directly. Import :mod:`vae_attn.ops` instead.
"""

from vae_attn.ops import conv_of_constant as conv_of_constant
from vae_attn.ops import fast_path as fast_path
from vae_attn.ops import flatten_dense_of_constant as flatten_dense_of_constant
