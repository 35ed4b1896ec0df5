r"""FactorVAE and AD-FactorVAE on dSprites (paper section 3.4, docs/paper.md).

  python -m train.factorvae --loss=ad              # the paper's AD-FactorVAE
  python -m train.factorvae --loss=tc              # plain FactorVAE
  python -m train.factorvae --loss=beta --beta=4   # beta-VAE baseline

One jitted step updates the VAE (recon + KL + gamma * TC + lambda * L_AD,
the maps from vae_attn.attention.value_and_attention, differentiated
to second order) and the TC discriminator, with one optax.multi_transform
of two Adams. As in Kim & Mnih (2018) the discriminator sees z of the
batch x against permuted z' of a second, independent batch x2:
the pipeline yields 2 * batch_size records per step, split in halves.
With --loss=beta the discriminator is still trained, so that the TC
estimate is logged for every objective. With the default random pair, only
the two maps of the drawn pair are computed (random_pair_ad). Data:
the procedural dSprites (no download) by default, --data=npz
--data-path=dsprites.npz or --data=tfds. The FactorVAE score is
computed at the end (and every --eval-every steps).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import common
from vae_attn import losses, models
from vae_attn.attention import value_and_attention
from vae_attn.data import dsprites, pipeline

_f = common.field


@dataclasses.dataclass(frozen=True)
class Config(common.LoopConfig):
  """FactorVAE / AD-FactorVAE hyperparameters (defaults: the paper's)."""

  # Fields that only change evaluation; a run may resume with other values.
  RUN_FIELDS: ClassVar[frozenset[str]] = frozenset(
    {
      "score",
      "score_convention",
      "score_num_train",
      "score_num_eval",
      "score_num_variance",
    }
  )

  num_steps: int = _f(300_000, "training steps (paper: 3e5)")
  log_every: int = 500
  checkpoint_every: int = 10_000
  loss: str = _f(
    "ad",
    "ad: AD-FactorVAE, tc: FactorVAE, beta: beta-VAE",
    ("ad", "tc", "beta"),
  )
  gamma: float = _f(40.0, "weight of the TC term")
  lambda_ad: float = _f(1.0, "weight of L_AD (--loss=ad)")
  beta: float = _f(1.0, "weight of the KL term (--loss=beta)")
  layer: str = _f("encoder/conv1", "attention layer of L_AD")
  pair_mode: str = _f("random", "L_AD latent pairs", losses.PAIR_MODES)
  latent_dim: int = _f(32, "D, latent elements")
  batch_size: int = _f(64, "global batch (the discriminator gets another)")
  vae_lr: float = 1e-4
  vae_b1: float = 0.9
  vae_b2: float = 0.999
  disc_lr: float = 1e-4
  disc_b1: float = 0.5
  disc_b2: float = 0.9
  data: str = _f("procedural", "dSprites source", ("procedural", "npz", "tfds"))
  data_path: str = _f("", "npz file (--data=npz) or tfds data_dir")
  score: bool = _f(True, "compute the FactorVAE score (end, eval_every)")
  score_convention: str = _f(
    "paper",
    "FactorVAE score convention (eval.metrics.FACTOR_VAE_CONVENTIONS)",
    ("paper", "disentanglement_lib"),
  )
  score_num_train: int = _f(0, "score: training votes (0: the convention's)")
  score_num_eval: int = _f(0, "score: evaluation votes (0: the convention's)")
  score_num_variance: int = _f(0, "score: variance images (0: convention's)")


PRESETS = {
  "dsprites": Config(),
  # The README's CPU run: minutes on 2 cores, small-sample FactorVAE score.
  "quick": Config(
    num_steps=500,
    log_every=50,
    checkpoint_every=250,
    score_num_train=200,
    score_num_eval=200,
    score_num_variance=2000,
  ),
  "smoke": Config(
    num_steps=4,
    batch_size=8,
    log_every=2,
    checkpoint_every=2,
    score_num_train=10,
    score_num_eval=10,
    score_num_variance=100,
  ),
}


def load_data(config: Config):
  """The dSprites source named by ``config.data``."""
  if config.data == "npz":
    if not config.data_path:
      raise ValueError("--data=npz needs --data-path=<dsprites .npz file>.")
    return dsprites.load_npz(config.data_path)
  if config.data == "tfds":
    return dsprites.load_tfds("train", data_dir=config.data_path or None)
  return dsprites.procedural()


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Adam for ``params['vae']`` and Adam for ``params['disc']``, in one."""
  return optax.multi_transform(
    {
      "vae": optax.adam(config.vae_lr, config.vae_b1, config.vae_b2),
      "disc": optax.adam(config.disc_lr, config.disc_b1, config.disc_b2),
    },
    {"vae": "vae", "disc": "disc"},
  )


def create_train_state(
  key: jax.Array,
  config: Config,
  tx: optax.GradientTransformation | None = None,
  model: models.VAE | None = None,
) -> common.TrainState:
  """The VAE and discriminator parameters and their optimiser state.

  Args:
    key: PRNG key of the initialisation.
    config: the run's config.
    tx: the optimiser (default :func:`make_optimizer`).
    model: the VAE (default: built from ``config``). Pass the same ``tx`` and
      ``model`` objects to every call so that the states of several runs have
      one tree structure and share a compiled step.
  """
  if model is None:
    model = models.make_model("factorvae", latent_dim=config.latent_dim)
  k_vae, k_eps, k_disc = jax.random.split(key, 3)
  x = np.zeros((1, 64, 64, 1), np.float32)
  z = np.zeros((1, config.latent_dim), np.float32)
  params = {
    "vae": model.init(k_vae, x, k_eps)["params"],
    "disc": models.Discriminator().init(k_disc, z)["params"],
  }
  return common.TrainState.create(
    apply_fn=model.apply, params=params, tx=tx or make_optimizer(config)
  )


def random_pair_ad(
  encode_fn, layer: str, variables, x, key
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """The posterior and L_AD of one random pair of latents per example.

  Equal to ``losses.attention_disentanglement(maps, key, mode="random")`` on
  the maps of all D latents (the same pair is drawn), but only the two maps
  it uses are computed (``latents=`` of the attention transform: its
  pullback is vmapped over 2 instead of D cotangents), from the same single
  encoder pass that gives ``(mu, logvar)``.

  Returns:
    ``((mu, logvar), l_ad)`` with ``l_ad`` of shape ``[B]`` (eq. 6).
  """
  k1, k2 = jax.random.split(key)
  b = x.shape[0]
  d = jax.eval_shape(encode_fn, variables, x)[0].shape[-1]
  i = jax.random.randint(k1, (b,), 0, d)
  j = (i + jax.random.randint(k2, (b,), 1, d)) % d
  (mu, logvar), maps = value_and_attention(encode_fn, layer)(
    variables, x, latents=jnp.stack([i, j], axis=1)
  )
  l_ad = losses.attention_overlap(maps.per_latent[:, 0], maps.per_latent[:, 1])
  return (mu, logvar), l_ad


def train_step(
  state: common.TrainState,
  batch: common.Batch,
  key: jax.Array,
  *,
  config: Config,
) -> tuple[common.TrainState, common.Metrics]:
  """One update of the VAE and the discriminator (Kim & Mnih, Alg. 2)."""
  model = models.make_model("factorvae", latent_dim=config.latent_dim)
  disc = models.Discriminator()
  encode_fn = functools.partial(model.apply, method=model.encode)
  k_eps, k_eps2, k_ad, k_perm = jax.random.split(
    jax.random.fold_in(key, state.step), 4
  )
  x, x2 = batch["x"], batch["x2"]
  disc_params = state.params["disc"]

  def vae_loss(vae_params):
    variables = {"params": vae_params}
    if config.loss == "ad" and config.pair_mode == "random":
      (mu, logvar), ad = random_pair_ad(
        encode_fn, config.layer, variables, x, k_ad
      )
      ad = ad.mean()
    elif config.loss == "ad":
      (mu, logvar), maps = value_and_attention(encode_fn, config.layer)(
        variables, x
      )
      ad = losses.attention_disentanglement(
        maps.per_latent, k_ad, mode=config.pair_mode
      ).mean()
    else:
      mu, logvar = encode_fn(variables, x)
      ad = 0.0
    z = models.reparameterize(k_eps, mu, logvar)
    logits = model.apply(variables, z, method=model.decode)
    recon = losses.bernoulli_nll(logits, x).mean()
    kl = losses.gaussian_kl(mu, logvar).mean()
    tc = losses.total_correlation(disc.apply({"params": disc_params}, z)).mean()
    if config.loss == "beta":
      loss = recon + config.beta * kl
    else:
      loss = recon + kl + config.gamma * tc + config.lambda_ad * ad
    return loss, (dict(recon=recon, kl=kl, tc=tc, ad=ad), z)

  (loss, (metrics, z)), vae_grads = jax.value_and_grad(vae_loss, has_aux=True)(
    state.params["vae"]
  )
  mu2, logvar2 = encode_fn({"params": state.params["vae"]}, x2)
  z2 = models.reparameterize(k_eps2, mu2, logvar2)
  z_perm = losses.permute_dims(k_perm, jax.lax.stop_gradient(z2))
  z_real = jax.lax.stop_gradient(z)

  def disc_loss(params):
    logits = disc.apply({"params": params}, jnp.concatenate([z_real, z_perm]))
    real, perm = logits[: z.shape[0]], logits[z.shape[0] :]
    acc = 0.5 * ((real.argmax(-1) == 0).mean() + (perm.argmax(-1) == 1).mean())
    return losses.discriminator_loss(real, perm).mean(), acc

  (d_loss, d_acc), disc_grads = jax.value_and_grad(disc_loss, has_aux=True)(
    disc_params
  )
  state = state.apply_gradients(grads={"vae": vae_grads, "disc": disc_grads})
  metrics.update(loss=loss, disc_loss=d_loss, disc_accuracy=d_acc)
  return state, metrics


def factor_vae_score(
  state: common.TrainState, config: Config, source, encode_fn=None
) -> dict:
  """The FactorVAE metric of the posterior means (``eval.metrics``).

  With the ``paper`` convention, latents whose mean KL to the prior is below
  0.05 nats are pruned (Kim & Mnih 2018).

  Args:
    state: the train state.
    config: the run's config.
    source: the dSprites source (its ground-truth interface if it has one).
    encode_fn: jitted ``(variables, x) -> (mu, logvar)`` (default: built).

  Returns:
    ``{"factor_vae_eval_accuracy": ..., "factor_vae_train_accuracy": ...,
    "factor_vae_num_active_dims": ...}``.
  """
  from eval import metrics  # Deferred: eval code is only needed here.

  if encode_fn is None:
    model = models.make_model("factorvae", latent_dim=config.latent_dim)
    encode_fn = jax.jit(functools.partial(model.apply, method=model.encode))
  encode = encode_fn
  variables = {"params": jax.device_get(state.params["vae"])}
  ground_truth = (
    source if hasattr(source, "sample_factors") else (dsprites.procedural())
  )

  def representation_fn(x: np.ndarray) -> np.ndarray:
    return np.asarray(encode(variables, x)[0])

  def kl_fn(x: np.ndarray) -> np.ndarray:
    mu, logvar = (np.asarray(a) for a in encode(variables, x))
    return 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0)

  counts = {
    "num_train": config.score_num_train,
    "num_eval": config.score_num_eval,
    "num_variance_estimate": config.score_num_variance,
  }
  scores = metrics.compute_factor_vae(
    ground_truth,
    representation_fn,
    np.random.RandomState(config.seed),
    convention=config.score_convention,
    kl_function=kl_fn if config.score_convention == "paper" else None,
    **{k: v for k, v in counts.items() if v > 0},
  )
  return {f"factor_vae_{k}": float(v) for k, v in scores.items()}


def make_trainer(config: Config) -> common.Trainer:
  """The FactorVAE trainer for :func:`common.train_and_evaluate`."""
  source = load_data(config)

  def batches(start_step: int, process_index: int, process_count: int):
    local = config.batch_size // process_count
    it = pipeline.batches(
      source,
      2 * local,
      seed=config.seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )
    for b in it:
      yield {"x": b["image"][:local], "x2": b["image"][local:]}

  eval_fn = None
  if config.score:
    model = models.make_model("factorvae", latent_dim=config.latent_dim)
    eval_fn = functools.partial(
      factor_vae_score,
      config=config,
      source=source,
      encode_fn=jax.jit(functools.partial(model.apply, method=model.encode)),
    )
  return common.Trainer(
    create_train_state=functools.partial(
      create_train_state,
      config=config,
      tx=make_optimizer(config),
      model=models.make_model("factorvae", latent_dim=config.latent_dim),
    ),
    train_step=functools.partial(train_step, config=config),
    batches=batches,
    global_batch_size=config.batch_size,
    eval_fn=eval_fn,
  )


def train_and_evaluate(
  config: Config, workdir: str, *, overwrite: bool = False, mesh=None
) -> common.TrainState:
  """Trains (or resumes) a FactorVAE run in ``workdir``; returns the state."""
  return common.train_and_evaluate(
    config, workdir, make_trainer(config), overwrite=overwrite, mesh=mesh
  )


def main(argv: Sequence[str] | None = None) -> int:
  common.initialize_distributed()
  config, workdir, overwrite = common.parse_flags(
    argv,
    Config,
    PRESETS,
    prog="python -m train.factorvae",
    description=__doc__,
    default_preset="dsprites",
  )
  workdir = workdir or f"runs/factorvae_{config.loss}"
  return common.run_main(train_and_evaluate, config, workdir, overwrite)


if __name__ == "__main__":
  sys.exit(main())
