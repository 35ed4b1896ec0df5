"""The Table 3 reproduction command, end to end at smoke size."""

import json

import pytest

from eval import reproduce


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
  assert report in capsys.readouterr().out
  # A second call resumes the finished grid and scores it again.
  assert reproduce.main([*argv, "--skip-training"]) == 0


def test_table3_needs_two_seeds(capsys):
  with pytest.raises(SystemExit) as info:
    reproduce.main(["table3", "--seeds=1"])
  assert info.value.code == 2
  assert "--seeds must be >= 2" in capsys.readouterr().err
