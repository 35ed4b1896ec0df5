"""Test setup: CPU only, fast compiles, no network."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
