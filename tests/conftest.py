"""Test setup: CPU only, fast compiles, no network."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")
# One CPU device, whatever an entry point called in-process would choose.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
