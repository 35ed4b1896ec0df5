"""report.md of python -m eval.disentanglement: scores, sizes, notes.

Formatting only: ``write_report(path, results)`` turns the results dict of
``eval.disentanglement.evaluate`` into markdown. Every score is shown with
the sample sizes it was measured at, and a quick evaluation says why its
FactorVAE score differs from the one in the training log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The paper's FactorVAE-metric numbers (Table 3; docs/paper.md#results).
PAPER = {
  "AD-FactorVAE": "about 0.93 (two reproductions: 0.82-0.86)",
  "FactorVAE gamma=10/20/40/100": "0.75 / 0.77 / 0.82 / 0.70",
  "beta-VAE beta=1/4/6/16": "0.69 / 0.73 / 0.70 / 0.68",
}

# Display order and description of the scores of ``metrics.compute_all``.
SCORES = (
  ("factor_vae/paper/eval_accuracy", "FactorVAE metric, paper convention"),
  (
    "factor_vae/disentanglement_lib/eval_accuracy",
    "FactorVAE metric, disentanglement_lib convention",
  ),
  ("beta_vae/eval_accuracy", "beta-VAE metric (Higgins et al.)"),
  ("mig", "MIG (Chen et al.)"),
  ("dci/disentanglement", "DCI disentanglement (Eastwood & Williams)"),
  ("dci/completeness", "DCI completeness"),
  ("dci/informativeness_test", "DCI informativeness (test accuracy)"),
  ("sap", "SAP (Kumar et al.)"),
)

_SHORT = {
  "num_per_vote": "L",
  "num_per_point": "pairs/point",
  "num_train": "train",
  "num_eval": "eval",
  "num_test": "test",
  "num_variance_estimate": "variance images",
}


def objective(config: Mapping[str, Any]) -> str:
  """The training objective and its weights, from the run config."""
  loss = config.get("loss")
  if loss == "ad":
    return (
      f"AD-FactorVAE (gamma={config.get('gamma')}, "
      f"lambda={config.get('lambda_ad')})"
    )
  if loss == "tc":
    return f"FactorVAE (gamma={config.get('gamma')})"
  if loss == "beta":
    return f"beta-VAE (beta={config.get('beta')})"
  return "VAE"


def metric_of(key: str) -> str:
  """The suite metric a flat score key belongs to (``dci/x`` -> ``dci``)."""
  if key.startswith("factor_vae/"):
    return "/".join(key.split("/")[:2])
  return key.split("/")[0]


def format_sizes(sizes: Mapping[str, Any] | None) -> str:
  """``"L=64, train=10,000, ..."``; ``"-"`` when unknown."""
  if not sizes:
    return "-"
  parts = []
  for name, value in sizes.items():
    shown = f"{value:,}" if isinstance(value, int) else str(value)
    parts.append(f"{_SHORT.get(name, name)}={shown}")
  return ", ".join(parts)


def _fmt(value: float | None, key: str = "") -> str:
  if value is None or not math.isfinite(value):
    return "-"
  if "/num_" in key:  # A count, e.g. num_active_dims.
    return str(int(value))
  return f"{value:.3f}"


def _score_table(results: Mapping[str, Any]) -> list[str]:
  scores, sizes = results["scores"], results["sample_sizes"]
  lines = [
    "| score | value | sample sizes | what |",
    "|---|---|---|---|",
  ]
  described = dict(SCORES)
  keys = [key for key, _ in SCORES] + sorted(set(scores) - set(described))
  for key in keys:
    metric = metric_of(key)
    size_text = format_sizes(sizes.get(metric))
    if metric == "dci":
      size_text += f", importance={results['meta']['dci_importance']}"
    value = _fmt(scores.get(key), key)
    lines.append(
      f"| `{key}` | {value} | {size_text} | {described.get(key, '')} |"
    )
  return lines


def _training_log_note(results: Mapping[str, Any]) -> list[str]:
  """Why this FactorVAE score differs from the training log's."""
  logged = results.get("training_log")
  if not logged:
    return []
  name = f"factor_vae/{logged['convention']}"
  ours = results["scores"].get(f"{name}/eval_accuracy")
  return [
    "",
    "## This score and the training log's",
    "",
    f"The training log ends with a FactorVAE score of "
    f"{_fmt(logged['eval_accuracy'])} (step {logged['step']}, "
    f"`{logged['convention']}` convention, "
    f"{format_sizes(logged['sample_sizes'])}, seed {logged['seed']}); "
    f"this evaluation measured {_fmt(ours)} in the same convention at "
    f"{format_sizes(results['sample_sizes'].get(name))} with metric seed "
    f"{results['meta']['seed']}. The metric is an accuracy over a few "
    "hundred random votes, so different sample sizes and seeds give "
    "different numbers: with 100 votes its standard error is about 0.05, "
    "and fewer images per vote (L) make each vote noisier, which lowers the "
    "score. Compare scores only at equal sizes"
    + (
      "; the full evaluation (without --quick) uses the published ones."
      if results["meta"]["quick"]
      else "."
    ),
  ]


def _notes(results: Mapping[str, Any]) -> list[str]:
  notes = results.get("notes") or []
  if not notes:
    return []
  return ["", "## Notes", ""] + [f"- {note}" for note in notes]


def _timings(results: Mapping[str, Any]) -> str:
  parts = [
    f"{name} {seconds:.1f} s" for name, seconds in results["timings"].items()
  ]
  return f"Elapsed: {results['elapsed_time']:.1f} s ({'; '.join(parts)})."


def write_report(path: str, results: Mapping[str, Any]) -> str:
  """Writes ``report.md`` for ``results``; returns ``path``."""
  meta = results["meta"]
  lines = [
    f"# Disentanglement: {meta['objective']}",
    "",
    f"Model `{meta['model']}` (D = {meta['latent_dim']}) from "
    f"`{meta['workdir']}`, step {meta['step']}; data: {meta['data']} "
    f"dSprites; metric seed {meta['seed']}; "
    + (
      "**quick sample sizes** (a smoke run, not comparable with the paper)."
      if meta["quick"]
      else "published sample sizes."
    )
    + (
      " Codes were encoded once for all 737,280 images and looked up."
      if meta["tabulate"]
      else ""
    ),
    "",
    *_score_table(results),
    "",
    "Sizes: L = images per vote; train / eval (or test) = votes, points or "
    "images of each phase. DCI importance `gbt` is disentanglement_lib's "
    "gradient boosting (its numbers); `random_forest` is this project's "
    "faster convention, whose numbers are its own (eval.metrics.dci).",
    "",
    "Conventions of the FactorVAE metric (the published sizes; the table "
    "gives the sizes used):",
    "",
  ]
  for name, conv in results["conventions"].items():
    fields = ", ".join(f"{k}={v}" for k, v in conv.items())
    lines.append(f"- `{name}`: {fields}")
  lines += _training_log_note(results)
  lines += [
    "",
    "Paper (FactorVAE metric, Table 3): "
    + "; ".join(f"{k}: {v}" for k, v in PAPER.items())
    + ". A single run is not a result: train several seeds and run "
    "`python -m eval.aggregate` for the mean and spread.",
    *_notes(results),
    "",
    "## Figures",
    "",
    "- `attention.png`: inputs and the attention maps (layer "
    f"`{results['figures']['attention']['layer']}`) of their two "
    "highest-responding latents (paper Fig. 8).",
    "- `traversals.png`: one input (first column: the input and its "
    "reconstruction) decoded with a single latent swept over the values in "
    "the column titles, rows ordered by the latent's mean KL.",
    "",
    _timings(results),
    "",
  ]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
