"""eval.inference: micro-batches dealt over devices, equal to one call."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import inference

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0


def _fn(variables, x):
  h = x.reshape(x.shape[0], 4) @ variables["w"]
  return {"h": h, "norm": jnp.sum(h**2, axis=1)}


def _expected(x):
  return jax.device_get(_fn({"w": W}, jnp.asarray(x)))


@pytest.mark.parametrize("num", [0, 1, 5, 8, 21])
def test_equals_one_call_for_any_number_of_examples(num):
  x = np.random.default_rng(num).random((num, 2, 2), np.float32)
  got = inference.batched(_fn, {"w": W}, batch_size=4)(x)
  want = _expected(x)
  assert got["h"].shape == (num, 3) and got["norm"].shape == (num,)
  assert isinstance(got["h"], np.ndarray)
  np.testing.assert_allclose(got["h"], want["h"], rtol=1e-6)
  np.testing.assert_allclose(got["norm"], want["norm"], rtol=1e-6)


def test_micro_batches_dealt_over_devices_keep_their_order():
  # The same device three times: the dealing (batch i -> device i % 3) and
  # the reassembly are exercised without forcing host devices.
  traces = []

  def fn(variables, x):
    traces.append(x.shape)
    return _fn(variables, x)["h"]

  apply = inference.batched(
    fn, {"w": W}, batch_size=2, devices=jax.devices()[:1] * 3
  )
  for num in (7, 3, 11):
    x = np.random.default_rng(num).random((num, 2, 2), np.float32)
    np.testing.assert_allclose(apply(x), _expected(x)["h"], rtol=1e-6)
  assert traces == [(2, 2, 2)]  # One program for every N.


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="batch_size must be at least 1"):
    inference.batched(_fn, {"w": W}, batch_size=0)
  with pytest.raises(ValueError, match="devices is empty"):
    inference.batched(_fn, {"w": W}, devices=[])
  with pytest.raises(ValueError, match="leading example axis"):
    inference.batched(_fn, {"w": W})(np.float32(1.0))
  with pytest.raises(ValueError, match="count must be at least 1"):
    inference.use_cpu_devices(0)
  jax.devices()  # JAX is running in this process: too late to split.
  with pytest.raises(RuntimeError, match="before backends are initialized"):
    inference.use_cpu_devices(2)


def test_use_all_cpu_cores_splits_a_fresh_process_over_all_cores():
  script = textwrap.dedent(
    """
    import os
    import jax
    import numpy as np
    from eval import inference

    inference.use_all_cpu_cores()
    assert jax.device_count() == 2 * os.cpu_count(), jax.devices()
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    x = np.random.default_rng(0).random((37, 3), np.float32)
    got = inference.batched(lambda v, x: x @ v, w, batch_size=4)(x)
    np.testing.assert_allclose(got, x @ w, rtol=1e-6)
    print("ok", jax.device_count())
    """
  )
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  env["XLA_FLAGS"] = ""
  out = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["ok", str(2 * os.cpu_count())]
