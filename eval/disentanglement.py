r"""Disentanglement of a FactorVAE / AD-FactorVAE / beta-VAE (paper Table 3).

  python -m eval.disentanglement --workdir=runs/factorvae_ad
  python -m eval.disentanglement --workdir=runs/factorvae_tc --quick
  python -m eval.disentanglement --workdir=runs/ad --data=npz \
      --data-dir=dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz

Restores the VAE of --workdir (a run, or a grid folder: every member run)
and scores its posterior means on dSprites with every disentanglement metric
of eval.metrics: the FactorVAE metric in the "disentanglement_lib" and the
"paper" convention (Kim & Mnih's, pruning collapsed dimensions by their KL
to the prior), the beta-VAE metric, MIG, DCI and SAP.

Every metric runs at its published sample sizes unless --quick (small
sizes for CPU smoke runs, not comparable with the paper). The full
evaluation encodes all 737,280 dSprites images once and shares the codes
between the metrics (--no-tabulate: every metric encodes its own draws).
DCI uses the random-forest importance (--dci-importance=gbt:
disentanglement_lib's numbers, tens of minutes; docs/evaluation.md). Data
default to the run's; the procedural dSprites renderer needs no file.

Writes into --out (default <workdir>/eval/disentanglement, or
<workdir>/eval/disentanglement_quick with --quick): results.json (flat
"scores", each metric's sample sizes, the conventions, timings), report.md,
attention.png (Fig. 8 style: inputs and the attention maps of their two
highest-responding latents) and traversals.png (latent traversals of the
most informative latents, by KL). Progress goes to stderr: one line per
stage, and bars on a terminal.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import sklearn.exceptions
import tqdm

from eval import cli, inference, restore
from eval.metrics import dci as dci_lib
from eval.metrics import disentanglement as suite
from eval.metrics import factor_vae, sampling
from vae_attn import losses
from vae_attn.data import dsprites
from workflow import configs, figures, logs, runs

DATA = ("procedural", "npz", "tfds")

_LOG = logging.getLogger("eval.disentanglement")  # Also as __main__.


# Ground-truth data: the dSprites factors of the run (flags, else its spec).


def load_data(config: Any, run: restore.Run, cache: dict | None = None):
  """``(data, kind)``: the dSprites ground-truth data of the flags, else of
  the run's spec; once per source with a ``cache``."""
  spec = run.spec
  kind = config.data or (spec.data if spec else "") or "procedural"
  path = config.data_dir or (spec.data_dir if spec else "") or ""
  if cache is not None:
    if (kind, path) not in cache:
      cache[kind, path] = load_data(config, run)
    return cache[kind, path]
  if kind not in DATA:
    raise ValueError(
      f"--data={kind} has no ground-truth factor interface; pass "
      "--data=procedural (no file), --data=npz --data-dir=<dsprites npz> or "
      "--data=tfds [--data-dir=<tfds data_dir>]."
    )
  if kind == "npz":
    if not path:
      raise ValueError("--data=npz needs --data-dir=<dsprites .npz file>.")
    return dsprites.load_npz(path), kind
  if kind == "tfds":
    _LOG.info("reading the factors of every tfds dSprites record")
    source = dsprites.load_tfds("train", data_dir=path or None)
    progress = functools.partial(
      tqdm.tqdm, desc="reading factors", disable=None
    )  # A bar when stderr is a terminal.
    return dsprites.TfdsDSprites(source, progress=progress), kind
  return dsprites.procedural(), kind


# The report: scores with their sample sizes, notes, timings.

# The paper's FactorVAE-metric numbers (Table 3; docs/paper.md#results).
PAPER = {
  "AD-FactorVAE": "about 0.93 (two reproductions: 0.82-0.86)",
  "FactorVAE gamma=10/20/40/100": "0.75 / 0.77 / 0.82 / 0.70",
  "beta-VAE beta=1/4/6/16": "0.69 / 0.73 / 0.70 / 0.68",
}

# Display order and description of the scores (``suite.evaluate_suite``).
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
  rows = []
  described = dict(SCORES)
  keys = [key for key, _ in SCORES] + sorted(set(scores) - set(described))
  for key in keys:
    metric = metric_of(key)
    size_text = format_sizes(sizes.get(metric))
    if metric == "dci":
      size_text += f", importance={results['meta']['dci_importance']}"
    value = _fmt(scores.get(key), key)
    rows.append([f"`{key}`", value, size_text, described.get(key, "")])
  return cli.markdown_table(["score", "value", "sample sizes", "what"], rows)


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


def report_lines(results: Mapping[str, Any]) -> list[str]:
  """The lines of ``report.md``."""
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
    *(["", "## Notes", ""] if results.get("notes") else []),
    *(f"- {note}" for note in results.get("notes") or []),
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
    f"Elapsed: {results['elapsed_time']:.1f} s ("
    + "; ".join(f"{k} {v:.1f} s" for k, v in results["timings"].items())
    + ").",
    "",
  ]
  return lines


# Scoring and figures.


def default_out(workdir: str, quick: bool) -> str:
  """``<workdir>/eval/disentanglement``, ``..._quick`` for ``--quick``."""
  name = "disentanglement_quick" if quick else "disentanglement"
  return os.path.join(workdir, "eval", name)


def representation_function(run: restore.Run, batch_size: int = 64):
  """NumPy observations ``[N, H, W, C]`` -> ``[N, 2 D]``: the posterior
  means, then the per-dimension ``KL(q(z_d|x) || N(0, 1))`` the paper
  convention prunes by, from one encoder pass over all local devices
  (``eval.inference.batched``)."""
  channels = run.input_shape[-1]

  def encode(variables, x):
    mu, logvar = run.encode_fn(variables, x)
    return jnp.concatenate([mu, losses.gaussian_kl_per_dim(mu, logvar)], 1)

  apply = inference.batched(encode, run.variables, batch_size=batch_size)

  def mu_and_kl(observations: np.ndarray) -> np.ndarray:
    x = np.asarray(observations, np.float32)
    if x.shape[-1] != channels:
      raise ValueError(
        f"The model takes {channels}-channel images, the data has "
        f"{x.shape[-1]}; evaluate a dSprites model on dSprites."
      )
    return apply(x)

  return mu_and_kl


@dataclasses.dataclass(frozen=True)
class Scored:
  """:func:`score`'s flat scores (``suite.evaluate_suite``'s keys),
  ``{metric: {argument: size}}``, seconds per stage, and the metrics'
  warnings (each once) as notes."""

  scores: dict[str, float]
  sample_sizes: dict[str, dict[str, int]]
  timings: dict[str, float]
  notes: list[str]


_NOTED = (sklearn.exceptions.ConvergenceWarning, sampling.ConstantFactorWarning)


def score(
  mu_and_kl,
  latent_dim: int,
  data,
  *,
  seed: int,
  quick: bool,
  tabulate: bool,
  dci_importance: str = "random_forest",
  n_jobs: int = 1,
  progress: bool | None = False,
  tabulated: tuple[Any, Any] | None = None,
) -> Scored:
  """``suite.evaluate_suite`` of a :func:`representation_function`'s means
  (and KL for pruning). The metrics' warnings become notes; others pass.
  ``tabulated``: the ``(data, lookup)`` of a code table made already
  (shared by the runs of a grid)."""
  d = latent_dim
  random_state = np.random.RandomState(seed)
  timings = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if tabulated is not None:
      data, mu_and_kl = tabulated
    elif tabulate:
      start = time.perf_counter()
      data, mu_and_kl = suite.tabulate(
        data, mu_and_kl, random_state, progress=progress
      )
      timings["encode all images"] = time.perf_counter() - start
    results = list(
      suite.evaluate_suite(
        data,
        lambda obs: mu_and_kl(obs)[:, :d],
        random_state,
        kl_function=lambda obs: mu_and_kl(obs)[:, d:],
        quick=quick,
        dci_importance=dci_importance,
        n_jobs=n_jobs,
        progress=progress,
      )
    )
  notes = []
  for w in caught:
    if not issubclass(w.category, _NOTED):
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    elif str(w.message) not in notes:
      notes.append(str(w.message))
  return Scored(
    scores={k: float(v) for r in results for k, v in r.scores.items()},
    sample_sizes={r.name: r.sample_sizes for r in results},
    timings={**timings, **{r.name: r.seconds for r in results}},
    notes=notes,
  )


def training_log_score(workdir: str, config: Mapping[str, Any]) -> dict | None:
  """The last FactorVAE score in the run's ``metrics.jsonl`` with its sizes
  (the config's ``score_num_*``; 0: the convention's), or ``None``."""
  path = os.path.join(workdir, "metrics.jsonl")
  row = None
  try:
    with open(path) as f:
      for line in f:
        try:
          values = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut by a crash.
        if "eval/factor_vae_eval_accuracy" in values:
          row = values
  except OSError:
    return None
  convention = config.get("score_convention")
  if row is None or convention not in factor_vae.FACTOR_VAE_CONVENTIONS:
    return None
  published = factor_vae.FACTOR_VAE_CONVENTIONS[convention]
  sizes = {"num_per_vote": published.num_per_vote}
  for name, field in (
    ("num_train", "score_num_train"),
    ("num_eval", "score_num_eval"),
    ("num_variance_estimate", "score_num_variance"),
  ):
    sizes[name] = int(config.get(field) or getattr(published, name))
  return {
    "eval_accuracy": float(row["eval/factor_vae_eval_accuracy"]),
    "step": int(row.get("step", -1)),
    "convention": convention,
    "sample_sizes": sizes,
    "seed": config.get("seed"),
  }


def check_applies(spec: runs.RunSpec | None, workdir: str) -> None:
  """Refuses a run that is not a FactorVAE-family model of dSprites, naming
  eval.localization and eval.explain."""
  cli.check_trainer(
    spec,
    workdir,
    "factorvae",
    " with no ground-truth factors, so eval.disentanglement does not apply; "
    f"score its anomaly maps with: python -m eval.localization --workdir="
    f"{workdir} (or show its maps: python -m eval.explain --workdir={workdir})",
  )


def run_dirs(workdirs: Sequence[str]) -> list[str]:
  """Each run folder of ``workdirs``, or every member run of a grid folder
  (its sub-folders with a run spec), in name order, without repeats.

  Raises:
    FileNotFoundError: a folder is missing or holds no run at all.
  """
  found: list[str] = []
  for workdir in workdirs:
    runs.check_run_dir(workdir)
    if os.path.isfile(os.path.join(workdir, runs.SPEC_NAME)):
      found.append(workdir)
      continue
    members = sorted(
      os.path.join(workdir, name)
      for name in os.listdir(workdir)
      if os.path.isfile(os.path.join(workdir, name, runs.SPEC_NAME))
    )
    if not members:
      raise FileNotFoundError(
        f"{workdir} holds no run: neither its own {runs.SPEC_NAME} nor "
        "member folders with one; pass --workdir=<a training run or grid "
        "folder>"
      )
    found += members
  return list(dict.fromkeys(found))


def evaluate(
  config: Config,
  workdir: str | None = None,
  cache=None,
  tabulated: tuple[Any, Any] | None = None,
) -> dict:
  """Scores one run (default ``config.workdir[0]``); returns the results.
  ``cache`` shares the loaded data between the runs of one command,
  ``tabulated`` a code table (see :func:`score`)."""
  start = time.perf_counter()
  workdir = workdir or config.workdir[0]
  config = dataclasses.replace(config, workdir=(workdir,))
  # Fails now, not after the metrics; the default --out is inside the run
  # folder, so a missing one is refused before it is made.
  out = cli.make_out_dir(config.out) if config.out else None
  _LOG.info("restoring %s", workdir)
  run = restore.load_run(workdir, step=config.step)
  check_applies(run.spec, workdir)  # Before anything is written into it.
  out = out or cli.make_out_dir(default_out(workdir, config.quick))
  data, kind = load_data(config, run, cache)
  mu_and_kl = representation_function(run)  # Compiled once, used twice.
  scored = score(
    mu_and_kl,
    run.latent_dim,
    data,
    seed=config.seed,
    quick=config.quick,
    tabulate=config.tabulate,
    dci_importance=config.dci_importance,
    n_jobs=config.jobs,
    progress=None,  # Bars on a terminal only.
    tabulated=tabulated,
  )
  figures_start = time.perf_counter()
  figs, kl = make_figures(config, run, data, mu_and_kl, out)
  timings = {**scored.timings, "figures": time.perf_counter() - figures_start}
  results = {
    "meta": {
      "workdir": os.path.abspath(workdir),
      "step": run.step,
      "model": run.name,
      "latent_dim": run.latent_dim,
      "objective": objective(run.config),
      "config": run.config,
      "data": kind,
      "seed": config.seed,
      "quick": config.quick,
      "tabulate": config.tabulate,
      "dci_importance": config.dci_importance,
      "jobs": config.jobs,
      "date": datetime.datetime.now(datetime.UTC).isoformat(),
    },
    "scores": scored.scores,
    "sample_sizes": scored.sample_sizes,
    "conventions": {
      name: dataclasses.asdict(conv)
      for name, conv in factor_vae.FACTOR_VAE_CONVENTIONS.items()
    },
    "training_log": training_log_score(workdir, run.config),
    "notes": scored.notes,
    "figures": figs,
    "timings": timings,
    "active_dims_by_kl": int((kl > 0.05).sum()),
  }
  _LOG.info("writing %s", os.path.join(out, "report.md"))
  saved = cli.save_results(out, results, report_lines, start)
  _LOG.info(
    "wrote %s: report.md, results.json, attention.png, traversals.png", out
  )
  return saved


def evaluate_runs(config: Config) -> list[dict]:
  """Scores every run of ``config.workdir``, loading the data once."""
  if config.out:  # Named before the (slow) runs; checked again per run.
    cli.make_out_dir(config.out)
  dirs = run_dirs(config.workdir)
  if config.out and len(dirs) > 1:
    raise ValueError(
      f"--out names one folder but --workdir holds {len(dirs)} runs; drop "
      "--out (each run writes to <run>/eval/disentanglement)."
    )
  cache: dict = {}
  shared = _shared_tables(config, dirs, cache) if len(dirs) > 1 else {}
  results = []
  for i, workdir in enumerate(dirs):
    if len(dirs) > 1:
      _LOG.info("run %d/%d: %s", i + 1, len(dirs), workdir)
    results.append(evaluate(config, workdir, cache, shared.get(workdir)))
  return results


def _shared_tables(config: Config, dirs: Sequence[str], cache: dict) -> dict:
  """With the code table on: one rendering pass of each data source,
  encoded by every run that reads it; ``{workdir: (data, lookup)}``."""
  if not config.tabulate:
    return {}
  by_source: dict = {}
  for workdir in dirs:
    run = restore.load_run(workdir, step=config.step)
    check_applies(run.spec, workdir)
    source = load_data(config, run, cache)
    by_source.setdefault(id(source), (source, []))[1].append((workdir, run))
  shared = {}
  for (data, kind), members in by_source.values():
    _LOG.info("encoding the %s data once for %d runs", kind, len(members))
    start = time.perf_counter()
    table, lookups = suite.tabulate_all(
      data,
      [representation_function(run) for _, run in members],
      np.random.RandomState(config.seed),
      progress=None,
    )
    seconds = time.perf_counter() - start
    for (workdir, _), lookup in zip(members, lookups, strict=True):
      shared[workdir] = (table, lookup)
    _LOG.info("encoded for %d runs in %.1f s", len(members), seconds)
  return shared


def _run(config: Config) -> int:
  """Scores the runs; prints one run's report, or where each report is."""
  results = evaluate_runs(config)
  if len(results) == 1:
    cli.print_report(results[0]["out"])
    return 0
  key = SCORES[0][0]
  for r in results:
    value = r["scores"].get(key, math.nan)
    print(f"{r['meta']['workdir']}: {key} = {value:.3f}; {r['out']}/report.md")
  print(
    "Compare the arms: python -m eval.aggregate GROUP_A --vs GROUP_B "
    "(each a glob of the runs above)"
  )
  return 0


def make_figures(
  config, run, data, mu_and_kl, out: str
) -> tuple[dict, np.ndarray]:
  """attention.png and traversals.png; returns their data and the mean KL."""
  rng = np.random.RandomState(config.seed)
  x = np.asarray(data.sample_observations(config.num_images, rng), np.float32)
  kl = mu_and_kl(data.sample_observations(512, rng))[:, run.latent_dim :]
  kl = kl.mean(axis=0)
  what = objective(run.config)
  layer = config.layer or run.default_layer
  _LOG.info("figure 1/2: attention maps of %d images at %s", len(x), layer)
  attention = figures.top_latent_figure(
    run,
    x,
    layer,
    os.path.join(out, "attention.png"),
    f"{what}: two highest-responding latents",
  )
  _LOG.info("figure 2/2: latent traversals")
  traversals = figures.traversal_figure(
    run,
    x[:1],
    kl,
    os.path.join(out, "traversals.png"),
    num_latents=min(config.num_traversals, run.latent_dim),
    limit=config.traversal_range,
    steps=config.traversal_steps,
    title=f"{what}: latent traversals",
  )
  return {"attention": attention, "traversals": traversals}, kl


@dataclasses.dataclass(frozen=True)
class Config(cli.SavedRun):
  """The FactorVAE runs to score, the samples, the figures, where they go."""

  workdir: tuple[str, ...] = configs.field(
    configs.REQUIRED,
    "training run(s) or grid folder(s) (every member run is scored)",
    nargs="+",
  )

  data: str | None = configs.field(
    None, "dSprites source (default: the run's)", DATA
  )
  data_dir: str | None = configs.field(
    None,
    "dSprites .npz (--data=npz) or tfds data_dir (--data=tfds) (default: "
    "the run's)",
    alias="--data-path",
  )
  seed: int = configs.field(0, "metric random state", interval=configs.SEEDS)
  quick: bool = configs.field(False, "small sample sizes (smoke runs)")
  tabulate: bool | None = configs.field(
    None,
    "encode all 737,280 images once and share the codes between the "
    "metrics (default: on for the full evaluation, off with --quick)",
    switch=True,
  )
  dci_importance: str = configs.field(
    "random_forest",
    "DCI importance model (gbt: disentanglement_lib's numbers, tens of "
    "minutes on 2 cores)",
    dci_lib.IMPORTANCE_MODELS,
  )
  jobs: int = configs.field(
    os.cpu_count() or 1,
    "threads for the per-factor fits of DCI and SAP (default: one per core)",
    interval="[1, inf)",
  )
  layer: str | None = configs.field(
    None, "attention layer (default: the run's)"
  )
  num_images: int = configs.field(6, "Fig. 8 inputs", interval="[1, inf)")
  num_traversals: int = configs.field(
    10, "latents in traversals.png, most informative first", interval="[1, inf)"
  )
  traversal_range: float = configs.field(
    2.5, "each latent is swept over [-R, R]", interval="(0, inf)"
  )
  traversal_steps: int = configs.field(
    9, "values per traversal row", interval="[2, inf)"
  )
  out: str | None = configs.field(
    None,
    "output folder (default: <workdir>/eval/disentanglement, with --quick "
    "<workdir>/eval/disentanglement_quick)",
  )
  cpu_devices: int | None = configs.field(
    None,
    "split the CPU into this many JAX devices to encode on all cores "
    "(default: 2 per core when this command starts JAX itself; 0: JAX's "
    "default of one)",
    interval="[0, inf)",
  )

  def __post_init__(self):
    if isinstance(self.workdir, str):  # One run, from Python.
      object.__setattr__(self, "workdir", (self.workdir,))
    if self.tabulate is None:  # On for the full evaluation.
      object.__setattr__(self, "tabulate", not self.quick)


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.disentanglement", description=__doc__
  )
  # Stage lines (INFO) of eval.* with a time stamp; other loggers at WARNING.
  logs.setup(
    "[%(asctime)s] %(message)s",
    date_format="%H:%M:%S",
    levels={"eval": logging.INFO},
  )
  if config.cpu_devices is None:
    inference.use_all_cpu_cores()
  elif config.cpu_devices > 0:
    inference.use_cpu_devices(config.cpu_devices)
  return cli.run_main(_run, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
