"""Known-answer tests of the disentanglement metrics on dummy factor data."""

import dataclasses
import doctest
import warnings

import numpy as np
import pytest
import sklearn.exceptions

from eval.metrics import (
  beta_vae,
  dci,
  disentanglement,
  factor_vae,
  mig,
  sampling,
  sap,
)
from tests import ground_truth

DATA = ground_truth.IdentityData()  # 5 factors with 4..8 values: chance is 0.2.
IDENTITY = ground_truth.identity_representation
CONSTANT = ground_truth.constant_representation
NOISE = ground_truth.NoiseRepresentation(num_codes=5)
MIXED = ground_truth.MixedRepresentation(DATA.factors_num_values)

SMALL_FACTOR_VAE = dict(
  num_per_vote=20, num_train=300, num_eval=200, num_variance_estimate=1000
)
SMALL_BETA_VAE = dict(num_per_point=20, num_train=300, num_eval=200)


def _rs(seed=0):
  return np.random.RandomState(seed)


def _flat_scores(data, rep, **options):
  """Every metric of the suite, as the flat ``scores`` of a results file."""
  results = disentanglement.evaluate_suite(data, rep, _rs(), **options)
  return {key: value for r in results for key, value in r.scores.items()}


@pytest.mark.parametrize("convention", ["disentanglement_lib", "paper"])
def test_factor_vae_known_answers(convention):
  def score(rep):
    return factor_vae.compute_factor_vae(
      DATA, rep, _rs(), convention=convention, **SMALL_FACTOR_VAE
    )

  identity = score(IDENTITY)
  assert identity["eval_accuracy"] == 1.0
  assert identity["train_accuracy"] == 1.0
  assert identity["num_active_dims"] == 5
  # Constant codes: every dimension pruned; 0 as in disentanglement_lib.
  constant = score(CONSTANT)
  assert constant == {
    "train_accuracy": 0.0,
    "eval_accuracy": 0.0,
    "num_active_dims": 0.0,
  }
  # Noise codes: votes are uniform, so evaluation is near chance (0.2).
  assert score(NOISE)["eval_accuracy"] < 0.32
  # A 45-degree rotation of factor pairs entangles them.
  assert score(MIXED)["eval_accuracy"] < 0.8


def test_factor_vae_published_sizes_by_convention():
  dl = factor_vae.FACTOR_VAE_CONVENTIONS["disentanglement_lib"]
  assert (dl.num_per_vote, dl.num_train, dl.num_eval) == (64, 10_000, 5_000)
  assert (dl.num_variance_estimate, dl.prune, dl.threshold) == (
    10_000,
    "std",
    0.05,
  )
  paper = factor_vae.FACTOR_VAE_CONVENTIONS["paper"]
  assert (paper.num_per_vote, paper.num_train, paper.prune) == (100, 800, "kl")


def _with_collapsed_dims(observations):
  """Identity codes plus two near-constant dims (std 0.01)."""
  codes = IDENTITY(observations)
  rng = np.random.default_rng(int(codes.sum()) % 1000)
  noise = 0.01 * rng.standard_normal((codes.shape[0], 2))
  return np.concatenate([codes, noise], axis=1)


def _kl(observations):
  """Per-dimension KL: 1 nat for the factor dims, 0.001 for the collapsed."""
  kl = np.full((observations.shape[0], 7), 1.0)
  kl[:, 5:] = 0.001
  return kl


def test_factor_vae_pruning_rules():
  def active(**kwargs):
    scores = factor_vae.compute_factor_vae(
      DATA, _with_collapsed_dims, _rs(), **SMALL_FACTOR_VAE, **kwargs
    )
    return scores["num_active_dims"]

  # disentanglement_lib: global std 0.01 < 0.05 -> pruned.
  assert active() == 5
  assert active(prune_threshold=0.001) == 7
  # Paper: mean KL 0.001 < 0.05 nats -> pruned; no KL -> nothing pruned.
  assert active(convention="paper", kl_function=_kl) == 5
  assert active(convention="paper") == 7
  # Explicit active dims override both rules, as a mask or as indices.
  assert active(active_dims=np.array([0, 2, 6])) == 3
  assert active(convention="paper", active_dims=np.arange(7) < 4) == 4


def test_independent_of_batch_size_and_deterministic():
  kwargs = dict(convention="disentanglement_lib", **SMALL_FACTOR_VAE)
  big = factor_vae.compute_factor_vae(DATA, MIXED, _rs(3), **kwargs)
  small = factor_vae.compute_factor_vae(
    DATA, MIXED, _rs(3), batch_size=7, **kwargs
  )
  assert big == small
  other_seed = factor_vae.compute_factor_vae(DATA, MIXED, _rs(4), **kwargs)
  assert other_seed != big
  beta_big = beta_vae.compute_beta_vae(DATA, MIXED, _rs(3), **SMALL_BETA_VAE)
  beta_small = beta_vae.compute_beta_vae(
    DATA, MIXED, _rs(3), batch_size=7, **SMALL_BETA_VAE
  )
  assert beta_big == beta_small


def _reference_factor_vae(
  data,
  rep,
  random_state,
  num_per_vote,
  num_train,
  num_eval,
  num_variance_estimate,
):
  """disentanglement_lib's per-vote loop, drawing in our random order."""
  factors = data.sample_factors(num_variance_estimate, random_state)
  codes = rep(data.sample_observations_from_factors(factors, random_state))
  global_var = np.var(codes, axis=0, ddof=1)
  active = np.flatnonzero(np.sqrt(global_var) >= 0.05)

  def votes(num_votes):
    factor_index = random_state.randint(data.num_factors, size=num_votes)
    factors = data.sample_factors(num_votes * num_per_vote, random_state)
    factors = factors.reshape(num_votes, num_per_vote, -1)
    matrix = np.zeros((data.num_factors, global_var.size), np.int64)
    for v, k in enumerate(factor_index):
      vote = factors[v].copy()
      vote[:, k] = vote[0, k]
      z = rep(data.sample_observations_from_factors(vote, random_state))
      local_var = np.var(z, axis=0, ddof=1)
      matrix[k, active[np.argmin(local_var[active] / global_var[active])]] += 1
    return matrix

  train = votes(num_train)
  classifier = np.argmax(train, axis=0)
  columns = np.arange(global_var.size)
  evaluation = votes(num_eval)
  return {
    "train_accuracy": train[classifier, columns].sum() / train.sum(),
    "eval_accuracy": evaluation[classifier, columns].sum() / evaluation.sum(),
    "num_active_dims": float(active.size),
  }


def test_factor_vae_matches_a_per_vote_loop():
  def rep(observations):
    """Mixed codes, a noisy copy and a collapsed dim; row by row."""
    mixed = MIXED(observations)
    # Pseudo-noise that is a fixed function of each row, not of the batch.
    noise = np.sin(1e3 * mixed[:, :2] @ np.array([[1.0, 2.0], [3.0, 5.0]]))
    noisy = mixed[:, :2] + noise
    return np.concatenate([mixed, noisy, 0.01 * mixed[:, :1]], axis=1)

  got = factor_vae.compute_factor_vae(DATA, rep, _rs(7), **SMALL_FACTOR_VAE)
  expected = _reference_factor_vae(DATA, rep, _rs(7), **SMALL_FACTOR_VAE)
  assert got == pytest.approx(expected, abs=1e-12)
  assert got["num_active_dims"] == 7


def test_generator_random_state_is_accepted():
  scores = factor_vae.compute_factor_vae(
    DATA, IDENTITY, np.random.default_rng(0), **SMALL_FACTOR_VAE
  )
  assert scores["eval_accuracy"] == 1.0
  scores = beta_vae.compute_beta_vae(
    DATA, IDENTITY, np.random.default_rng(0), **SMALL_BETA_VAE
  )
  assert scores["eval_accuracy"] > 0.95


def test_tabulate_gives_the_same_scores():
  # 4*5*6*7*8 = 6720 combinations, encoded once.
  calls = []

  def mixed32(observations):  # An encoder's float32 codes.
    return MIXED(observations).astype(np.float32)

  def counting(observations):
    calls.append(observations.shape[0])
    return mixed32(observations)

  data, lookup = disentanglement.tabulate(
    DATA, counting, _rs(), batch_size=1000
  )
  assert sum(calls) == 6720 and max(calls) == 1000
  assert lookup(np.zeros((1, 1), np.int64)).dtype == np.float32
  direct = factor_vae.compute_factor_vae(
    DATA, mixed32, _rs(5), **SMALL_FACTOR_VAE
  )
  tabulated = factor_vae.compute_factor_vae(
    data, lookup, _rs(5), **SMALL_FACTOR_VAE
  )
  assert direct == tabulated
  assert sum(calls) == 6720  # The metric itself only looked codes up.


def test_tabulate_all_renders_once_for_several_models():
  renders = []

  class Counted(ground_truth.IdentityData):
    def sample_observations_from_factors(self, factors, random_state):
      renders.append(len(factors))
      return super().sample_observations_from_factors(factors, random_state)

  data = Counted()
  table, (first, second) = disentanglement.tabulate_all(
    data, [IDENTITY, MIXED], _rs(), batch_size=1000
  )
  assert sum(renders) == 6720  # Each image rendered once, for both models.
  _, alone = disentanglement.tabulate(DATA, MIXED, _rs(), batch_size=1000)
  index = np.arange(0, 6720, 97)[:, None]
  np.testing.assert_array_equal(second(index), alone(index))
  np.testing.assert_array_equal(
    first(index), IDENTITY(DATA.sample_observations_from_factors(
      np.stack(np.unravel_index(index[:, 0], DATA.factors_num_values), 1),
      _rs(),
    ))
  )  # fmt: skip
  with pytest.raises(ValueError, match="at least one"):
    disentanglement.tabulate_all(DATA, [], _rs())


def test_beta_vae_known_answers():
  def score(rep):
    return beta_vae.compute_beta_vae(DATA, rep, _rs(), **SMALL_BETA_VAE)[
      "eval_accuracy"
    ]

  assert score(IDENTITY) > 0.95
  assert score(CONSTANT) < 0.3
  assert score(NOISE) < 0.35
  assert score(MIXED) < score(IDENTITY) - 0.2


def test_mig_known_answers():
  def score(rep):
    return mig.compute_mig(DATA, rep, _rs(), num_train=2000)["discrete_mig"]

  # Factors have <= 20 values, so each code bin is one factor value.
  assert score(IDENTITY) > 0.95
  assert score(CONSTANT) == pytest.approx(0.0, abs=1e-12)
  assert score(NOISE) < 0.05
  assert score(MIXED) < 0.5


@pytest.mark.parametrize("importance", ["gbt", "random_forest"])
def test_dci_known_answers(importance):
  def score(rep):
    return dci.compute_dci(
      DATA, rep, _rs(), num_train=200, num_test=100, importance=importance
    )

  identity = score(IDENTITY)
  assert identity["disentanglement"] > 0.9
  assert identity["completeness"] > 0.9
  assert identity["informativeness_test"] > 0.9
  mixed = score(MIXED)
  assert mixed["disentanglement"] < identity["disentanglement"] - 0.2
  assert mixed["completeness"] < identity["completeness"] - 0.2
  constant = score(CONSTANT)
  assert constant["disentanglement"] < 0.05
  assert constant["informativeness_test"] < 0.35


def test_sap_known_answers():
  def score(rep, data=DATA, **kwargs):
    return sap.compute_sap(
      data, rep, _rs(), num_train=1000, num_test=500, **kwargs
    )["sap_score"]

  # Continuous: squared correlations, as disentanglement_lib's own test.
  assert score(IDENTITY, continuous_factors=True) > 0.95
  assert score(CONSTANT, continuous_factors=True) == 0.0
  assert score(NOISE, continuous_factors=True) < 0.05
  # Factors 0-3 are mixed in pairs (gap 0), factor 4 is untouched (gap 1).
  assert score(MIXED, continuous_factors=True) < 0.3
  # Discrete (the default): a 1-D linear SVM separates binary factors from
  # their own code (accuracy 1) and is at chance (1/2) on the others, so
  # the ideal code scores 1 - 1/2.
  binary = ground_truth.IdentityData((2, 2, 2, 2))
  assert score(IDENTITY, binary) == pytest.approx(0.5, abs=0.05)
  assert score(CONSTANT, binary) < 0.05
  # Rotated pairs: both codes of a pair predict each factor equally well.
  assert score(ground_truth.MixedRepresentation((2, 2, 2, 2)), binary) < 0.1


def test_suite_quick_keys():
  results = _flat_scores(DATA, IDENTITY, quick=True)
  expected = {
    f"factor_vae/{c}/{k}"
    for c in ("disentanglement_lib", "paper")
    for k in ("train_accuracy", "eval_accuracy", "num_active_dims")
  } | {
    "beta_vae/train_accuracy",
    "beta_vae/eval_accuracy",
    "mig",
    "dci/disentanglement",
    "dci/completeness",
    "dci/informativeness_train",
    "dci/informativeness_test",
    "sap",
  }
  assert set(results) == expected
  assert all(isinstance(v, float) for v in results.values())
  assert results["factor_vae/disentanglement_lib/eval_accuracy"] == 1.0
  assert results["factor_vae/paper/eval_accuracy"] == 1.0
  assert results["mig"] > 0.9


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="Unknown convention"):
    factor_vae.compute_factor_vae(DATA, IDENTITY, _rs(), convention="kim")
  with pytest.raises(ValueError, match="kl_function is only used"):
    factor_vae.compute_factor_vae(DATA, IDENTITY, _rs(), kl_function=_kl)
  with pytest.raises(ValueError, match="random_state must be"):
    mig.compute_mig(DATA, IDENTITY, 0)
  with pytest.raises(ValueError, match="lacks"):
    sap.compute_sap(object(), IDENTITY, _rs())
  with pytest.raises(ValueError, match=r"\[num_observations, num_codes\]"):
    mig.compute_mig(DATA, lambda x: x, _rs(), num_train=10)
  with pytest.raises(ValueError, match="active_dims indices"):
    factor_vae.compute_factor_vae(
      DATA, IDENTITY, _rs(), active_dims=np.array([9]), **SMALL_FACTOR_VAE
    )
  with pytest.raises(ValueError, match="num_per_vote must be"):
    factor_vae.compute_factor_vae(DATA, IDENTITY, _rs(), num_per_vote=1)
  with pytest.raises(ValueError, match="at least 2 code dimensions"):
    mig.compute_mig(DATA, lambda x: x[:, 0, 0, :1], _rs(), num_train=50)
  with pytest.raises(ValueError, match="importance"):
    dci.compute_dci(DATA, IDENTITY, _rs(), importance="lasso")


@pytest.mark.parametrize(
  "module",
  [factor_vae, beta_vae, mig, dci, sap, disentanglement],
  ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module):
  result = doctest.testmod(module)
  assert result.attempted >= 1 and result.failed == 0


class _NoisyData(ground_truth.IdentityData):
  """Rendering draws from the random state, like a stochastic renderer."""

  def sample_observations_from_factors(self, factors, random_state):
    clean = super().sample_observations_from_factors(factors, random_state)
    return clean + 0.01 * random_state.random_sample(clean.shape)


def test_rendering_draws_the_random_state_in_chunk_order():
  # Chunks are rendered on a worker thread, one ahead of the codes; the
  # draws must come out as in a serial loop, whatever the chunk size.
  data = _NoisyData()
  kwargs = dict(convention="disentanglement_lib", **SMALL_FACTOR_VAE)
  one_chunk = factor_vae.compute_factor_vae(data, MIXED, _rs(2), **kwargs)
  many = factor_vae.compute_factor_vae(
    data, MIXED, _rs(2), batch_size=7, **kwargs
  )
  assert one_chunk == many
  beta_one = beta_vae.compute_beta_vae(data, MIXED, _rs(2), **SMALL_BETA_VAE)
  beta_many = beta_vae.compute_beta_vae(
    data, MIXED, _rs(2), batch_size=7, **SMALL_BETA_VAE
  )
  assert beta_one == beta_many


# ----------------------------------------------------------------------------
# Single-valued factors (issue 12): dropped with a warning that names them.
# ----------------------------------------------------------------------------

# Factor 1 has one value; identity codes then have a constant dimension.
WITH_CONSTANT = ground_truth.IdentityData((4, 1, 5, 6))


def _score_each_metric(data, rep):
  """Each metric's headline score on ``data``, warnings checked per call."""
  calls = {
    "factor_vae": lambda: factor_vae.compute_factor_vae(
      data, rep, _rs(), **SMALL_FACTOR_VAE
    ),
    "beta_vae": lambda: beta_vae.compute_beta_vae(
      data, rep, _rs(), **SMALL_BETA_VAE
    ),
    "mig": lambda: mig.compute_mig(data, rep, _rs(), num_train=2000),
    "dci": lambda: dci.compute_dci(
      data, rep, _rs(), num_train=200, num_test=100, importance="random_forest"
    ),
    "sap": lambda: sap.compute_sap(
      data, rep, _rs(), num_train=1000, num_test=500, continuous_factors=True
    ),
  }
  scores = {}
  for name, call in calls.items():
    with pytest.warns(
      sampling.ConstantFactorWarning, match=r"Dropping factor 1:"
    ) as record:
      scores[name] = call()
    assert len(record) == 1, name
  return scores


def test_single_valued_factor_is_dropped_by_every_metric():
  scores = _score_each_metric(WITH_CONSTANT, IDENTITY)
  # The constant code dimension is pruned; the other three are perfect.
  assert scores["factor_vae"] == {
    "train_accuracy": 1.0,
    "eval_accuracy": 1.0,
    "num_active_dims": 3.0,
  }
  assert scores["beta_vae"]["eval_accuracy"] > 0.95
  assert scores["mig"]["discrete_mig"] > 0.95  # Was: "increase num_train".
  assert scores["dci"]["disentanglement"] > 0.9  # Was: sklearn's error.
  assert scores["dci"]["informativeness_test"] > 0.9
  assert scores["sap"]["sap_score"] > 0.95  # Was: NaN.


def test_single_valued_factor_discrete_sap_and_names():
  # Binary factors plus a constant one: the ideal code scores 1 - 1/2.
  data = ground_truth.IdentityData((2, 1, 2, 2))
  with pytest.warns(sampling.ConstantFactorWarning, match="factor 1"):
    score = sap.compute_sap(data, IDENTITY, _rs(), num_train=1000)
  assert score["sap_score"] == pytest.approx(0.5, abs=0.05)

  class Named(ground_truth.IdentityData):
    factor_names = ("shape", "colour", "scale", "x")

  with pytest.warns(sampling.ConstantFactorWarning, match="'colour'"):
    mig.compute_mig(Named((3, 1, 4, 5)), IDENTITY, _rs(), num_train=500)


def test_suite_warns_once_for_a_single_valued_factor():
  with pytest.warns(sampling.ConstantFactorWarning) as record:
    scores = _flat_scores(WITH_CONSTANT, IDENTITY, quick=True)
  constant = [
    w for w in record if issubclass(w.category, sampling.ConstantFactorWarning)
  ]
  assert len(constant) == 1
  assert scores["factor_vae/disentanglement_lib/num_active_dims"] == 3.0
  assert scores["factor_vae/paper/eval_accuracy"] == 1.0


def test_every_factor_single_valued_is_refused():
  with pytest.raises(ValueError, match="Every factor has a single value"):
    mig.compute_mig(ground_truth.IdentityData((1, 1)), IDENTITY, _rs())


@dataclasses.dataclass(frozen=True)
class _NeverVaries(ground_truth.IdentityData):
  """Declares several values for factor ``column`` but always samples 0."""

  column: int = 1

  def sample_factors(self, num, random_state):
    factors = super().sample_factors(num, random_state)
    factors[:, self.column] = 0
    return factors


@pytest.mark.parametrize(
  "metric",
  [
    lambda d: mig.compute_mig(d, IDENTITY, _rs(), num_train=500),
    lambda d: dci.compute_dci(
      d, IDENTITY, _rs(), num_train=100, num_test=50, importance="gbt"
    ),
    lambda d: sap.compute_sap(d, IDENTITY, _rs(), num_train=100),
  ],
  ids=["mig", "dci", "sap"],
)
def test_factor_constant_in_the_sample_is_named(metric):
  with pytest.raises(
    ValueError, match=r"factor 1 takes one value in all \d+ .*num_train"
  ):
    metric(_NeverVaries())
  # Named by its index in the data as given, also after a dropped factor.
  data = _NeverVaries((4, 1, 5, 6), column=2)
  with (
    pytest.warns(sampling.ConstantFactorWarning, match="factor 1"),
    pytest.raises(ValueError, match=r"^factor 2 takes one value"),
  ):
    metric(data)


# ----------------------------------------------------------------------------
# Estimator fits: parallel, one thread each, convergence reported once.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("importance", ["gbt", "random_forest"])
def test_parallel_fits_give_the_serial_scores(importance):
  kwargs = dict(num_train=150, num_test=100, importance=importance)
  serial = dci.compute_dci(DATA, MIXED, _rs(1), **kwargs)
  parallel = dci.compute_dci(DATA, MIXED, _rs(1), n_jobs=2, **kwargs)
  assert serial == parallel
  kwargs = dict(num_train=300, num_test=150)
  binary = ground_truth.IdentityData((2, 3, 2))
  rep = ground_truth.MixedRepresentation(binary.factors_num_values)
  sap_serial = sap.compute_sap(binary, rep, _rs(1), **kwargs)
  sap_parallel = sap.compute_sap(binary, rep, _rs(1), n_jobs=2, **kwargs)
  assert sap_serial == sap_parallel


def _two_convergence_warnings(value):
  for i in range(2):
    warnings.warn(
      f"stopped {value}.{i}",
      sklearn.exceptions.ConvergenceWarning,
      stacklevel=2,
    )
  return value * 10


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_convergence_warnings_are_summed_up_once(n_jobs):
  with pytest.warns(sklearn.exceptions.ConvergenceWarning) as record:
    values = sampling.map_fits(
      _two_convergence_warnings, [(1,), (2,), (3,)], n_jobs, what="test fits"
    )
  assert values == [10, 20, 30]
  assert len(record) == 1
  assert str(record[0].message).startswith(
    "test fits: 6 estimator fit(s) stopped at their iteration limit"
  )
  # The example is the same whatever order the threads finished in.
  assert str(record[0].message).endswith("For example: stopped 1.0")


def test_beta_vae_classifier_converges_on_badly_scaled_codes():
  # With sklearn's default 100 L-BFGS iterations this fit stopped short
  # (ConvergenceWarning, train accuracy 0.9967); the codes are perfect.
  scale = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0])
  with warnings.catch_warnings():
    warnings.simplefilter("error", sklearn.exceptions.ConvergenceWarning)
    scores = beta_vae.compute_beta_vae(
      DATA, lambda x: IDENTITY(x) * scale, _rs(), **SMALL_BETA_VAE
    )
  assert scores["train_accuracy"] == 1.0


# ----------------------------------------------------------------------------
# The suite: stages, sizes, times.
# ----------------------------------------------------------------------------


def test_suite_full_sizes_are_the_published_ones():
  sizes = disentanglement.suite_sample_sizes()
  assert sizes["factor_vae/disentanglement_lib"] == dict(
    num_per_vote=64,
    num_train=10_000,
    num_eval=5_000,
    num_variance_estimate=10_000,
  )
  assert sizes["factor_vae/paper"] == dict(
    num_per_vote=100, num_train=800, num_eval=800, num_variance_estimate=10_000
  )
  assert sizes["beta_vae"] == dict(
    num_per_point=64, num_train=10_000, num_eval=5_000
  )
  assert sizes["mig"] == {"num_train": 10_000}
  assert (
    sizes["dci"] == sizes["sap"] == {"num_train": 10_000, "num_test": 5_000}
  )


def test_evaluate_suite_logs_each_stage_and_names_its_sizes(caplog, capsys):
  caplog.set_level("INFO", logger="eval.metrics")
  results = list(
    disentanglement.evaluate_suite(
      DATA, IDENTITY, _rs(), quick=True, dci_importance="random_forest",
      progress=True,
    )
  )  # fmt: skip
  quick = disentanglement.suite_sample_sizes(quick=True)
  assert [r.name for r in results] == list(quick)
  assert all(r.sample_sizes == quick[r.name] for r in results)
  assert all(r.seconds >= 0 for r in results)
  assert {k: v for r in results for k, v in r.scores.items()} == (
    _flat_scores(DATA, IDENTITY, quick=True, dci_importance="random_forest")
  )
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == (
    "metric 1/6: FactorVAE score, disentanglement_lib convention "
    "(num_per_vote=20, num_train=200, num_eval=100, "
    "num_variance_estimate=1000)"
  )
  assert any(line.startswith("metric 6/6: SAP done in") for line in lines)
  # Bars of the images each metric encodes: FactorVAE (quick) 1,000
  # variance images + 300 votes x 20 images; SAP 500 + 250 points.
  err = capsys.readouterr().err
  assert "factor_vae/disentanglement_lib: images" in err and "/7.00k" in err
  assert "sap: images" in err and "/750" in err


def test_evaluate_suite_runs_the_metrics_asked_for_in_its_order():
  # A subset draws from random_state as the full suite would up to each
  # metric it skips: the FactorVAE scores are the suite's first two.
  options = dict(quick=True, dci_importance="random_forest")
  subset = ["factor_vae/paper", "factor_vae/disentanglement_lib", "mig"]
  results = list(
    disentanglement.evaluate_suite(
      DATA, IDENTITY, _rs(), metrics=subset, **options
    )
  )
  assert [r.name for r in results] == [
    "factor_vae/disentanglement_lib",
    "factor_vae/paper",
    "mig",
  ]
  everything = _flat_scores(DATA, IDENTITY, **options)
  for result in results[:2]:
    for key, value in result.scores.items():
      assert value == everything[key], key
  with pytest.raises(ValueError, match="Unknown metrics"):
    next(disentanglement.evaluate_suite(DATA, IDENTITY, _rs(), metrics=["x"]))


def test_tabulate_shows_its_progress(capsys):
  disentanglement.tabulate(
    DATA, IDENTITY, _rs(), batch_size=1000, progress=True
  )
  # The bar ("encoding: ..."), not the log lines another test may have
  # routed to stderr ("encoding all ..." once logging is configured).
  assert "encoding:" in capsys.readouterr().err
  disentanglement.tabulate(DATA, IDENTITY, _rs(), batch_size=1000)
  assert "encoding:" not in capsys.readouterr().err
