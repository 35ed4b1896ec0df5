"""Test setup: CPU only, fast compiles, no network."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")
# Compiled programs are shared, for this run only, between the xdist workers,
# the notebook kernels and the subprocesses of the tests (many of them train
# the same smoke models). The first process to get here (the xdist
# controller) makes the folder; the workers inherit it; the creator removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="vae-attn-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Every program, however quick to compile: hundreds of small ones repeat
# between processes (6 min 51 s instead of 7 min 23 s for the suite, same
# machine and load, bench/README.md).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# MLIR locations without Python tracebacks (by default every op carries up
# to 100 frames, and a test's stack is deep): lowering and compiling are
# faster; programs and error messages are otherwise the same. Subprocesses
# inherit it.
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "false")
# XLA:CPU compiles the suite's programs with LLVM at -O1 (the default is -O2):
# they are small and most run a few steps, so compiling them is much of the
# suite's time (bench/README.md, the suite's time). Subprocesses inherit it;
# a level already in XLA_FLAGS is kept (e.g. =2 to compare).
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _FLAGS:
  _FLAGS += " --xla_backend_optimization_level=1"
  os.environ["XLA_FLAGS"] = _FLAGS.strip()

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# One CPU device in this process, whatever an entry point called in-process
# would choose (subprocesses of the tests choose their own).
jax.config.update("jax_num_cpu_devices", 1)
