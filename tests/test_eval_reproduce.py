"""The Table 3 reproduction command, end to end at smoke size (the two
runs are marked ``slow``: ``pytest -m slow`` runs them, as CI does)."""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from eval import reproduce
from workflow import runs

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_table3_smoke_trains_one_grid_scores_and_reports(tmp_path, capsys):
  argv = [
    "table3",
    "--steps=2",
    "--seeds=2",
    "--batch-size=8",
    "--quick",
    "--metrics=factor_vae",
    f"--workdir={tmp_path}",
  ]
  assert reproduce.main(argv) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert sorted(results["members"]) == [
    "ad_seed0",
    "ad_seed1",
    "tc_seed0",
    "tc_seed1",
  ]
  meta = results["meta"]
  assert (meta["steps"], meta["seeds"], meta["data"]) == (
    2,
    [0, 1],
    "procedural",
  )
  assert meta["backend"] == "cpu" and "--loss=tc,ad" in meta["train_command"]
  row = results["summary"]["factor_vae/paper/eval_accuracy"]
  assert row["tc"]["n"] == row["ad"]["n"] == 2
  report = (tmp_path / "report.md").read_text()
  assert "| paper, Table 3 (FactorVAE metric) | 0.82 | 0.93 |" in report
  assert "2 training steps per run (the paper: 300,000)" in report
  # Sample sizes and the software are in the report itself.
  assert "Sample sizes, factor_vae/paper: L=20" in report
  assert "## Software" in report and "scikit-learn" in report
  assert results["software"]["jax"]
  got = capsys.readouterr()
  # Where the report is, not the report; not the trainer's Done/Next block.
  assert f"Report: {tmp_path / 'report.md'}" in got.out
  assert "| paper, Table 3" not in got.out
  assert "Done." not in got.out and "Next:" not in got.out
  assert "Scored at step 2 (this run's scores)" in got.out
  # A progress line per run and metric while scoring.
  for k, name in enumerate(["tc_seed0", "tc_seed1", "ad_seed0", "ad_seed1"]):
    line = f"scoring run {k + 1} of 4 ({name}): FactorVAE metric (paper"
    assert line in got.err, line
  # Resumed to 3 steps without the trainer's scores (--no-score): the
  # summary is this step's, measured now.
  assert reproduce.main([*argv[:1], "--steps=3", *argv[2:]]) == 0
  out = capsys.readouterr().out
  assert "Scored at step 3" in out and "step 2" not in out
  results = json.loads((tmp_path / "results.json").read_text())
  assert {m["step"] for m in results["members"].values()} == {3}
  # Scoring only: the finished grid again.
  assert reproduce.main([*argv, "--skip-training", "--steps=3"]) == 0


def test_table3_needs_two_seeds(capsys):
  with pytest.raises(SystemExit) as info:
    reproduce.main(["table3", "--seeds=1"])
  assert info.value.code == 2
  assert "--seeds must be in [2, 1000]" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_while_training_waits_for_the_save_and_exits_130(tmp_path):
  # A terminal's Ctrl-C reaches the process group of eval.reproduce; the
  # trainer runs in its own group and gets the interrupt passed on once.
  argv = ["table3", "--steps=400", "--seeds=2", "--batch-size=8", "--quick"]
  proc = subprocess.Popen(
    [sys.executable, "-m", "eval.reproduce", *argv, f"--workdir={tmp_path}"],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  log = tmp_path / "runs" / "ad_seed1" / "metrics.jsonl"
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    if log.exists() and log.read_text().strip():  # Step 100 logged.
      break
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, out + err
  assert (
    err.strip().splitlines()[-1] == "Interrupted; run the same command again."
  )
  assert "Traceback" not in err
  # The trainer saved every member before this command returned.
  for member in ("tc_seed0", "tc_seed1", "ad_seed0", "ad_seed1"):
    steps = runs.checkpoint_steps(tmp_path / "runs" / member / runs.CKPT_DIR)
    assert steps and 100 <= max(steps) < 400, (member, steps)
  alive = []
  for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    with contextlib.suppress(OSError):  # A process that ended meanwhile.
      if str(tmp_path).encode() in cmdline.read_bytes():
        alive.append(cmdline)
  assert not alive, "the trainer outlived eval.reproduce"
