r"""Mean and spread of evaluation results over seeds (no single-seed numbers).

  python -m eval.aggregate runs/ad_seed*
  python -m eval.aggregate runs/ad_seed* --vs runs/tc_seed* \
      --name AD-FactorVAE --vs-name FactorVAE --keys factor_vae mig
  python -m eval.aggregate runs/bottle_seed* --out summary.md

Train and evaluate the runs first (one workdir per seed, or the members of
a seed grid). Each argument is a training workdir (every eval/*/results.json
under it), an evaluation folder or a results.json. Metric keys are prefixed
with the evaluation that wrote them ("localization/", "disentanglement/"),
so the same metric matches across runs whatever --out it was written to;
values that are not scores (thresholds, error bounds, counts such as
num_active_dims) are left out.

The runs of a group must differ in nothing but the seed (and run control
such as log_every); with --vs the two groups may differ only in the arms'
defining hyper-parameters (loss, gamma, lambda_ad, beta). Training length,
batch size, evaluated step, evaluation settings and metric sample sizes
must match: otherwise the command refuses (exit status 2) and names the
fields, or with --allow-mixed compares anyway under a loud line. A run
that trained on after its evaluation (its newest checkpoint is later than
the evaluated step) is named in a loud line too.

Prints a markdown table: per metric the mean, sample standard deviation
(ddof=1) and n of each group, and with --vs the difference of the means
with its 95% confidence interval and the two-sided p-value of Welch's
t-test, or "n/a" with the reason where the test is not defined (fewer than
two runs in a group, or no spread in either group). Under the table: each
group's runs, steps, batch size and sample sizes, and the software. --out
writes the report to a file, --json the numbers.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

from eval import cli
from workflow import configs, runs

RESULTS = "results.json"
# Flat keys ending so are not scores: thresholds, error bounds.
_NON_METRIC_SUFFIXES = ("_threshold", "_error_bound")
# Config fields that may differ between the seeds of one group: the seed
# and run control, which changes neither the model nor its training.
_FREE_FIELDS = frozenset(
  "seed log_every eval_every checkpoint_every max_to_keep workdir".split()
)
# Fields that define an arm (train.factorvae's grid fields, the objective):
# they may differ between the two groups, not within one.
ARM_FIELDS = frozenset({"loss", "gamma", "lambda_ad", "beta"})
# Spread below this is float noise: Welch's test is not defined there.
_ZERO_SPREAD = 1e-6


class Summary(NamedTuple):
  """One metric over the runs of a group: mean, sample std (``nan`` for one
  run), the number of runs that report it, and their values."""

  mean: float
  std: float
  n: int
  values: tuple[float, ...]


def find_results(path: str) -> list[str]:
  """The results files of ``path`` (a file, an evaluation folder or a run).

  Raises:
    FileNotFoundError: ``path`` does not exist or holds no results; the
      message says what to pass or run first.
  """
  if not os.path.exists(path):
    what = (
      "matches no file or folder" if glob.has_magic(path) else "does not exist"
    )
    raise FileNotFoundError(
      f"{path} {what}; pass training run folders, evaluation folders or "
      f"{RESULTS} files."
    )
  if os.path.isfile(path):
    return [path]
  if os.path.isfile(os.path.join(path, RESULTS)):
    return [os.path.join(path, RESULTS)]
  found = sorted(glob.glob(os.path.join(path, "eval", "*", RESULTS)))
  if found:
    return found
  members = sorted(glob.glob(os.path.join(path, "*", runs.CONFIG_NAME)))
  if members:  # A grid folder: its members are the runs.
    arms = sorted(
      {os.path.basename(os.path.dirname(m)).split("_")[0] for m in members}
    )
    example = f"{path}/{arms[0]}_*" + (
      f" --vs {path}/{arms[1]}_*" if len(arms) > 1 else ""
    )
    raise FileNotFoundError(
      f"{path} is a grid folder: pass its member runs, e.g. python -m "
      f"eval.aggregate {example} (score them first with python -m "
      f"eval.disentanglement --workdir={path})."
    )
  raise FileNotFoundError(
    f"No {RESULTS} in {path} (looked at {path}/{RESULTS} and "
    f"{path}/eval/*/{RESULTS}); run python -m eval.localization or "
    "python -m eval.disentanglement on it first."
  )


def evaluator(results: Mapping[str, Any], file: str) -> str:
  """The evaluation that wrote ``results`` (the metric keys' prefix).

  Raises:
    ValueError: the file is not an evaluation's results.
  """
  name = results.get("evaluator") or results.get("meta", {}).get("evaluator")
  if name:
    return str(name)
  if "scores" in results:
    return "disentanglement"
  if "metrics" in results:
    return "localization"
  raise ValueError(
    f"{file} is not the results.json of python -m eval.localization or "
    "python -m eval.disentanglement (it has neither 'metrics' nor "
    "'scores'); pass their results."
  )


def is_metric(key: str) -> bool:
  """Whether a flat key names a score (not a threshold, bound or count)."""
  last = key.rsplit("/", 1)[-1]
  return not (
    last.endswith(_NON_METRIC_SUFFIXES)
    or last.startswith("num_")
    or last in ("elapsed_time", "step", "seed")
  )


def _numbers(tree: Any, prefix: str = "") -> dict[str, float]:
  """Flattens the numeric leaves of nested dicts to ``a/b`` keys."""
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_numbers(v, f"{prefix}{k}/"))
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    out[prefix.rstrip("/")] = float(tree)
  return out


def _load(file: str) -> dict:
  """The JSON object of a results file; else a ValueError (a file named
  ``results.json`` is called damaged, another not a results file)."""
  try:
    with open(file) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:  # UnicodeDecodeError too (binary).
    reason = " ".join(str(e).split())
  else:
    if isinstance(results, dict):
      return results
    reason = f"it holds a JSON {type(results).__name__}, not an object"
  if os.path.basename(file) == RESULTS:
    raise ValueError(
      f"Cannot read {file} ({reason}); it is damaged: re-run the "
      "evaluation that wrote it."
    )
  raise ValueError(
    f"{file} is not a {RESULTS} ({reason}); pass the {RESULTS} of python "
    "-m eval.localization or python -m eval.disentanglement, or their "
    "folders."
  )


def _settings(name: str, results: Mapping[str, Any]) -> dict[str, Any]:
  """The evaluated step and the evaluation's settings and sample sizes."""
  meta = results.get("meta", {})
  out = {"step": meta.get("step")}
  keys = "quick data dataset category resolution num_samples max_images "
  keys += "num_test_images layers codes"
  out.update({f"{name}/{k}": meta[k] for k in keys.split() if k in meta})
  for metric, sizes in (results.get("sample_sizes") or {}).items():
    out[f"{name}/sample_sizes/{metric}"] = sizes
  return out


def read_run(path: str) -> tuple[dict[str, float], dict, dict]:
  """``(metrics, config, settings)`` of one run: its scores, training
  config (``{}`` if not recorded) and :func:`_settings`.

  Raises:
    FileNotFoundError: no results under ``path``.
    ValueError: a bad results file, or two of one evaluation.
  """
  metrics, config, settings, seen = {}, {}, {}, {}
  for file in find_results(path):
    results = _load(file)
    name = evaluator(results, file)
    if name in seen:
      raise ValueError(
        f"{path} holds two {name} results ({seen[name]} and {file}); pass "
        "the results.json to aggregate instead of the run folder."
      )
    seen[name] = file
    values = results.get("metrics") or results.get("scores") or {}
    metrics.update(
      {f"{name}/{k}": v for k, v in _numbers(values).items() if is_metric(k)}
    )
    config = config or results.get("meta", {}).get("config") or {}
    step = settings.get("step")
    settings.update(_settings(name, results))
    if settings["step"] is None:
      settings["step"] = step
  return metrics, config, settings


def summarize(runs: Sequence[Mapping[str, float]]) -> dict[str, Summary]:
  """Per metric: mean, sample std and n over the runs that report it."""
  keys = list(dict.fromkeys(k for run in runs for k in run))
  out = {}
  for key in keys:
    values = tuple(run[key] for run in runs if key in run)
    finite = np.array([v for v in values if math.isfinite(v)])
    mean = float(finite.mean()) if len(finite) else math.nan
    std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    out[key] = Summary(mean, std, len(finite), values)
  return out


class Comparison(NamedTuple):
  """Group A against group B on one metric: ``mean_A - mean_B``, its 95%
  interval and Welch's two-sided p (``nan`` where not defined, ``reason``
  says why)."""

  difference: float
  ci_low: float
  ci_high: float
  p: float
  reason: str


def compare(a: Summary, b: Summary) -> Comparison:
  """Welch's t-test (``scipy.stats.ttest_ind``) and the 95% interval of
  ``mean_A - mean_B``; undefined for a group of fewer than two runs or no
  spread in either group (std below 1e-6, float noise).
  """
  difference = a.mean - b.mean
  if a.n < 2 or b.n < 2:
    return Comparison(difference, math.nan, math.nan, math.nan, "n < 2")
  if a.std < _ZERO_SPREAD and b.std < _ZERO_SPREAD:
    return Comparison(
      difference, math.nan, math.nan, math.nan, "no spread in either group"
    )
  test = scipy.stats.ttest_ind(
    [v for v in a.values if math.isfinite(v)],
    [v for v in b.values if math.isfinite(v)],
    equal_var=False,
  )
  low, high = test.confidence_interval(0.95)
  return Comparison(difference, float(low), float(high), float(test.pvalue), "")


def config_differences(
  configs: Sequence[Mapping[str, Any]], free: frozenset = _FREE_FIELDS
) -> list[str]:
  """Fields (other than the ``free`` ones) whose values differ."""
  configs = [c for c in configs if c]
  if len(configs) < 2:
    return []
  keys = set().union(*configs) - free
  return sorted(k for k in keys if len({repr(c.get(k)) for c in configs}) > 1)


def cell(s: Summary | None) -> str:
  """``mean ± std (n=N)``; ``-`` without runs."""
  if s is None or s.n == 0:
    return "-"
  if s.n == 1:
    return f"{s.mean:.3f} (n=1, no spread)"
  return f"{s.mean:.3f} ± {s.std:.3f} (n={s.n})"


def comparison_cells(c: Comparison) -> list[str]:
  if c.reason:
    return [f"{c.difference:+.3f}", f"n/a ({c.reason})"]
  return [
    f"{c.difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]",
    f"{c.p:.3g}",
  ]


def table(
  groups: Mapping[str, Mapping[str, Summary]],
  keys: Sequence[str],
) -> list[str]:
  """Markdown lines: one row per metric, one column per group (and with two
  groups the difference with its 95% interval and Welch's p)."""
  names = list(groups)
  head = ["metric", *names]
  if len(names) == 2:
    head += [f"{names[0]} - {names[1]} [95% CI]", "Welch p"]
  rows = []
  for key in keys:
    rows.append([f"`{key}`", *(cell(groups[n].get(key)) for n in names)])
    if len(names) == 2:
      a, b = groups[names[0]].get(key), groups[names[1]].get(key)
      if a is not None and b is not None and a.n and b.n:
        rows[-1] += comparison_cells(compare(a, b))
      else:
        rows[-1] += ["-", "-"]
  return cli.markdown_table(head, rows)


def _describe(value: Any) -> str:
  if isinstance(value, Mapping):
    return ", ".join(f"{k}={v}" for k, v in value.items())
  return str(value)


def _group_lines(name, paths, configs, settings) -> list[str]:
  """What a group's runs are: n, steps, batch size, sample sizes."""
  first_config = next((c for c in configs if c), {})
  steps = sorted({str(s.get("step")) for s in settings})
  lines = [
    f"- {name}: n = {len(paths)} runs ({', '.join(paths)}); evaluated at "
    f"step {', '.join(steps)}; num_steps "
    f"{first_config.get('num_steps', '?')}, batch size "
    f"{first_config.get('batch_size', '?')}."
  ]
  sizes = {
    k.split("/sample_sizes/")[1]: v
    for k, v in (settings[0] if settings else {}).items()
    if "/sample_sizes/" in k
  }
  if sizes:
    lines.append(
      "  Metric sample sizes: "
      + "; ".join(f"{m}: {_describe(v)}" for m, v in sizes.items())
      + "."
    )
  return lines


@dataclasses.dataclass(frozen=True)
class Config:
  """The groups of runs to summarise and compare, and where to write."""

  runs: tuple[str, ...] = configs.field(
    configs.REQUIRED,
    "the runs of the first group: training workdirs, evaluation folders or "
    "results.json files (one per seed)",
    positional=True,
    nargs="+",
    metavar="RUN",
  )
  vs: list[str] | None = configs.field(
    None,
    "the runs of a second group to compare with (default: none)",
    nargs="+",
  )
  name: str = configs.field("A", "name of the first group")
  vs_name: str = configs.field("B", "name of the second group")
  keys: tuple[str, ...] = configs.field(
    (),
    "only metrics whose key matches one of these regular expressions "
    "(default: every metric)",
  )
  out: str | None = configs.field(
    None, "also write the markdown table here (default: print only)"
  )
  json: str | None = configs.field(
    None, "also write the statistics as JSON here (default: none)"
  )
  allow_mixed: bool = configs.field(
    False,
    "compare runs that differ in more than the seed (training length, batch "
    "size, sample sizes...) instead of refusing; the report says so loudly",
  )


def _mixed(groups_read) -> list[str]:
  """What makes the runs incomparable: fields that differ within a group
  (beyond the seed), or between groups (beyond the arms' fields)."""
  problems = []
  for name, read in groups_read.items():
    differ = config_differences([c for _, c, _ in read])
    differ += config_differences([s for _, _, s in read], frozenset())
    if differ:
      problems.append(f"the runs of {name} differ in {', '.join(differ)}")
  if len(groups_read) == 2:
    (na, ra), (nb, rb) = groups_read.items()
    differ = set()  # Configs beyond the arms' fields, and settings.
    for i, free in ((1, _FREE_FIELDS | ARM_FIELDS), (2, frozenset())):
      for a, b in itertools.product(ra, rb):
        differ.update(config_differences([a[i], b[i]], free))
    if differ:
      problems.append(f"{na} and {nb} differ in {', '.join(sorted(differ))}")
  return problems


def _stale(path: str, settings: Mapping[str, Any]) -> str | None:
  """Why the evaluation of training run ``path`` is older than its newest
  checkpoint (the run trained on after it was scored), else ``None``."""
  steps = runs.checkpoint_steps(runs.ckpt_dir(path))
  step = settings.get("step")
  if steps and isinstance(step, int) and steps[-1] > step:
    return f"{path} was evaluated at step {step} but trained to {steps[-1]}"
  return None


def _read_groups(config) -> tuple[dict, list[str], list[str], list[str]]:
  """``(groups, mixed, stale, notes)``: each group's summaries, the loud
  lines above the table (mixed runs under ``--allow-mixed``; evaluations
  older than their runs' newest checkpoint) and the notes on the runs.

  Raises:
    ValueError: runs given twice, or mixed runs without ``--allow-mixed``.
  """
  groups_paths = {config.name: config.runs}
  if config.vs:
    if config.vs_name == config.name:
      raise ValueError("--name and --vs-name must differ.")
    groups_paths[config.vs_name] = config.vs
  seen = {}  # A run counted twice (or in both groups) is no sample.
  for name, paths in groups_paths.items():
    for path in paths:
      for file in map(os.path.realpath, find_results(path)):
        if file in seen:
          raise ValueError(
            f"{file} is given twice (in {seen[file]} and {name}); pass each "
            "run once, and no run in both groups."
          )
        seen[file] = name
  groups_read = {
    name: [read_run(p) for p in paths] for name, paths in groups_paths.items()
  }
  problems = _mixed(groups_read)
  if problems and not config.allow_mixed:
    raise ValueError(
      f"Not comparable: {'; '.join(problems)}. Score runs of equal length, "
      "batch size and sample sizes, or pass --allow-mixed to compare anyway."
    )
  mixed = (
    [
      f"**MIXED RUNS (--allow-mixed): {'; '.join(problems)}. The numbers "
      "below are not a like-for-like comparison.**"
    ]
    if problems
    else []
  )
  old = [
    why
    for name, read in groups_read.items()
    for path, (_, _, settings) in zip(groups_paths[name], read, strict=True)
    if (why := _stale(path, settings))
  ]
  stale = []
  if old:
    stale.append(
      f"**STALE EVALUATIONS: {'; '.join(old)}. The numbers below are not "
      "the runs' final ones; evaluate the runs again.**"
    )
  groups, notes = {}, []
  for name, read in groups_read.items():
    groups[name] = summarize([m for m, _, _ in read])
    notes += _group_lines(
      name, groups_paths[name], [c for _, c, _ in read], [s for *_, s in read]
    )
  return groups, mixed, stale, notes


def _select(keys: list[str], patterns: Sequence[str] | None) -> list[str]:
  if not patterns:
    return keys
  try:
    compiled = [re.compile(k) for k in patterns]
  except re.error as e:
    raise ValueError(f"--keys: bad regular expression: {e}") from None
  keys = [k for k in keys if any(p.search(k) for p in compiled)]
  if not keys:
    raise ValueError(
      f"no metric matches --keys {list(patterns)}; drop --keys to list them "
      "all."
    )
  return keys


def _run(config: Config) -> int:
  # Before any reading: a bad --out/--json fails now, not after the table.
  if config.out:
    cli.make_out_file(config.out, flag="--out")
  if config.json:
    cli.make_out_file(config.json, flag="--json")
  groups, mixed, stale, notes = _read_groups(config)
  keys = list(dict.fromkeys(k for g in groups.values() for k in g))
  keys = _select(keys, config.keys)
  lines = table(groups, keys)
  notes.insert(
    0,
    "± is the sample standard deviation over the runs (ddof=1); n is the "
    "number of runs that report the metric."
    + (
      " The difference's interval and p come from Welch's t-test "
      "(unequal variances)."
      if len(groups) == 2
      else ""
    ),
  )
  if len(groups) == 2 and not any(
    all(k in g for g in groups.values()) for k in keys
  ):
    notes.append(
      "Warning: the two groups share no metric, so nothing is compared; "
      "evaluate both with the same eval command."
    )
  if any(g[k].n == 1 for g in groups.values() for k in keys if k in g):
    notes.append(
      "Some metrics come from a single run: they have no spread and are "
      "not a result; evaluate more seeds."
    )
  software = runs.software()
  top = [*mixed, *stale, ""] if mixed or stale else []
  text = "\n".join([*top, *lines, "", *notes, *cli.software_lines(software)])
  print(text, end="")
  if config.out:
    with open(config.out, "w") as f:
      f.write(text)
  if config.json:
    stats = {
      name: {k: s._asdict() for k, s in g.items() if k in keys}
      for name, g in groups.items()
    }
    if len(groups) == 2:
      (na, ga), (nb, gb) = groups.items()
      stats["comparison"] = {
        k: compare(ga[k], gb[k])._asdict()
        for k in keys
        if k in ga and k in gb and ga[k].n and gb[k].n
      }
    stats["mixed"], stats["stale"] = mixed, stale
    stats["software"] = software
    with open(config.json, "w") as f:
      json.dump(stats, f, indent=2)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.aggregate", description=__doc__
  )
  return cli.run_main(_run, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
