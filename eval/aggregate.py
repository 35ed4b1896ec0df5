r"""Mean and spread of evaluation results over seeds (no single-seed numbers).

  python -m eval.aggregate runs/ad_seed*
  python -m eval.aggregate runs/ad_seed* --vs runs/tc_seed* \
      --name AD-FactorVAE --vs-name FactorVAE --keys factor_vae mig
  python -m eval.aggregate runs/bottle_seed* --out summary.md

Make the runs first, one workdir per seed, and evaluate each, e.g.

  for s in 0 1 2; do
    python -m train.factorvae --loss=ad --seed=$s --workdir=runs/ad_seed$s
    python -m eval.disentanglement --workdir=runs/ad_seed$s
  done

Each argument is a training workdir, an evaluation folder or a
results.json. A workdir contributes every eval/*/results.json under it.
Metric keys are prefixed with the evaluation that wrote them
("localization/", "disentanglement/"), read from the results file itself, so
the same metric matches across runs whatever folder (--out) it was written
to. The metrics read are the flat "metrics" (localization) or "scores"
(disentanglement) dict; values that are not scores (thresholds, error
bounds, counts such as best_iou_threshold or num_active_dims) are left out.

Prints a markdown table: per metric the mean, sample standard deviation
(ddof=1) and number of runs n of each group, and with --vs the
difference of the means and the two-sided p-value of Welch's t-test. A
metric with n = 1 has no spread and is flagged. --out writes the table
to a file, --json the numbers.
"""

from __future__ import annotations

import dataclasses
import glob
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
from workflow import configs

RESULTS = "results.json"
# Flat keys ending so are not scores: thresholds, error bounds.
_NON_METRIC_SUFFIXES = ("_threshold", "_error_bound")
# Config fields that may differ between the seeds of one group.
_FREE_FIELDS = frozenset(
  {
    "seed",
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "max_to_keep",
  }
)


class Summary(NamedTuple):
  """Statistics of one metric over the runs of a group.

  Attributes:
    mean: the mean.
    std: sample standard deviation (``nan`` for one run).
    n: number of runs that report the metric.
    values: the values, in the order of the runs.
  """

  mean: float
  std: float
  n: int
  values: tuple[float, ...]


def find_results(path: str) -> list[str]:
  """The results files of ``path`` (a file, an evaluation folder or a run).

  Raises:
    FileNotFoundError: ``path`` does not exist (e.g. a glob the shell left
      unexpanded), or holds no results; the message says what to pass or
      run first.
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
  if not found:
    raise FileNotFoundError(
      f"No {RESULTS} in {path} (looked at {path}/{RESULTS} and "
      f"{path}/eval/*/{RESULTS}); run python -m eval.localization or "
      "python -m eval.disentanglement on it first."
    )
  return found


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
  """The JSON object of a results file.

  Raises:
    ValueError: ``file`` cannot be read or holds no JSON object; a file not
      named ``results.json`` is called not a results file, one so named
      damaged.
  """
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


def read_run(path: str) -> tuple[dict[str, float], dict]:
  """``(metrics, config)`` of one run (config ``{}`` if not recorded).

  Raises:
    FileNotFoundError: no results under ``path``.
    ValueError: a results file is unreadable, not an evaluation's, or two
      results of one evaluation under one run.
  """
  metrics, config, seen = {}, {}, {}
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
  return metrics, config


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


def welch_p(a: Summary, b: Summary) -> float:
  """Two-sided p-value of Welch's t-test (``nan`` below two runs each)."""
  if a.n < 2 or b.n < 2:
    return math.nan
  xa = np.array([v for v in a.values if math.isfinite(v)])
  xb = np.array([v for v in b.values if math.isfinite(v)])
  if np.ptp(xa) == 0 and np.ptp(xb) == 0:
    return 0.0 if xa[0] != xb[0] else 1.0
  return float(scipy.stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def config_differences(configs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Config fields (other than the seed and run control) that differ."""
  configs = [c for c in configs if c]
  if len(configs) < 2:
    return []
  keys = set().union(*configs) - _FREE_FIELDS
  return sorted(k for k in keys if len({repr(c.get(k)) for c in configs}) > 1)


def _cell(s: Summary | None) -> str:
  if s is None or s.n == 0:
    return "-"
  if s.n == 1:
    return f"{s.mean:.3f} (n=1, no spread)"
  return f"{s.mean:.3f} ± {s.std:.3f} (n={s.n})"


def table(
  groups: Mapping[str, Mapping[str, Summary]],
  keys: Sequence[str],
) -> list[str]:
  """Markdown lines: one row per metric, one column per group."""
  names = list(groups)
  head = ["metric", *names]
  if len(names) == 2:
    head += [f"{names[0]} - {names[1]}", "Welch p"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in keys:
    cells = [f"`{key}`", *(_cell(groups[n].get(key)) for n in names)]
    if len(names) == 2:
      a, b = groups[names[0]].get(key), groups[names[1]].get(key)
      if a is not None and b is not None and a.n and b.n:
        p = welch_p(a, b)
        cells += [
          f"{a.mean - b.mean:+.3f}",
          "-" if math.isnan(p) else f"{p:.3g}",
        ]
      else:
        cells += ["-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
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
  vs: tuple[str, ...] = configs.field(
    (), "the runs of a second group to compare with (default: none)"
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


def _read_groups(config) -> tuple[dict[str, dict[str, Summary]], list[str]]:
  """Summaries of each group and the notes about its runs."""
  groups_paths = {config.name: config.runs}
  if config.vs:
    if config.vs_name == config.name:
      raise ValueError("--name and --vs-name must differ.")
    groups_paths[config.vs_name] = config.vs
  groups, notes = {}, []
  for name, paths in groups_paths.items():
    read = [read_run(p) for p in paths]
    groups[name] = summarize([m for m, _ in read])
    differ = config_differences([c for _, c in read])
    if differ:
      notes.append(
        f"Warning: the runs of {name} differ in more than the seed: "
        f"{', '.join(differ)}."
      )
    notes.append(f"{name}: {len(paths)} runs: {', '.join(paths)}")
  return groups, notes


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
  groups, notes = _read_groups(config)
  keys = list(dict.fromkeys(k for g in groups.values() for k in g))
  keys = _select(keys, config.keys)
  lines = table(groups, keys)
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
  text = "\n".join([*lines, "", *notes]) + "\n"
  print(text, end="")
  if config.out:
    with open(config.out, "w") as f:
      f.write(text)
  if config.json:
    stats = {
      name: {k: s._asdict() for k, s in g.items() if k in keys}
      for name, g in groups.items()
    }
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
