"""Two processes on JAX's distributed runtime train like one with 2 devices.

The test launches this file as two processes on 127.0.0.1 (CPU, one device
each, gloo collectives, a free port), as a cluster user launches the
trainers, and a third process with 2 CPU devices as the reference; all
three run ``python -m train.oneclass --preset=smoke`` (data on the device,
eval hook on process 0, latent statistics saved by all). Every process has
a bounded timeout and is killed if the job stalls. The timeout is a stall
guard, not a speed bound (the SIGTERM test takes 25-35 s on 2 cores at load
2-4). The processes inherit the suite's JAX compilation cache, which earlier
tests fill: a step that process 0 loaded from it never finished its first
gloo all-reduce, so ``initialize_distributed`` turns the cache off on CPU.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np

from eval import restore
from train import distributed
from workflow import runs, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
  env["XLA_FLAGS"] = " ".join(  # The suite's flags, not a device count.
    f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
  )
  return env


# No report: the tests read the checkpoints and logs only.
ARGS = [
  "--preset=smoke",
  "--num-steps=2",
  "--checkpoint-every=2",
  "--no-report",
]


def _launch(argv, env):
  return subprocess.Popen(
    [sys.executable, "-m", "train.oneclass", *ARGS, *argv],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait_all(procs) -> list[str]:
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=TIMEOUT)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, out in zip(procs, outputs, strict=False):
    assert p.returncode == 0, out[-3000:]
  return outputs


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  port = _free_port()
  two = tmp_path / "two_processes"
  one = tmp_path / "one_process"
  launch = [
    f"--workdir={two}",
    f"--coordinator-address=127.0.0.1:{port}",
    "--num-processes=2",
  ]
  procs = [_launch([*launch, f"--process-id={i}"], _env(1)) for i in range(2)]
  procs.append(_launch([f"--workdir={one}"], _env(2)))
  outputs = _wait_all(procs)
  # Process 0 prints the summary; process 1 writes nothing of its own.
  assert "Done." in outputs[0] and "Done." not in outputs[1]
  assert not (two / "report").exists()  # --no-report

  # One process restores what two saved, on its one device.
  step, got = runs.restore(two, items=("state", "latent_stats"))
  _, want = runs.restore(one, items=("state", "latent_stats"))
  assert step == 2
  chex.assert_trees_all_close(
    got["state"]["params"], want["state"]["params"], atol=1e-5
  )
  chex.assert_trees_all_close(got["latent_stats"], want["latent_stats"])
  items = {p.name for p in (two / "ckpt" / "2").iterdir() if p.is_dir()}
  assert items == {"checksums", "latent_stats", "state"}, items
  assert runs.read_config(two)["num_steps"] == 2
  # The log is written once (process 0), each logged step once.
  rows = writers.read_scalars(two)
  assert [r["step"] for r in rows if "train/loss" in r] == [2]
  assert [r["step"] for r in rows if "eval/loss" in r] == [2]
  run = restore.load_run(two)
  assert run.step == 2 and run.latent_stats is not None
  np.testing.assert_allclose(
    np.asarray(run.latent_stats.mean), np.asarray(want["latent_stats"]["mean"])
  )


def test_sigterm_on_one_process_saves_one_step_on_all(tmp_path):
  port = _free_port()
  argv = [
    f"--workdir={tmp_path}",
    f"--coordinator-address=127.0.0.1:{port}",
    "--num-processes=2",
    "--num-steps=100000",
    "--steps-per-call=1",
    "--eval-num-examples=0",
    # Only the interrupt saves: the work after the signal is one call, one
    # log row and one save whatever the machine's load.
    "--checkpoint-every=100000",
    "--log-every=1",
  ]
  procs = [_launch([*argv, f"--process-id={i}"], _env(1)) for i in range(2)]
  # The signal comes once step 1 is logged: the work after it is then one
  # call, one log row and one save, whatever the machine's load.
  log = tmp_path / "metrics.jsonl"
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline and not (
    log.exists() and log.read_text().strip()
  ):
    time.sleep(0.2)
  try:
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.communicate()
  assert codes == [128 + signal.SIGTERM] * 2
  steps = sorted(
    int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()
  )
  assert len(steps) == 1 and 0 < steps[0] < 100000
  step, restored = runs.restore(tmp_path)
  assert step == steps[0] and int(restored["state"]["step"]) == step


def test_a_multi_process_cpu_launch_turns_the_compilation_cache_off(
  monkeypatch,
):
  # Process 0 loading a step from the persistent cache stalled the first
  # all-reduce (see the module docstring): the launch must compile instead.
  calls = []
  monkeypatch.setattr(
    jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw))
  )
  saved = {
    k: getattr(jax.config, k)
    for k in (
      "jax_enable_compilation_cache",
      "jax_cpu_collectives_implementation",
    )
  }
  try:
    jax.config.update("jax_enable_compilation_cache", True)
    assert distributed.initialize_distributed("127.0.0.1:1", 2, 1, env={})
    assert calls == [(("127.0.0.1:1",), {"num_processes": 2, "process_id": 1})]
    assert not jax.config.jax_enable_compilation_cache
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
  finally:
    for k, v in saved.items():
      jax.config.update(k, v)
