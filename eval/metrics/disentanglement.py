"""Disentanglement metrics with google-research/disentanglement_lib's contract.

Every metric has the signature ``compute_<name>(ground_truth_data,
representation_function, random_state, **hparams) -> dict[str, float]``:

* ``ground_truth_data`` has ``num_factors``, ``factors_num_values`` (list of
  ints), ``sample_factors(num, random_state) -> int [num, num_factors]`` and
  ``sample_observations_from_factors(factors, random_state) -> [num, H, W,
  C]``.
* ``representation_function(observations) -> [num, D]`` is a NumPy function
  (e.g. a jitted encoder returning the posterior mean). It is always called
  on chunks of at most ``batch_size`` observations, so a jitted encoder sees
  few, big batches.
* ``random_state`` is a ``np.random.RandomState`` (a ``np.random.Generator``
  is accepted too). Nothing is seeded globally.

Unlike disentanglement_lib, which draws one mini-batch per vote in a Python
loop, the samplers here draw the factors of all votes in one call and batch
the observations; the votes have the same distribution but not the same
random stream, so scores equal disentanglement_lib's in distribution, not
bit for bit.

For a finite data set whose observations are a deterministic function of the
factors (dSprites), ``tabulate`` encodes every factor combination once and
returns an equivalent (data, representation) pair whose metric calls are table
look-ups; the FactorVAE metric over all 737,280 dSprites images then costs one
pass of the encoder over the data set.

References:
  Locatello et al., "Challenging Common Assumptions in the Unsupervised
  Learning of Disentangled Representations", ICML 2019
  (google-research/disentanglement_lib).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats
import sklearn.ensemble
import sklearn.linear_model
import sklearn.metrics
import sklearn.svm

__all__ = [
  "FACTOR_VAE_CONVENTIONS",
  "FactorVAEConvention",
  "compute_all",
  "compute_beta_vae",
  "compute_dci",
  "compute_factor_vae",
  "compute_mig",
  "compute_sap",
  "tabulate",
]

RandomState = np.random.RandomState | np.random.Generator
RepresentationFn = Callable[[np.ndarray], np.ndarray]

_DEFAULT_BATCH_SIZE = 4096


# ----------------------------------------------------------------------------
# Sampling helpers.
# ----------------------------------------------------------------------------


def _check_random_state(random_state: Any) -> None:
  if not isinstance(random_state, np.random.RandomState | np.random.Generator):
    raise ValueError(
      "random_state must be a np.random.RandomState or np.random.Generator, "
      f"got {type(random_state).__name__}; pass e.g. "
      "np.random.RandomState(0)."
    )


def _check_ground_truth_data(ground_truth_data: Any) -> None:
  required = (
    "num_factors",
    "factors_num_values",
    "sample_factors",
    "sample_observations_from_factors",
  )
  missing = [name for name in required if not hasattr(ground_truth_data, name)]
  if missing:
    raise ValueError(
      f"ground_truth_data lacks {missing}; it must provide num_factors, "
      "factors_num_values, sample_factors(num, random_state) and "
      "sample_observations_from_factors(factors, random_state)."
    )


def _check_positive(minimum: int = 1, **counts: int) -> None:
  for name, value in counts.items():
    if int(value) < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")


def _integers(random_state: RandomState, high: int, size: int) -> np.ndarray:
  if isinstance(random_state, np.random.Generator):
    return random_state.integers(high, size=size)
  return random_state.randint(high, size=size)


def _seed(random_state: RandomState) -> int:
  """An int seed for sklearn estimators, drawn from ``random_state``."""
  return int(_integers(random_state, 2**31 - 1, 1)[0])


def _sample_factors(
  ground_truth_data: Any, num: int, random_state: RandomState
) -> np.ndarray:
  factors = np.asarray(ground_truth_data.sample_factors(num, random_state))
  expected = (num, ground_truth_data.num_factors)
  if factors.shape != expected:
    raise ValueError(
      f"sample_factors({num}) returned shape {factors.shape}, expected "
      f"{expected} ([num, num_factors])."
    )
  return factors.copy()


def _represent(
  ground_truth_data: Any,
  functions: Sequence[RepresentationFn],
  factors: np.ndarray,
  random_state: RandomState,
  batch_size: int,
  dtype: np.dtype | None = np.float64,
) -> list[np.ndarray]:
  """Maps factors to observations to ``[N, D_k]`` outputs of each function.

  Observations are rendered and consumed ``batch_size`` at a time, so at most
  two chunks of images are alive at once: a worker thread renders chunk
  ``k + 1`` while the functions run on chunk ``k``. Chunks are rendered in
  order, one at a time, so ``random_state`` gives the same draws as a serial
  loop. Outputs are cast to ``dtype`` (``None`` keeps the function's own
  dtype).
  """

  def render(start: int) -> np.ndarray:
    return ground_truth_data.sample_observations_from_factors(
      factors[start : start + batch_size], random_state
    )

  chunks: list[list[np.ndarray]] = [[] for _ in functions]
  starts = range(0, factors.shape[0], batch_size)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as renderer:
    pending = renderer.submit(render, 0) if starts else None
    for start in starts:
      observations = pending.result()
      if start + batch_size < factors.shape[0]:
        pending = renderer.submit(render, start + batch_size)
      num = min(batch_size, factors.shape[0] - start)
      for fn, out in zip(functions, chunks, strict=True):
        values = np.asarray(fn(observations))
        if values.ndim != 2 or values.shape[0] != num:
          raise ValueError(
            f"{getattr(fn, '__name__', 'representation_function')} returned "
            f"shape {values.shape} for {num} observations; it must "
            "return [num_observations, num_codes]."
          )
        out.append(values if dtype is None else values.astype(dtype))
  return [np.concatenate(out, axis=0) for out in chunks]


def _sample_codes(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  num_points: int,
  random_state: RandomState,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(codes [num_points, D], factors [num_points, F])``."""
  factors = _sample_factors(ground_truth_data, num_points, random_state)
  (codes,) = _represent(
    ground_truth_data,
    [representation_function],
    factors,
    random_state,
    batch_size,
  )
  return codes, factors


def _factors_sharing_one(
  ground_truth_data: Any,
  num_groups: int,
  group_size: int,
  random_state: RandomState,
) -> tuple[np.ndarray, np.ndarray]:
  """Groups of factors that share the value of one random factor.

  Returns:
    ``(factor_index [G], factors [G, group_size, F])``; within group ``g``
    factor ``factor_index[g]`` takes the value of the group's first member.
  """
  num_factors = ground_truth_data.num_factors
  factor_index = _integers(random_state, num_factors, num_groups)
  factors = _sample_factors(
    ground_truth_data, num_groups * group_size, random_state
  ).reshape(num_groups, group_size, num_factors)
  groups = np.arange(num_groups)
  factors[groups, :, factor_index] = factors[groups, 0, factor_index][:, None]
  return factor_index, factors


# ----------------------------------------------------------------------------
# FactorVAE metric.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FactorVAEConvention:
  """Sample sizes and pruning rule of one FactorVAE-metric convention.

  Attributes:
    num_per_vote: images per vote (``L``), all sharing one factor value.
    num_train: votes that train the majority-vote classifier.
    num_eval: votes that evaluate it (the reported ``eval_accuracy``).
    num_variance_estimate: images for the global per-dimension variances.
    prune: ``"std"`` drops dimensions whose global std is below
      ``threshold``; ``"kl"`` drops dimensions whose mean KL to the prior is
      below ``threshold`` nats (needs ``kl_function`` or ``active_dims``).
    threshold: the pruning threshold.
  """

  num_per_vote: int
  num_train: int
  num_eval: int
  num_variance_estimate: int
  prune: str
  threshold: float


FACTOR_VAE_CONVENTIONS: Mapping[str, FactorVAEConvention] = (
  types.MappingProxyType(
    {
      # disentanglement_lib's factor_vae_metric gin config.
      "disentanglement_lib": FactorVAEConvention(
        num_per_vote=64,
        num_train=10_000,
        num_eval=5_000,
        num_variance_estimate=10_000,
        prune="std",
        threshold=0.05,
      ),
      # Paper reproduction, after Kim & Mnih (2018)'s protocol: L = 100,
      # 800 votes, collapsed dimensions pruned by their KL to the prior. The
      # 0.05-nat KL threshold, the 800 evaluation votes and the 10,000
      # images for the variances are our choices.
      "paper": FactorVAEConvention(
        num_per_vote=100,
        num_train=800,
        num_eval=800,
        num_variance_estimate=10_000,
        prune="kl",
        threshold=0.05,
      ),
    }
  )
)


def _active_mask(active_dims: np.ndarray, num_codes: int) -> np.ndarray:
  active_dims = np.asarray(active_dims)
  if active_dims.dtype == bool:
    if active_dims.shape != (num_codes,):
      raise ValueError(
        f"A boolean active_dims must have shape ({num_codes},), got "
        f"{active_dims.shape}."
      )
    return active_dims.copy()
  if active_dims.ndim != 1 or not np.issubdtype(active_dims.dtype, np.integer):
    raise ValueError(
      "active_dims must be a boolean mask [D] or a 1-D array of dimension "
      f"indices, got dtype {active_dims.dtype} and shape {active_dims.shape}."
    )
  if active_dims.size and (
    active_dims.min() < 0 or active_dims.max() >= num_codes
  ):
    raise ValueError(
      f"active_dims indices must lie in [0, {num_codes}), got "
      f"{active_dims.tolist()}."
    )
  mask = np.zeros(num_codes, bool)
  mask[active_dims] = True
  return mask


def _factor_vae_votes(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  num_votes: int,
  num_per_vote: int,
  global_variances: np.ndarray,
  active: np.ndarray,
  batch_size: int,
) -> np.ndarray:
  """Vote matrix ``[num_factors, D]``: (fixed factor, argmin dimension)."""
  factor_index, factors = _factors_sharing_one(
    ground_truth_data, num_votes, num_per_vote, random_state
  )
  active_index = np.flatnonzero(active)
  # Whole votes per representation call, about batch_size images each.
  votes_per_call = max(1, batch_size // num_per_vote)
  argmins = np.empty(num_votes, np.int64)
  for start in range(0, num_votes, votes_per_call):
    group = factors[start : start + votes_per_call]
    (codes,) = _represent(
      ground_truth_data,
      [representation_function],
      group.reshape(-1, group.shape[-1]),
      random_state,
      group.shape[0] * num_per_vote,
    )
    codes = codes.reshape(group.shape[0], num_per_vote, -1)[..., active]
    local_variances = np.var(codes, axis=1, ddof=1)
    ratio = local_variances / global_variances[active]
    argmins[start : start + group.shape[0]] = active_index[
      np.argmin(ratio, axis=1)
    ]
  votes = np.zeros(
    (ground_truth_data.num_factors, global_variances.shape[0]), np.int64
  )
  np.add.at(votes, (factor_index, argmins), 1)
  return votes


def compute_factor_vae(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  convention: str = "disentanglement_lib",
  num_per_vote: int | None = None,
  num_train: int | None = None,
  num_eval: int | None = None,
  num_variance_estimate: int | None = None,
  prune_threshold: float | None = None,
  active_dims: np.ndarray | None = None,
  kl_function: RepresentationFn | None = None,
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """The FactorVAE disentanglement metric (majority-vote classifier accuracy).

  1. Global variances ``s_d^2`` of each code dimension over
     ``num_variance_estimate`` random images; prune dimensions (below).
  2. A vote: pick a factor ``k`` uniformly, draw ``num_per_vote`` images that
     share the value of factor ``k``, and vote ``(k, argmin_d
     Var_local(z_d) / s_d^2)`` over the active dimensions.
  3. The classifier maps each dimension to the factor it received most
     training votes for; the score is its accuracy on fresh evaluation votes.

  Conventions (``FACTOR_VAE_CONVENTIONS``; keyword arguments override them):

  * ``"disentanglement_lib"``: 64 images per vote, 10,000 train and 5,000
    eval votes, 10,000 images for the variances, dimensions with global std
    below 0.05 pruned.
  * ``"paper"`` (the paper-reproduction convention, after Kim & Mnih's
    protocol, which the AD-FactorVAE paper's dSprites scores follow): 100
    images per vote, 800 train and 800 eval votes, 10,000 images for the
    variances, and dimensions collapsed to the prior pruned: pass
    ``kl_function(observations) -> [N, D]`` (per-dimension
    ``KL(q(z_d|x) || N(0, 1))``, evaluated on the variance-estimate images;
    dimensions with mean KL below ``prune_threshold`` = 0.05 nats are
    dropped) or the ``active_dims`` directly. With neither, no dimension is
    pruned.

  In both conventions ``active_dims`` (a boolean mask or indices) overrides
  the pruning rule, and dimensions of zero global variance are always dropped
  (their ratio is undefined). With no active dimension both accuracies are 0,
  as in disentanglement_lib.

  Args:
    ground_truth_data: data with the ground-truth interface (module doc).
    representation_function: observations ``[N, H, W, C]`` -> codes
      ``[N, D]``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``.
    convention: ``"disentanglement_lib"`` or ``"paper"``.
    num_per_vote: images per vote, ``L``.
    num_train: training votes.
    num_eval: evaluation votes.
    num_variance_estimate: images for the global variances.
    prune_threshold: std threshold (``"std"`` pruning) or KL threshold in
      nats (``"kl"`` pruning).
    active_dims: bool ``[D]`` or int indices of the dimensions to keep.
    kl_function: observations -> per-dimension KL ``[N, D]``; paper
      convention only.
    batch_size: observations per representation call (whole votes per call:
      ``max(1, batch_size // num_per_vote)`` votes).

  Returns:
    Dict with ``train_accuracy``, ``eval_accuracy`` and ``num_active_dims``.

  Examples:
    >>> from eval.metrics import testing
    >>> data = testing.IdentityData()
    >>> compute_factor_vae(data, testing.identity_representation,
    ...                    np.random.RandomState(0), num_train=100,
    ...                    num_eval=50, num_variance_estimate=500)
    {'train_accuracy': 1.0, 'eval_accuracy': 1.0, 'num_active_dims': 5.0}

  Raises:
    ValueError: for an unknown convention, a ``kl_function`` outside the
      paper convention, bad ``active_dims`` or malformed inputs.

  References:
    Kim & Mnih, "Disentangling by Factorising", ICML 2018, section 4.
    disentanglement_lib: evaluation/metrics/factor_vae.py.
  """
  if convention not in FACTOR_VAE_CONVENTIONS:
    raise ValueError(
      f"Unknown convention {convention!r}; choose one of "
      f"{sorted(FACTOR_VAE_CONVENTIONS)}."
    )
  config = FACTOR_VAE_CONVENTIONS[convention]
  if kl_function is not None and config.prune != "kl":
    raise ValueError(
      f"kl_function is only used by KL pruning (convention='paper'); the "
      f"{convention!r} convention prunes by std. Drop kl_function or pass "
      "active_dims."
    )
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  pick = lambda value, default: default if value is None else value
  num_per_vote = pick(num_per_vote, config.num_per_vote)
  num_train = pick(num_train, config.num_train)
  num_eval = pick(num_eval, config.num_eval)
  num_variance_estimate = pick(
    num_variance_estimate, config.num_variance_estimate
  )
  threshold = pick(prune_threshold, config.threshold)
  _check_positive(num_train=num_train, num_eval=num_eval, batch_size=batch_size)
  # Variances with ddof=1 need two samples.
  _check_positive(
    2, num_variance_estimate=num_variance_estimate, num_per_vote=num_per_vote
  )

  factors = _sample_factors(
    ground_truth_data, num_variance_estimate, random_state
  )
  functions = [representation_function]
  if kl_function is not None and active_dims is None:
    functions.append(kl_function)
  outputs = _represent(
    ground_truth_data, functions, factors, random_state, batch_size
  )
  global_variances = np.var(outputs[0], axis=0, ddof=1)
  num_codes = global_variances.shape[0]
  if active_dims is not None:
    active = _active_mask(active_dims, num_codes)
  elif config.prune == "std":
    active = np.sqrt(global_variances) >= threshold
  elif kl_function is not None:
    if outputs[1].shape[1] != num_codes:
      raise ValueError(
        f"kl_function returned {outputs[1].shape[1]} dimensions but the "
        f"representation has {num_codes}; both must be [N, D]."
      )
    active = outputs[1].mean(axis=0) >= threshold
  else:
    active = np.ones(num_codes, bool)
  active &= global_variances > 0
  if not active.any():
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}

  def accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    return float(votes[classifier, np.arange(num_codes)].sum() / votes.sum())

  train_votes = _factor_vae_votes(
    ground_truth_data,
    representation_function,
    random_state,
    num_train,
    num_per_vote,
    global_variances,
    active,
    batch_size,
  )
  classifier = np.argmax(train_votes, axis=0)
  eval_votes = _factor_vae_votes(
    ground_truth_data,
    representation_function,
    random_state,
    num_eval,
    num_per_vote,
    global_variances,
    active,
    batch_size,
  )
  return {
    "train_accuracy": accuracy(train_votes, classifier),
    "eval_accuracy": accuracy(eval_votes, classifier),
    "num_active_dims": float(active.sum()),
  }


# ----------------------------------------------------------------------------
# BetaVAE metric.
# ----------------------------------------------------------------------------


def _beta_vae_points(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  num_points: int,
  num_per_point: int,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Features ``mean |z(x1) - z(x2)|`` over pairs sharing one factor."""
  num_factors = ground_truth_data.num_factors
  labels = _integers(random_state, num_factors, num_points)
  shape = (num_points, num_per_point, num_factors)
  factors1 = _sample_factors(
    ground_truth_data, num_points * num_per_point, random_state
  ).reshape(shape)
  factors2 = _sample_factors(
    ground_truth_data, num_points * num_per_point, random_state
  ).reshape(shape)
  points = np.arange(num_points)
  factors2[points, :, labels] = factors1[points, :, labels]
  pairs = np.stack([factors1, factors2], axis=2)  # [P, L, 2, F]
  # Whole points per representation call, about batch_size images each.
  points_per_call = max(1, batch_size // (2 * num_per_point))
  features = []
  for start in range(0, num_points, points_per_call):
    group = pairs[start : start + points_per_call]
    (codes,) = _represent(
      ground_truth_data,
      [representation_function],
      group.reshape(-1, num_factors),
      random_state,
      group.shape[0] * 2 * num_per_point,
    )
    codes = codes.reshape(group.shape[0], num_per_point, 2, -1)
    features.append(np.abs(codes[:, :, 0] - codes[:, :, 1]).mean(axis=1))
  return np.concatenate(features, axis=0), labels


def compute_beta_vae(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  num_per_point: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """The BetaVAE metric: accuracy of a linear classifier of the fixed factor.

  A training point fixes one random factor ``k`` across ``num_per_point``
  pairs of images; its feature is ``mean |z(x1) - z(x2)|`` over the pairs
  and its label ``k``. A logistic regression (sklearn defaults, as
  disentanglement_lib) is fit on ``num_train`` points and scored on
  ``num_eval`` fresh points.

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``.
    num_per_point: pairs per point (64 in disentanglement_lib).
    num_train: training points.
    num_eval: evaluation points.
    batch_size: observations per representation call.

  Returns:
    Dict with ``train_accuracy`` and ``eval_accuracy``.

  Raises:
    ValueError: for malformed inputs.

  References:
    Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework", ICLR 2017, section 3.
    disentanglement_lib: evaluation/metrics/beta_vae.py.
  """
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  _check_positive(
    num_per_point=num_per_point,
    num_train=num_train,
    num_eval=num_eval,
    batch_size=batch_size,
  )
  args = (num_per_point, batch_size)
  train_x, train_y = _beta_vae_points(
    ground_truth_data, representation_function, random_state, num_train, *args
  )
  if np.unique(train_y).size < 2:
    raise ValueError(
      f"All {num_train} training points fix the same factor; increase "
      "num_train."
    )
  model = sklearn.linear_model.LogisticRegression(
    random_state=_seed(random_state)
  )
  model.fit(train_x, train_y)
  eval_x, eval_y = _beta_vae_points(
    ground_truth_data, representation_function, random_state, num_eval, *args
  )
  return {
    "train_accuracy": float(model.score(train_x, train_y)),
    "eval_accuracy": float(model.score(eval_x, eval_y)),
  }


# ----------------------------------------------------------------------------
# MIG.
# ----------------------------------------------------------------------------


def _histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
  """Per-dimension equal-width binning of ``[N, D]`` codes (labels 1..bins)."""
  discretized = np.empty(codes.shape, np.int64)
  for d in range(codes.shape[1]):
    edges = np.histogram(codes[:, d], num_bins)[1][:-1]
    discretized[:, d] = np.digitize(codes[:, d], edges)
  return discretized


def _discrete_mutual_info(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """Mutual information (nats) ``[D, F]`` between discrete codes and factors."""
  return np.array(
    [
      [
        sklearn.metrics.mutual_info_score(factors[:, j], codes[:, i])
        for j in range(factors.shape[1])
      ]
      for i in range(codes.shape[1])
    ]
  )


def compute_mig(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  num_train: int = 10_000,
  num_bins: int = 20,
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Mutual Information Gap.

  ``MIG = mean_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`` where ``z_a`` and
  ``z_b`` are the two code dimensions most informative about factor
  ``v_k``, with each code dimension discretised into ``num_bins`` equal-width
  bins (disentanglement_lib's histogram discretizer).

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``, ``D >= 2``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``.
    num_train: sampled points.
    num_bins: histogram bins per code dimension.
    batch_size: observations per representation call.

  Returns:
    Dict with ``discrete_mig``.

  Raises:
    ValueError: for ``D < 2``, a factor that takes a single value in the
      sample, or malformed inputs.

  References:
    Chen et al., "Isolating Sources of Disentanglement in Variational
    Autoencoders", NeurIPS 2018, section 4.1.
    disentanglement_lib: evaluation/metrics/mig.py.
  """
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  _check_positive(num_train=num_train, num_bins=num_bins, batch_size=batch_size)
  codes, factors = _sample_codes(
    ground_truth_data, representation_function, num_train, random_state,
    batch_size,
  )  # fmt: skip
  if codes.shape[1] < 2:
    raise ValueError(
      f"MIG needs at least 2 code dimensions, got {codes.shape[1]}."
    )
  mutual_info = _discrete_mutual_info(
    _histogram_discretize(codes, num_bins), factors
  )
  entropy = np.array(
    [
      sklearn.metrics.mutual_info_score(factors[:, j], factors[:, j])
      for j in range(factors.shape[1])
    ]
  )
  if np.any(entropy == 0):
    raise ValueError(
      f"Factors {np.flatnonzero(entropy == 0).tolist()} take one value in "
      f"the {num_train} samples; increase num_train."
    )
  top = np.sort(mutual_info, axis=0)[::-1]
  return {"discrete_mig": float(np.mean((top[0] - top[1]) / entropy))}


# ----------------------------------------------------------------------------
# DCI.
# ----------------------------------------------------------------------------


def _importance(
  codes_train: np.ndarray,
  factors_train: np.ndarray,
  codes_test: np.ndarray,
  factors_test: np.ndarray,
  backend: str,
  seed: int,
) -> tuple[np.ndarray, float, float]:
  """Importance matrix ``[D, F]`` and mean train/test factor accuracies."""
  num_factors = factors_train.shape[1]
  importance = np.zeros((codes_train.shape[1], num_factors))
  train_acc, test_acc = [], []
  for j in range(num_factors):
    if backend == "gbt":
      model = sklearn.ensemble.GradientBoostingClassifier(random_state=seed)
    else:
      model = sklearn.ensemble.RandomForestClassifier(
        n_estimators=50,
        max_features=None,
        min_samples_leaf=2,
        random_state=seed,
      )
    model.fit(codes_train, factors_train[:, j])
    importance[:, j] = np.abs(model.feature_importances_)
    train_acc.append(np.mean(model.predict(codes_train) == factors_train[:, j]))
    test_acc.append(np.mean(model.predict(codes_test) == factors_test[:, j]))
  return importance, float(np.mean(train_acc)), float(np.mean(test_acc))


def _dci_scores(importance: np.ndarray) -> tuple[float, float]:
  """Disentanglement and completeness of an importance matrix ``[D, F]``."""
  num_codes, num_factors = importance.shape
  if num_factors > 1:
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=num_factors)
  else:
    per_code = np.ones(num_codes)
  if num_codes > 1:
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=num_codes)
  else:
    per_factor = np.ones(num_factors)
  weights = importance if importance.sum() > 0 else np.ones_like(importance)
  code_weight = weights.sum(axis=1) / weights.sum()
  factor_weight = weights.sum(axis=0) / weights.sum()
  return (
    float(np.sum(per_code * code_weight)),
    float(np.sum(per_factor * factor_weight)),
  )


def compute_dci(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  num_train: int = 10_000,
  num_test: int = 5_000,
  importance: str = "gbt",
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Disentanglement, completeness and informativeness (DCI).

  One classifier per factor predicts it from the codes; its feature
  importances form ``R [D, F]``. Disentanglement is ``sum_d rho_d (1 -
  H_F(R_d.))`` with ``rho_d`` the share of dimension ``d`` in the total
  importance; completeness is the same with the roles of codes and factors
  swapped; informativeness is the mean classification accuracy.

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``.
    num_train: training points.
    num_test: test points.
    importance: ``"gbt"`` (sklearn ``GradientBoostingClassifier`` with
      defaults, as disentanglement_lib; slow on many-valued factors: 205 s
      for 1,000 train points, D = 32 and dSprites' factor sizes on 2 CPU
      cores, so expect tens of minutes at the default sizes) or
      ``"random_forest"`` (sklearn ``RandomForestClassifier``, 50 trees,
      every feature considered at each split so that irrelevant dimensions
      get no importance, ``min_samples_leaf=2``; 8 s on the same problem,
      also impurity-based importances, but its numbers are not comparable
      with ``"gbt"``'s).
    batch_size: observations per representation call.

  Returns:
    Dict with ``disentanglement``, ``completeness``,
    ``informativeness_train`` and ``informativeness_test`` (accuracies).

  Raises:
    ValueError: for an unknown backend or malformed inputs.

  References:
    Eastwood & Williams, "A Framework for the Quantitative Evaluation of
    Disentangled Representations", ICLR 2018, section 2.
    disentanglement_lib: evaluation/metrics/dci.py.
  """
  if importance not in ("gbt", "random_forest"):
    raise ValueError(
      f"importance must be 'gbt' or 'random_forest', got {importance!r}."
    )
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  _check_positive(num_train=num_train, num_test=num_test, batch_size=batch_size)
  args = (ground_truth_data, representation_function)
  codes_train, factors_train = _sample_codes(
    *args, num_train, random_state, batch_size
  )
  codes_test, factors_test = _sample_codes(
    *args, num_test, random_state, batch_size
  )
  matrix, train_acc, test_acc = _importance(
    codes_train,
    factors_train,
    codes_test,
    factors_test,
    importance,
    _seed(random_state),
  )
  disentanglement, completeness = _dci_scores(matrix)
  return {
    "disentanglement": disentanglement,
    "completeness": completeness,
    "informativeness_train": train_acc,
    "informativeness_test": test_acc,
  }


# ----------------------------------------------------------------------------
# SAP.
# ----------------------------------------------------------------------------


def _sap_matrix(
  codes: np.ndarray,
  factors: np.ndarray,
  codes_test: np.ndarray,
  factors_test: np.ndarray,
  continuous_factors: bool,
) -> np.ndarray:
  """Score matrix ``[D, F]``: R^2 (continuous) or 1-D SVM accuracy."""
  if continuous_factors:
    codes_c = codes - codes.mean(axis=0)
    factors_c = factors - factors.mean(axis=0)
    n = codes.shape[0] - 1
    cov = codes_c.T @ factors_c / n
    var_code = (codes_c**2).sum(axis=0) / n
    var_factor = (factors_c**2).sum(axis=0) / n
    with np.errstate(divide="ignore", invalid="ignore"):
      r2 = cov**2 / (var_code[:, None] * var_factor[None, :])
    return np.where(var_code[:, None] > 1e-12, r2, 0.0)
  matrix = np.zeros((codes.shape[1], factors.shape[1]))
  for i, j in itertools.product(range(codes.shape[1]), range(factors.shape[1])):
    classifier = sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")
    classifier.fit(codes[:, i : i + 1], factors[:, j])
    prediction = classifier.predict(codes_test[:, i : i + 1])
    matrix[i, j] = np.mean(prediction == factors_test[:, j])
  return matrix


def compute_sap(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  num_train: int = 10_000,
  num_test: int = 5_000,
  continuous_factors: bool = False,
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Separated Attribute Predictability (SAP).

  Score matrix ``S [D, F]``: for discrete factors (default, as
  disentanglement_lib) the test accuracy of a linear SVM (``C = 0.01``,
  balanced classes) predicting factor ``k`` from code dimension ``d`` alone;
  for continuous factors the squared correlation. SAP is the mean over
  factors of the gap between the two highest scores of the factor's column.

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``, ``D >= 2``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``.
    num_train: training points.
    num_test: test points (discrete factors only; drawn either way).
    continuous_factors: treat factors as continuous (R^2 scores).
    batch_size: observations per representation call.

  Returns:
    Dict with ``sap_score``.

  Raises:
    ValueError: for ``D < 2`` or malformed inputs.

  References:
    Kumar et al., "Variational Inference of Disentangled Latent Concepts
    from Unlabeled Observations", ICLR 2018, section 3.
    disentanglement_lib: evaluation/metrics/sap_score.py.
  """
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  _check_positive(num_train=num_train, num_test=num_test, batch_size=batch_size)
  args = (ground_truth_data, representation_function)
  codes, factors = _sample_codes(*args, num_train, random_state, batch_size)
  codes_test, factors_test = _sample_codes(
    *args, num_test, random_state, batch_size
  )
  if codes.shape[1] < 2:
    raise ValueError(
      f"SAP needs at least 2 code dimensions, got {codes.shape[1]}."
    )
  matrix = _sap_matrix(
    codes, factors, codes_test, factors_test, continuous_factors
  )
  top = np.sort(matrix, axis=0)
  return {"sap_score": float(np.mean(top[-1] - top[-2]))}


# ----------------------------------------------------------------------------
# Tabulated codes and the single entry point.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TabulatedData:
  """Ground-truth data whose observations are flat factor indices ``[N, 1]``."""

  base: Any
  num_factors: int
  factors_num_values: tuple[int, ...]
  observation_shape: tuple[int, ...] = (1,)

  def sample_factors(self, num: int, random_state: RandomState) -> np.ndarray:
    return self.base.sample_factors(num, random_state)

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state: RandomState
  ) -> np.ndarray:
    del random_state  # Deterministic: the observation is the index.
    index = np.ravel_multi_index(np.asarray(factors).T, self.factors_num_values)
    return index[:, None]


def tabulate(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> tuple[Any, RepresentationFn]:
  """Encodes every factor combination once; metrics then look codes up.

  Valid when each factor combination has one observation and
  ``sample_observations_from_factors`` is deterministic (dSprites: 737,280
  images, one per combination). The returned pair is a drop-in replacement
  for ``(ground_truth_data, representation_function)`` in every metric here:
  its observations are the flat factor indices ``[N, 1]`` (int64, row-major
  over ``factors_num_values``) and its representation function indexes the
  code table ``[prod(factors_num_values), D]``.

  Cost: one encoder pass over the data set. For the paper's FactorVAE
  encoder (14.5 MFLOP per image) on 2 CPU cores, dealt over 4 CPU devices by
  ``eval.inference.batched``, that took 55 s for dSprites (13,400 images/s);
  the FactorVAE metric on the table then takes 0.2 s
  (``bench/factorvae_metric.py``).

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``.
    random_state: passed to ``sample_observations_from_factors``.
    batch_size: observations per representation call.

  Returns:
    ``(tabulated_data, lookup_function)``.

  Raises:
    ValueError: for malformed inputs or more than 2**26 combinations (the
      code table would not fit comfortably in memory).
  """
  _check_ground_truth_data(ground_truth_data)
  _check_random_state(random_state)
  _check_positive(batch_size=batch_size)
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
  (table,) = _represent(
    ground_truth_data,
    [representation_function],
    factors,
    random_state,
    batch_size,
    dtype=None,  # A float32 table stays float32: half the memory.
  )

  def lookup(observations: np.ndarray) -> np.ndarray:
    return table[np.asarray(observations)[:, 0]]

  data = _TabulatedData(
    base=ground_truth_data,
    num_factors=len(sizes),
    factors_num_values=sizes,
  )
  return data, lookup


def compute_all(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  kl_function: RepresentationFn | None = None,
  quick: bool = False,
  dci_importance: str = "gbt",
  batch_size: int = _DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Every disentanglement metric, with flat keys for a results file.

  Keys: ``factor_vae/disentanglement_lib/{train,eval}_accuracy``,
  ``factor_vae/disentanglement_lib/num_active_dims``, the same under
  ``factor_vae/paper/``, ``beta_vae/{train,eval}_accuracy``, ``mig``,
  ``dci/disentanglement``, ``dci/completeness``,
  ``dci/informativeness_{train,test}`` and ``sap``.

  With ``quick=False`` every metric uses its published sample sizes (the
  defaults of each ``compute_*``). With ``quick=True`` (tests and CPU smoke
  runs): FactorVAE 20 images per vote, 200 train / 100 eval votes, 1,000
  images for the variances (both conventions); BetaVAE 20 pairs per point,
  200 train / 100 eval points; MIG 1,000 points; DCI 300 train / 150 test
  points; SAP 500 train / 250 test points.

  Args:
    ground_truth_data: data with the ground-truth interface.
    representation_function: observations -> codes ``[N, D]``.
    random_state: ``np.random.RandomState`` or ``np.random.Generator``;
      the metrics consume it in the order of the keys above.
    kl_function: observations -> per-dimension KL ``[N, D]`` for the paper
      convention's pruning; without it the paper convention prunes nothing.
    quick: small sample sizes (above).
    dci_importance: ``"gbt"`` or ``"random_forest"`` (see ``compute_dci``).
    batch_size: observations per representation call.

  Returns:
    The flat dict of scores.

  References:
    See each ``compute_*``.
  """
  args = (ground_truth_data, representation_function, random_state)
  factor_vae = (
    dict(
      num_per_vote=20, num_train=200, num_eval=100, num_variance_estimate=1000
    )
    if quick
    else {}
  )
  results: dict[str, float] = {}
  for convention in FACTOR_VAE_CONVENTIONS:
    scores = compute_factor_vae(
      *args,
      convention=convention,
      kl_function=kl_function if convention == "paper" else None,
      batch_size=batch_size,
      **factor_vae,
    )
    for name, value in scores.items():
      results[f"factor_vae/{convention}/{name}"] = value
  beta_vae = {}
  if quick:
    beta_vae = dict(num_per_point=20, num_train=200, num_eval=100)
  for name, value in compute_beta_vae(
    *args, batch_size=batch_size, **beta_vae
  ).items():
    results[f"beta_vae/{name}"] = value
  mig = dict(num_train=1000) if quick else {}
  results["mig"] = compute_mig(*args, batch_size=batch_size, **mig)[
    "discrete_mig"
  ]
  dci = dict(num_train=300, num_test=150) if quick else {}
  for name, value in compute_dci(
    *args, importance=dci_importance, batch_size=batch_size, **dci
  ).items():
    results[f"dci/{name}"] = value
  sap = dict(num_train=500, num_test=250) if quick else {}
  results["sap"] = compute_sap(*args, batch_size=batch_size, **sap)["sap_score"]
  return results
