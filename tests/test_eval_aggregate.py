"""Tests of ``python -m eval.aggregate``: known means, spreads and n."""

import json

import numpy as np
import pytest
import scipy.stats

from eval import aggregate


def _write(
  path, scores, seed, loss="ad", *, num_steps=500, batch_size=64, sizes=None
):
  folder = path / "eval" / "disentanglement"
  folder.mkdir(parents=True)
  config = {
    "seed": seed,
    "loss": loss,
    "num_steps": num_steps,
    "batch_size": batch_size,
    "log_every": seed + 1,  # Run control may differ.
  }
  results = {
    "meta": {"config": config, "step": num_steps, "quick": False},
    "scores": scores,
    "sample_sizes": {"mig": sizes or {"num_train": 10000}},
  }
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


# (group A's runs, group B's runs, extra flags) -> exit status, key words.
# Each run: (loss, num_steps, batch_size, mig sample size).
_AD = ("ad", 500, 64, 10000)
_TC = ("tc", 500, 64, 10000)


@pytest.mark.parametrize(
  "a, b, flags, status, words",
  [
    # Within a group: anything but the seed (and run control) differs.
    ([_AD, ("tc", 500, 64, 10000)], [], [], 2, ["differ in loss"]),
    ([_AD, ("ad", 4, 64, 10000)], [], [], 2, ["num_steps", "step"]),
    ([_AD, ("ad", 500, 8, 10000)], [], [], 2, ["batch_size"]),
    ([_AD, ("ad", 500, 64, 300)], [], [], 2, ["sample_sizes/mig"]),
    # Between the groups: the arms' fields may differ, nothing else.
    ([_AD, _AD], [_TC, _TC], [], 0, ["| `disentanglement/fv` |"]),
    (
      [_AD, _AD],
      [("tc", 4, 8, 10000)] * 2,
      [],
      2,
      ["A and B differ in", "batch_size", "num_steps", "--allow-mixed"],
    ),
    (
      [_AD, _AD],
      [("tc", 4, 8, 10000)] * 2,
      ["--allow-mixed"],
      0,
      ["**MIXED RUNS (--allow-mixed)", "batch_size, num_steps"],
    ),
  ],
)
def test_runs_that_differ_beyond_the_seed_are_refused(
  tmp_path, capsys, a, b, flags, status, words
):
  def group(name, specs):
    return [
      _write(
        tmp_path / f"{name}{i}",
        {"fv": 0.5 + i / 10},
        i,
        loss,
        num_steps=steps,
        batch_size=batch,
        sizes={"num_train": size},
      )
      for i, (loss, steps, batch, size) in enumerate(specs)
    ]

  argv = group("a", a) + (["--vs", *group("b", b)] if b else []) + flags
  assert aggregate.main(argv) == status
  got = capsys.readouterr()
  text = got.out if status == 0 else got.err
  if status:
    assert len(text.strip().splitlines()) == 1, text
  for word in words:
    assert word in text, (word, text)
  if "--allow-mixed" in flags:  # Loud: the report's first line.
    assert text.startswith("**MIXED RUNS")


def test_report_states_n_steps_sample_sizes_spread_and_software(
  tmp_path, capsys
):
  a = [_write(tmp_path / f"a{s}", {"fv": 0.7 + s / 10}, s) for s in (0, 1)]
  assert aggregate.main(a) == 0
  text = capsys.readouterr().out
  for words in (
    "± is the sample standard deviation over the runs (ddof=1)",
    "A: n = 2 runs",
    "evaluated at step 500; num_steps 500, batch size 64",
    "Metric sample sizes: mig: num_train=10000",
    "## Software",
    "jax ",
    "scikit-learn ",
  ):
    assert words in text, words


def _summary(values):
  return aggregate.summarize([{"x": v} for v in values])["x"]


@pytest.mark.parametrize(
  "a, b, reason",
  [
    ([0.8, 0.8 + 1e-9], [0.5, 0.5], "no spread in either group"),  # Was 0.
    ([0.7, 0.7], [0.7, 0.7], "no spread in either group"),  # Was p = 1.
    ([0.7], [0.5, 0.6], "n < 2"),
  ],
)
def test_welch_p_is_not_applicable_where_undefined(a, b, reason):
  c = aggregate.compare(_summary(a), _summary(b))
  assert np.isnan(c.p) and np.isnan(c.ci_low) and c.reason == reason
  assert aggregate.comparison_cells(c)[1] == f"n/a ({reason})"


def test_welch_p_and_interval_match_scipy():
  a, b = [0.8, 0.9, 1.0], [0.5, 0.6, 0.62]
  c = aggregate.compare(_summary(a), _summary(b))
  ref = scipy.stats.ttest_ind(a, b, equal_var=False)
  np.testing.assert_allclose(c.p, ref.pvalue, rtol=1e-10)
  low, high = ref.confidence_interval(0.95)
  np.testing.assert_allclose([c.ci_low, c.ci_high], [low, high], rtol=1e-10)
  np.testing.assert_allclose(c.difference, np.mean(a) - np.mean(b))
  assert c.reason == ""


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


def _write_localization(path, auroc, threshold):
  path.parent.mkdir(parents=True, exist_ok=True)
  metrics = {
    "attention_mu/conv2/pixel_auroc": auroc,
    "attention_mu/conv2/best_iou_threshold": threshold,
    "attention_mu/conv2/aupro_error_bound": 1e-5,
  }
  results = {"meta": {"evaluator": "localization"}, "metrics": metrics}
  path.write_text(json.dumps(results))
  return str(path)


def test_names_match_whatever_the_folder_and_non_metrics_are_skipped(
  tmp_path,
):
  # One run evaluated into its own eval/localization, one with --out
  # elsewhere (passed as a folder) and one as a results.json file.
  a = tmp_path / "s0"
  _write_localization(a / "eval" / "localization" / "results.json", 0.8, 3.0)
  b = tmp_path / "elsewhere"
  _write_localization(b / "results.json", 0.9, 7.0)
  c = _write_localization(tmp_path / "s2" / "quick" / "results.json", 1.0, 1)
  out = tmp_path / "summary.json"
  assert aggregate.main([str(a), str(b), c, f"--json={out}"]) == 0
  stats = json.loads(out.read_text())["A"]
  assert list(stats) == ["localization/attention_mu/conv2/pixel_auroc"]
  auroc = stats["localization/attention_mu/conv2/pixel_auroc"]
  assert auroc["n"] == 3
  np.testing.assert_allclose(auroc["mean"], 0.9)


def test_disentanglement_counts_are_not_metrics(tmp_path):
  run = _write(tmp_path / "r", {"fv": 0.7, "factor_vae/num_active_dims": 5}, 0)
  metrics, _, _ = aggregate.read_run(run)
  assert metrics == {"disentanglement/fv": 0.7}


def test_two_results_of_one_evaluation_in_a_run_are_refused(tmp_path, capsys):
  run = tmp_path / "r"
  _write_localization(run / "eval" / "localization" / "results.json", 0.8, 1)
  _write_localization(run / "eval" / "quick" / "results.json", 0.7, 1)
  assert aggregate.main([str(run)]) == 2
  err = capsys.readouterr().err
  assert "two localization results" in err and "results.json" in err


def test_out_and_json_folders_are_made_before_reading(tmp_path, capsys):
  run = _write(tmp_path / "r", {"fv": 0.7}, 0)
  out, stats = tmp_path / "new" / "t.md", tmp_path / "other" / "s.json"
  assert aggregate.main([run, f"--out={out}", f"--json={stats}"]) == 0
  assert "| `disentanglement/fv` |" in out.read_text()
  assert "disentanglement/fv" in json.loads(stats.read_text())["A"]
  capsys.readouterr()
  # Checked first: made (and refused) before a missing run is read.
  assert aggregate.main(["nope", f"--out={tmp_path / 'made' / 't.md'}"]) == 2
  assert (tmp_path / "made").is_dir()
  assert capsys.readouterr().err.startswith("error: nope does not exist")


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_unwritable_out_and_json_fail_before_the_table(tmp_path, capsys, flag):
  run = _write(tmp_path / "r", {"fv": 0.7}, 0)
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert aggregate.main([run, f"{flag}={afile}/t"]) == 2
  got = capsys.readouterr()
  assert got.out == ""
  assert got.err == (
    f"error: cannot write {afile}/t ({afile} is a file, not a folder); "
    f"pass {flag}=<a writable path>\n"
  )
  assert aggregate.main([run, f"{flag}={tmp_path}"]) == 2
  got = capsys.readouterr()
  assert got.out == ""
  assert got.err == (
    f"error: {flag}={tmp_path} is a folder; pass {flag}={tmp_path}/<file "
    "name>\n"
  )


def test_missing_path_and_unmatched_glob_say_they_do_not_exist(
  tmp_path, capsys
):
  fix = "pass training run folders, evaluation folders or results.json files."
  assert aggregate.main([f"{tmp_path}/nonexist"]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {tmp_path}/nonexist does not exist; {fix}\n"
  assert aggregate.main([f"{tmp_path}/ad_seed*"]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {tmp_path}/ad_seed* matches no file or folder; {fix}\n"


def test_a_file_that_is_not_results_json_is_named_so(tmp_path, capsys):
  notes = tmp_path / "notes.txt"
  notes.write_text("my notes\n")
  listed = tmp_path / "list.json"
  listed.write_text("[1, 2]")
  binary = tmp_path / "image.png"
  binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
  for path in (notes, listed, binary):
    assert aggregate.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} is not a results.json (")
    assert err.endswith(
      "pass the results.json of python -m eval.localization or python -m "
      "eval.disentanglement, or their folders.\n"
    )
  assert aggregate.main([str(listed)]) == 2
  assert "(it holds a JSON list, not an object)" in capsys.readouterr().err
  damaged = tmp_path / "d" / "results.json"
  damaged.parent.mkdir()
  damaged.write_text('{"scores": ')
  assert aggregate.main([str(damaged)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: Cannot read {damaged} (")
  assert err.endswith("it is damaged: re-run the evaluation that wrote it.\n")


def test_groups_with_no_metric_in_common_are_warned_about(tmp_path, capsys):
  a = [_write(tmp_path / f"a{s}", {"fv": 0.5 + s / 10}, s) for s in (0, 1)]
  b = [_write(tmp_path / f"b{s}", {"mig": 0.1 + s / 10}, s) for s in (0, 1)]
  assert aggregate.main([*a, "--vs", *b]) == 0
  assert "the two groups share no metric" in capsys.readouterr().out
  c = [_write(tmp_path / f"c{s}", {"fv": 0.6 + s / 10}, s) for s in (0, 1)]
  assert aggregate.main([*a, "--vs", *c]) == 0
  assert "share no metric" not in capsys.readouterr().out


def _two_runs_and_a_grid(tmp_path):
  runs = [
    _write(tmp_path / f"ad_seed{s}", {"fv": 0.8 + s / 10}, s) for s in (0, 1)
  ]
  grid = tmp_path / "grid"
  for name in ("ad_seed0", "tc_seed0"):
    (grid / name).mkdir(parents=True)
    (grid / name / "config.json").write_text("{}")
  return runs, str(grid)


# (argv from the two runs a, b and a grid folder g, key words of the line)
MISUSE = [
  (["{a}", "{b}", "--vs", "{a}"], ["given twice", "in both groups"]),
  (["{a}", "{a}"], ["given twice", "each run once"]),
  (["{a}", "{b}", "--vs"], ["--vs", "expected at least one argument"]),
  (["{g}"], ["grid folder", "{g}/ad_* --vs {g}/tc_*", "eval.disentanglement"]),
]


@pytest.mark.parametrize(("argv", "words"), MISUSE)
def test_misused_groups_are_one_line_with_status_2(
  tmp_path, capsys, argv, words
):
  (a, b), g = _two_runs_and_a_grid(tmp_path)
  names = dict(a=a, b=b, g=g)
  try:  # Flags are parsed by argparse, which exits itself.
    status = aggregate.main([arg.format(**names) for arg in argv])
  except SystemExit as e:
    status = e.code
  assert status == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  for word in words:
    assert word.format(**names) in err[0], (word, err[0])


def test_an_evaluation_older_than_its_run_is_flagged(tmp_path, capsys):
  # Scored at step 500, then trained on to 600: the old scores were
  # aggregated without a word.
  runs = [_write(tmp_path / f"ad{s}", {"fv": 0.5 + s / 10}, s) for s in (0, 1)]
  for step in ("500", "600"):
    (tmp_path / "ad1" / "ckpt" / step).mkdir(parents=True)
  (tmp_path / "ad0" / "ckpt" / "500").mkdir(parents=True)
  out = tmp_path / "summary.json"
  assert aggregate.main([*runs, f"--json={out}"]) == 0
  text = capsys.readouterr().out
  (line,) = [x for x in text.splitlines() if "STALE" in x]
  assert "ad1 was evaluated at step 500 but trained to 600" in line
  assert "ad0" not in line and "evaluate the runs again" in line
  assert json.loads(out.read_text())["stale"] == [line]
