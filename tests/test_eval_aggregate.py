"""Tests of ``python -m eval.aggregate``: known means, spreads and n."""

import json

import numpy as np
import pytest

from eval import aggregate


def _write(path, scores, seed, loss="ad"):
  folder = path / "eval" / "disentanglement"
  folder.mkdir(parents=True)
  results = {"meta": {"config": {"seed": seed, "loss": loss}}, "scores": scores}
  (folder / "results.json").write_text(json.dumps(results))
  return str(path)


def test_mean_std_n_and_comparison(tmp_path, capsys):
  a = [
    _write(tmp_path / f"ad{s}", {"fv": v, "mig": 0.1}, s)
    for s, v in enumerate([0.8, 0.9, 1.0])
  ]
  b = [
    _write(tmp_path / f"tc{s}", {"fv": v}, s, "tc")
    for s, v in enumerate([0.5, 0.6])
  ]
  out = tmp_path / "summary.json"
  rc = aggregate.main([*a, "--vs", *b, f"--json={out}", "--keys", "fv"])
  assert rc == 0
  stats = json.loads(out.read_text())
  fv = stats["A"]["disentanglement/fv"]
  assert fv["n"] == 3
  np.testing.assert_allclose(fv["mean"], 0.9)
  np.testing.assert_allclose(fv["std"], 0.1)  # Sample std (ddof=1).
  assert stats["B"]["disentanglement/fv"]["n"] == 2
  assert "disentanglement/mig" not in stats["A"]  # Filtered by --keys.
  text = capsys.readouterr().out
  assert "0.900 ± 0.100 (n=3)" in text and "+0.350" in text


def test_single_run_is_flagged(tmp_path, capsys):
  run = _write(tmp_path / "r0", {"fv": 0.7}, 0)
  assert aggregate.main([run]) == 0
  text = capsys.readouterr().out
  assert "n=1, no spread" in text and "not a result" in text


def test_configs_that_differ_beyond_the_seed_are_reported(tmp_path, capsys):
  runs = [
    _write(tmp_path / "a", {"fv": 0.7}, 0, "ad"),
    _write(tmp_path / "b", {"fv": 0.8}, 1, "tc"),
  ]
  assert aggregate.main(runs) == 0
  assert "differ in more than the seed: loss" in capsys.readouterr().out


def test_missing_results_name_the_command(tmp_path, capsys):
  assert aggregate.main([str(tmp_path)]) == 2
  assert "python -m eval.localization" in capsys.readouterr().err


def test_summarize_ignores_missing_keys():
  got = aggregate.summarize([{"x": 1.0}, {"x": 3.0, "y": 2.0}])
  assert got["x"].n == 2 and got["x"].mean == 2.0
  assert got["y"].n == 1 and np.isnan(got["y"].std)


@pytest.mark.parametrize("flag", ["--keys=nomatch", "--keys=("])
def test_bad_keys(tmp_path, flag):
  run = _write(tmp_path / "r", {"fv": 0.7}, 0)
  assert aggregate.main([run, flag]) == 2
