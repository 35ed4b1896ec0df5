r"""Disentanglement of a FactorVAE / AD-FactorVAE / beta-VAE (paper Table 3).

  python -m eval.disentanglement --workdir=runs/factorvae_ad
  python -m eval.disentanglement --workdir=runs/factorvae_tc --quick
  python -m eval.disentanglement --workdir=runs/ad --data=npz \
      --data-dir=dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz

Restores the VAE of --workdir (eval.restore.load_run) and scores its
posterior means on dSprites with every disentanglement metric of
eval.metrics (evaluate_suite): the FactorVAE metric in two conventions (the
"disentanglement_lib" one and the "paper" one of Kim & Mnih, whose
collapsed-dimension pruning uses the per-dimension KL to the prior), the
beta-VAE metric, MIG, DCI and SAP. The driver owns the I/O (as in
disentanglement_lib's evaluate.py): it builds the representation and KL
functions, runs the metrics, adds timings and writes the results.

Every metric runs at its published sample sizes unless --quick (small
sizes for CPU smoke runs, not comparable with the paper). The full
evaluation encodes all 737,280 dSprites images once and shares the codes
between the metrics (--no-tabulate: every metric encodes its own draws,
about 3 million images); DCI uses the random-forest importance, which
takes about a minute where disentanglement_lib's gradient boosting takes
tens (--dci-importance=gbt gives disentanglement_lib's numbers). See
python -m bench.disentanglement_report for the time of each stage.

Data default to the run's (its spec's data and data_dir): the procedural
dSprites renderer needs no file; --data=tfds reads the prepared tfds
dSprites and finds each factor combination's record once.

Writes into --out (default <workdir>/eval/disentanglement, or
<workdir>/eval/disentanglement_quick with --quick): results.json (flat
"scores", the sample sizes of each metric, the conventions, timings),
report.md, attention.png (Fig. 8 style: inputs and the attention maps of
their two highest-responding latents) and traversals.png (decoded latent
traversals of the most informative latents, by KL). Progress goes to
stderr: one line per stage, and bars on a terminal.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import sklearn.exceptions

from eval import (
  cli,
  disentanglement_data,
  disentanglement_figures,
  inference,
  restore,
)
from eval import disentanglement_report as report
from eval.metrics import dci as dci_lib
from eval.metrics import disentanglement as suite
from eval.metrics import factor_vae, sampling
from vae_attn import losses
from workflow import configs, runs

SCORES = report.SCORES
# DCI importance of the full evaluation: minutes, not hours (eval.metrics.dci).
FULL_DCI_IMPORTANCE = "random_forest"

_LOG = logging.getLogger("eval.disentanglement")  # Also as __main__.


def default_out(workdir: str, quick: bool) -> str:
  """``<workdir>/eval/disentanglement``, ``..._quick`` for ``--quick``."""
  name = "disentanglement_quick" if quick else "disentanglement"
  return os.path.join(workdir, "eval", name)


def representation_function(run: restore.Run, batch_size: int = 64):
  """NumPy observations ``[N, H, W, C]`` -> ``[N, 2 D]``: mu, then KL.

  The first ``D`` columns are the posterior means, the last ``D`` the
  per-dimension ``KL(q(z_d|x) || N(0, 1))``
  (``vae_attn.losses.gaussian_kl_per_dim``) that the paper convention prunes
  collapsed dimensions with; one encoder pass gives both. Micro-batches are
  dealt over all local devices (``eval.inference.batched``).
  """
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
  """The scores of :func:`score` and how they were measured.

  Attributes:
    scores: flat scores (``eval.metrics.disentanglement.compute_all``'s keys).
    sample_sizes: ``{metric: {argument: size}}``.
    timings: seconds per stage (``encode all images``, each metric).
    notes: warnings of the metrics (dropped factors, estimators that stopped
      at their iteration limit), each once.
  """

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
  dci_importance: str = FULL_DCI_IMPORTANCE,
  n_jobs: int = 1,
  progress: bool | None = False,
) -> Scored:
  """``suite.evaluate_suite`` of the posterior means (and KL for pruning).

  ``mu_and_kl`` is a :func:`representation_function`. The metrics' warnings
  become ``Scored.notes`` (each once); other warnings pass through.
  """
  d = latent_dim
  random_state = np.random.RandomState(seed)
  timings = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if tabulate:
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
  """The last FactorVAE score in the run's ``metrics.jsonl``, with its sizes.

  Returns ``None`` when the log holds no score (or no log exists). The
  sizes are the run config's ``score_num_*`` (0: the convention's).
  """
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


def evaluate(config: Config) -> dict:
  """Runs everything for a config; returns the results dict."""
  start = time.perf_counter()
  importance = config.dci_importance or (
    "random_forest" if config.quick else FULL_DCI_IMPORTANCE
  )
  tabulate = (not config.quick) if config.tabulate is None else config.tabulate
  # Fails now, not after the metrics; the default --out is inside the run
  # folder, so a missing one is refused before it is made.
  runs.check_run_dir(config.workdir)
  out = cli.make_out_dir(
    config.out or default_out(config.workdir, config.quick)
  )
  _LOG.info("restoring %s", config.workdir)
  run = restore.load_run(config.workdir, step=config.step)
  data, kind = disentanglement_data.load_data(config, run)
  mu_and_kl = representation_function(run)  # Compiled once, used twice.
  scored = score(
    mu_and_kl,
    run.latent_dim,
    data,
    seed=config.seed,
    quick=config.quick,
    tabulate=tabulate,
    dci_importance=importance,
    n_jobs=config.jobs,
    progress=None,  # Bars on a terminal only.
  )
  figures_start = time.perf_counter()
  figs, kl = disentanglement_figures.make_figures(
    config, run, data, mu_and_kl, out
  )
  timings = {**scored.timings, "figures": time.perf_counter() - figures_start}
  results = {
    "meta": {
      "workdir": os.path.abspath(config.workdir),
      "step": run.step,
      "model": run.name,
      "latent_dim": run.latent_dim,
      "objective": report.objective(run.config),
      "config": run.config,
      "data": kind,
      "seed": config.seed,
      "quick": config.quick,
      "tabulate": tabulate,
      "dci_importance": importance,
      "jobs": config.jobs,
      "date": datetime.datetime.now(datetime.UTC).isoformat(),
    },
    "scores": scored.scores,
    "sample_sizes": scored.sample_sizes,
    "conventions": {
      name: dataclasses.asdict(conv)
      for name, conv in factor_vae.FACTOR_VAE_CONVENTIONS.items()
    },
    "training_log": training_log_score(config.workdir, run.config),
    "notes": scored.notes,
    "figures": figs,
    "timings": timings,
    "active_dims_by_kl": int((kl > 0.05).sum()),
  }
  _LOG.info("writing %s", os.path.join(out, "report.md"))
  saved = cli.save_results(out, results, report.write_report, start)
  _LOG.info(
    "wrote %s: report.md, results.json, attention.png, traversals.png", out
  )
  return saved


@dataclasses.dataclass(frozen=True)
class Config(cli.SavedRun):
  """The FactorVAE run to score, the samples, the figures, where they go."""

  data: str | None = configs.field(
    None, "dSprites source (default: the run's)", disentanglement_data.DATA
  )
  data_dir: str | None = configs.field(
    None,
    "dSprites .npz (--data=npz) or tfds data_dir (--data=tfds) (default: "
    "the run's)",
    alias="--data-path",
  )
  seed: int = configs.field(
    0, "metric random state", minimum=0, maximum=configs.MAX_SEED
  )
  quick: bool = configs.field(False, "small sample sizes (smoke runs)")
  tabulate: bool | None = configs.field(
    None,
    "encode all 737,280 images once and share the codes between the "
    "metrics (default: on for the full evaluation, off with --quick)",
    switch=True,
  )
  dci_importance: str | None = configs.field(
    None,
    "DCI importance model (default: random_forest; gbt: "
    "disentanglement_lib's numbers, tens of minutes on 2 cores)",
    dci_lib.IMPORTANCE_MODELS,
  )
  jobs: int = configs.field(
    os.cpu_count() or 1,
    "threads for the per-factor fits of DCI and SAP (default: one per core)",
    minimum=1,
  )
  layer: str | None = configs.field(
    None, "attention layer (default: the run's)"
  )
  num_images: int = configs.field(6, "Fig. 8 inputs", minimum=1)
  num_traversals: int = configs.field(
    10, "latents in traversals.png, most informative first", minimum=1
  )
  traversal_range: float = configs.field(
    2.5, "each latent is swept over [-R, R]", above=0
  )
  traversal_steps: int = configs.field(9, "values per traversal row", minimum=2)
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
    minimum=0,
  )


class _StderrHandler(logging.StreamHandler):
  """Writes each record to the ``sys.stderr`` of the moment (a notebook or a
  test may replace it after logging was set up)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr  # Not setStream: it flushes the old stream.
    super().emit(record)


def _setup_logging() -> None:
  """Stage lines (INFO) of ``eval.*`` on stderr, with a time stamp.

  Replaces the root handler that absl installs on import (``INFO:name:``
  prefixes); other loggers stay at WARNING.
  """
  handler = _StderrHandler()
  handler.setFormatter(
    logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
  )
  logging.basicConfig(handlers=[handler], force=True)
  logging.getLogger("eval").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.disentanglement", description=__doc__
  )
  _setup_logging()
  if config.cpu_devices is None:
    cli.use_all_cpu_cores()
  elif config.cpu_devices > 0:
    inference.use_cpu_devices(config.cpu_devices)
  return cli.run_report(evaluate, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
