"""The disentanglement metrics as one suite, and the shared code table.

* ``evaluate_suite`` runs every metric (``factor_vae`` in two conventions,
  ``beta_vae``, ``mig``, ``dci``, ``sap``: disentanglement_lib's signature,
  contract in ``eval.metrics.sampling``), yielding each one's scores with
  its sample sizes and wall time.
* ``tabulate``: for a finite data set whose observations are a deterministic
  function of the factors (dSprites), encodes every factor combination once
  and returns an equivalent (data, representation) pair whose metric calls
  are table look-ups: one pass over dSprites' 737,280 images instead of the
  suite's 3 million draws at its published sizes.

Logging goes to ``logging.getLogger(__name__)``; the entry point configures
it.

References:
  Locatello et al., "Challenging Common Assumptions in the Unsupervised
  Learning of Disentangled Representations", ICML 2019
  (google-research/disentanglement_lib).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from eval.metrics import beta_vae, dci, factor_vae, mig, sampling, sap

__all__ = [
  "MetricResult",
  "evaluate_suite",
  "suite_sample_sizes",
  "tabulate",
]

_LOG = logging.getLogger(__name__)

# Sample sizes of ``quick=True`` (tests and CPU smoke runs).
_QUICK_FACTOR_VAE = dict(
  num_per_vote=20, num_train=200, num_eval=100, num_variance_estimate=1000
)
_QUICK_SIZES = {
  "factor_vae/disentanglement_lib": _QUICK_FACTOR_VAE,
  "factor_vae/paper": _QUICK_FACTOR_VAE,
  "beta_vae": dict(num_per_point=20, num_train=200, num_eval=100),
  "mig": dict(num_train=1000),
  "dci": dict(num_train=300, num_test=150),
  "sap": dict(num_train=500, num_test=250),
}

_TITLES = {
  "factor_vae/disentanglement_lib": (
    "FactorVAE score, disentanglement_lib convention"
  ),
  "factor_vae/paper": "FactorVAE score, paper convention",
  "beta_vae": "BetaVAE score",
  "mig": "MIG",
  "dci": "DCI",
  "sap": "SAP",
}


def _defaults(fn: Callable[..., Any], *names: str) -> dict[str, int]:
  parameters = inspect.signature(fn).parameters
  return {name: parameters[name].default for name in names}


def suite_sample_sizes(quick: bool = False) -> dict[str, dict[str, int]]:
  """The sample sizes of each metric of the suite, by metric name.

  ``quick=False``: the published ones (``FACTOR_VAE_CONVENTIONS`` and the
  defaults of the ``compute_*`` functions, disentanglement_lib's gin
  configs); ``quick=True``: FactorVAE L = 20, 200 / 100 votes and 1,000
  variance images; BetaVAE 20 pairs, 200 / 100 points; MIG 1,000; DCI 300
  / 150 and SAP 500 / 250 points.

  Returns:
    ``{metric name: {argument: size}}``, keyed as ``MetricResult.name`` and
    the ``compute_*`` arguments.

  Examples:
    >>> sizes = suite_sample_sizes()
    >>> list(sizes)  # doctest: +NORMALIZE_WHITESPACE
    ['factor_vae/disentanglement_lib', 'factor_vae/paper', 'beta_vae',
     'mig', 'dci', 'sap']
    >>> sizes["dci"]
    {'num_train': 10000, 'num_test': 5000}
  """
  if quick:
    return {name: dict(sizes) for name, sizes in _QUICK_SIZES.items()}
  sizes = {}
  for convention, config in factor_vae.FACTOR_VAE_CONVENTIONS.items():
    sizes[f"factor_vae/{convention}"] = {
      "num_per_vote": config.num_per_vote,
      "num_train": config.num_train,
      "num_eval": config.num_eval,
      "num_variance_estimate": config.num_variance_estimate,
    }
  sizes["beta_vae"] = _defaults(
    beta_vae.compute_beta_vae, "num_per_point", "num_train", "num_eval"
  )
  sizes["mig"] = _defaults(mig.compute_mig, "num_train")
  sizes["dci"] = _defaults(dci.compute_dci, "num_train", "num_test")
  sizes["sap"] = _defaults(sap.compute_sap, "num_train", "num_test")
  return sizes


def _disable(progress: bool | None) -> bool | None:
  """tqdm's ``disable`` for ``progress`` (``None``: tqdm's terminal test)."""
  return None if progress is None else not progress


def _num_images(name: str, sizes: Mapping[str, int]) -> int:
  """Observations a metric encodes at ``sizes`` (for its progress bar)."""
  if name.startswith("factor_vae/"):
    votes = sizes["num_train"] + sizes["num_eval"]
    return sizes["num_variance_estimate"] + votes * sizes["num_per_vote"]
  if name == "beta_vae":
    points = sizes["num_train"] + sizes["num_eval"]
    return 2 * points * sizes["num_per_point"]
  return sizes["num_train"] + sizes.get("num_test", 0)


@dataclasses.dataclass(frozen=True)
class MetricResult:
  """One metric of the suite.

  Attributes:
    name: e.g. ``"factor_vae/paper"``, ``"dci"``.
    title: what a reader calls it, e.g. ``"FactorVAE score, paper
      convention"``.
    scores: flat scores, keyed for a results file:
      ``factor_vae/{disentanglement_lib,paper}/{train_accuracy,
      eval_accuracy,num_active_dims}``, ``beta_vae/{train,eval}_accuracy``,
      ``mig``, ``dci/{disentanglement,completeness}``,
      ``dci/informativeness_{train,test}`` or ``sap``.
    sample_sizes: the sizes it ran at, keyed by ``compute_*`` argument.
    seconds: its wall time.
  """

  name: str
  title: str
  scores: dict[str, float]
  sample_sizes: dict[str, int]
  seconds: float


def _run_metric(
  name: str,
  data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  sizes: Mapping[str, int],
  options: Mapping[str, Any],
) -> dict[str, float]:
  """Calls metric ``name``; returns its scores under the flat keys."""
  args = (data, representation_function, random_state)
  common = {"batch_size": options["batch_size"]}
  if name.startswith("factor_vae/"):
    convention = name.split("/", 1)[1]
    kl = options["kl_function"] if convention == "paper" else None
    scores = factor_vae.compute_factor_vae(
      *args, convention=convention, kl_function=kl, **sizes, **common
    )
    return {f"{name}/{key}": value for key, value in scores.items()}
  if name == "beta_vae":
    scores = beta_vae.compute_beta_vae(*args, **sizes, **common)
    return {f"beta_vae/{key}": value for key, value in scores.items()}
  if name == "mig":
    return {"mig": mig.compute_mig(*args, **sizes, **common)["discrete_mig"]}
  common["n_jobs"] = options["n_jobs"]
  if name == "dci":
    scores = dci.compute_dci(
      *args, importance=options["dci_importance"], **sizes, **common
    )
    return {f"dci/{key}": value for key, value in scores.items()}
  return {"sap": sap.compute_sap(*args, **sizes, **common)["sap_score"]}


def evaluate_suite(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  kl_function: sampling.RepresentationFn | None = None,
  quick: bool = False,
  dci_importance: str = "gbt",
  n_jobs: int = 1,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
  progress: bool | None = False,
  metrics: Sequence[str] | None = None,
) -> Iterator[MetricResult]:
  """Runs every disentanglement metric, yielding each as it finishes.

  The order (and so the draws from ``random_state``): FactorVAE in the
  disentanglement_lib then the paper convention, BetaVAE, MIG, DCI, SAP.
  A metric runs when the generator is asked for it. Each metric logs
  ``metric k/n: <title> (<sizes>)`` before it starts and its time when it
  ends (level INFO). Single-valued factors are dropped once, with one
  warning.

  Args:
    ground_truth_data, representation_function, random_state, batch_size:
      as in ``eval.metrics.sampling``.
    kl_function: observations -> per-dimension KL ``[N, D]`` for the paper
      convention's pruning; without it the paper convention prunes nothing.
    quick: the small sample sizes of ``suite_sample_sizes(quick=True)``.
    dci_importance: DCI's importance model (``dci.IMPORTANCE_MODELS``).
    n_jobs: threads for the per-factor fits of DCI and SAP.
    progress: show a tqdm bar of the images each metric encodes (``None``:
      on when stderr is a terminal).
    metrics: the names (``suite_sample_sizes`` keys) of the metrics to run,
      still in the order above; ``None``: all six.

  Yields:
    One ``MetricResult`` per metric.

  Raises:
    ValueError: an unknown metric name, or as the ``compute_*`` functions.
  """
  data = sampling.check_inputs(
    ground_truth_data, random_state, n_jobs=n_jobs, batch_size=batch_size
  )
  if dci_importance not in dci.IMPORTANCE_MODELS:
    raise ValueError(
      f"dci_importance must be one of {dci.IMPORTANCE_MODELS}, got "
      f"{dci_importance!r}."
    )
  options = {
    "kl_function": kl_function,
    "dci_importance": dci_importance,
    "n_jobs": n_jobs,
    "batch_size": batch_size,
  }
  all_sizes = suite_sample_sizes(quick)
  if metrics is not None:
    unknown = sorted(set(metrics) - set(all_sizes))
    if unknown:
      raise ValueError(
        f"Unknown metrics {unknown}; choose from {list(all_sizes)}."
      )
    all_sizes = {n: sizes for n, sizes in all_sizes.items() if n in metrics}
  for k, (name, sizes) in enumerate(all_sizes.items(), start=1):
    title = _TITLES[name]
    sizes_text = ", ".join(f"{key}={value}" for key, value in sizes.items())
    _LOG.info("metric %d/%d: %s (%s)", k, len(all_sizes), title, sizes_text)
    start = time.perf_counter()
    with tqdm.tqdm(
      total=_num_images(name, sizes),
      desc=f"{name}: images",
      unit="img",
      unit_scale=True,
      disable=_disable(progress),
      leave=False,
    ) as bar:

      @functools.wraps(representation_function)
      def counted(observations, bar=bar):
        bar.update(len(observations))
        return representation_function(observations)

      scores = _run_metric(name, data, counted, random_state, sizes, options)
    seconds = time.perf_counter() - start
    _LOG.info(
      "metric %d/%d: %s done in %.1f s", k, len(all_sizes), title, seconds
    )
    yield MetricResult(name, title, scores, dict(sizes), seconds)


# The code table.


@dataclasses.dataclass(frozen=True)
class _TabulatedData:
  """Ground-truth data whose observations are flat factor indices ``[N, 1]``."""

  base: Any
  num_factors: int
  factors_num_values: tuple[int, ...]
  observation_shape: tuple[int, ...] = (1,)

  @property
  def factor_names(self) -> Any:
    return getattr(self.base, "factor_names", None)

  def sample_factors(
    self, num: int, random_state: sampling.RandomState
  ) -> np.ndarray:
    return self.base.sample_factors(num, random_state)

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state: sampling.RandomState
  ) -> np.ndarray:
    del random_state  # Deterministic: the observation is the index.
    index = np.ravel_multi_index(np.asarray(factors).T, self.factors_num_values)
    return index[:, None]


def tabulate(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
  progress: bool | None = False,
) -> tuple[Any, sampling.RepresentationFn]:
  """Encodes every factor combination once; metrics then look codes up.

  :func:`tabulate_all` of one function: returns ``(tabulated_data,
  lookup_function)``.
  """
  data, (lookup,) = tabulate_all(
    ground_truth_data,
    [representation_function],
    random_state,
    batch_size=batch_size,
    progress=progress,
  )
  return data, lookup


def tabulate_all(
  ground_truth_data: Any,
  representation_functions: Sequence[sampling.RepresentationFn],
  random_state: sampling.RandomState,
  *,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
  progress: bool | None = False,
) -> tuple[Any, list[sampling.RepresentationFn]]:
  """Renders every factor combination once and encodes it with each function.

  Valid when each factor combination has one observation and
  ``sample_observations_from_factors`` is deterministic (dSprites: 737,280
  images, one per combination). Each returned pair ``(tabulated_data,
  lookup)`` replaces ``(ground_truth_data, representation_function)`` in
  every metric here: its observations are the flat factor indices ``[N,
  1]`` (int64, row-major over ``factors_num_values``) and the lookup indexes
  the code table ``[prod(factors_num_values), D]`` (the function's dtype).
  The runs of a grid share one rendering pass this way.

  Args:
    ground_truth_data, random_state, batch_size: as in
      ``eval.metrics.sampling``.
    representation_functions: observations -> codes ``[N, D]``, each.
    progress: show a tqdm bar of the images encoded (``None``: on when
      stderr is a terminal).

  Returns:
    ``(tabulated_data, [lookup_function per representation function])``.

  Raises:
    ValueError: for malformed inputs, no function, or more than 2**26
      combinations (the code table would not fit comfortably in memory).
  """
  sampling.check_interface(
    ground_truth_data, random_state, batch_size=batch_size
  )
  if not representation_functions:
    raise ValueError("tabulate_all needs at least one representation function.")
  sizes = tuple(int(v) for v in ground_truth_data.factors_num_values)
  total = math.prod(sizes)
  if total > 2**26:
    raise ValueError(
      f"{total} factor combinations are too many to tabulate; call the "
      "metrics on the original data instead."
    )
  # Every combination in row-major order (int32: smaller than the table).
  factors = np.stack(
    np.unravel_index(np.arange(total, dtype=np.int32), sizes), axis=1
  ).astype(np.int32)
  num = len(representation_functions)
  _LOG.info(
    "encoding all %d factor combinations once (%d model%s)",
    total,
    num,
    "" if num == 1 else "s",
  )
  start = time.perf_counter()
  with tqdm.tqdm(
    total=total,
    desc="encoding",
    unit="img",
    unit_scale=True,
    disable=_disable(progress),
  ) as bar:

    def counted(observations: np.ndarray) -> np.ndarray:
      bar.update(len(observations))  # Once per rendered chunk.
      return np.zeros((len(observations), 0), np.float32)

    *tables, _ = sampling.represent(
      ground_truth_data,
      [*representation_functions, counted],
      factors,
      random_state,
      batch_size,
      dtype=None,  # A float32 table stays float32: half the memory.
    )

  seconds = time.perf_counter() - start
  _LOG.info(
    "encoded %d images in %.1f s (%.0f images/s)",
    total,
    seconds,
    total / max(seconds, 1e-9),
  )

  def lookup_fn(table: np.ndarray) -> sampling.RepresentationFn:
    def lookup(observations: np.ndarray) -> np.ndarray:
      return table[np.asarray(observations)[:, 0]]

    return lookup

  data = _TabulatedData(
    base=ground_truth_data,
    num_factors=len(sizes),
    factors_num_values=sizes,
  )
  return data, [lookup_fn(t) for t in tables]
