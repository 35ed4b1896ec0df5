r"""One-class VAEs for anomaly localization (paper section 3.3, docs/paper.md).

  python -m train.oneclass                                   # textured set
  python -m train.oneclass --dataset=mnist --normal-digit=3
  python -m train.oneclass --dataset=digits    # offline MNIST stand-in
  python -m train.oneclass --dataset=mvtec --category=bottle --data-dir=DIR
  python -m train.oneclass --dataset=ped1 --data-dir=DIR/UCSD_Anomaly_Dataset
  python -m train.oneclass --dataset=folder --data-dir=DIR --image-size=256

--dataset picks the preset (architecture, optimiser, batch and
augmentation of the paper for that data set) unless --preset is given.
Training minimises the negative ELBO (Bernoulli likelihood of the logits,
KL to N(0, I)) on normal data only. At the end the latent population
statistics of the normal training data (eq. 5; vae_attn.anomaly) are
saved with the final checkpoint as the item "latent_stats". The eval hook
reports the test-split ELBO and the image AUROC of the ELBO as anomaly score.
With no data, the default is the offline textured-defect set (MVTec layout).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import ClassVar

import jax
import numpy as np
import optax

from train import command, loop
from train import data as device_data
from vae_attn import anomaly, losses, models, ops
from vae_attn.data import base, datasets, mvtec, pipeline
from workflow import configs, grid, runs

# Each data set and the architecture its images fit (vae_attn.models).
MODEL_OF = {
  "textures": "resnet18",
  "mvtec": "resnet18",
  "folder": "resnet18",
  "mnist": "mnist",
  "digits": "mnist",
  "ped1": "ped1",
}
DATASETS = tuple(MODEL_OF)
MVTEC_CATEGORIES = mvtec.CATEGORIES


@dataclasses.dataclass(frozen=True)
class Config(loop.LoopConfig):
  """One-class VAE hyperparameters (defaults: the paper's MVTec-AD VAE)."""

  # Evaluation settings: a run resumes with other values.
  FREE_ON_RESUME: ClassVar[frozenset[str]] = loop.LoopConfig.FREE_ON_RESUME | {
    "eval_num_examples",
    "stats_batch_size",
  }
  num_steps: int = configs.field(10_000, "training steps", interval="[1, inf)")
  checkpoint_every: int = configs.field(
    2_000, "save a checkpoint this often", interval="[1, inf)"
  )
  dataset: str = configs.field("textures", "data set (its preset)", DATASETS)
  category: str = configs.field(
    "", "mvtec/textures category (textures: first found)"
  )
  normal_digit: int = configs.field(
    0, "the normal class of mnist/digits", interval="[0, 9]"
  )
  data_dir: str = configs.field(
    "", "data root (mnist: tfds data_dir; textures: cache)", alias="--root"
  )
  mask_dir: str = configs.field(
    "", "folder: masks under data-dir (masks or ground_truth)"
  )
  allow_empty_masks: bool = configs.field(
    False, "keep defect images with empty masks"
  )
  model: str = configs.field(
    "resnet18", "architecture", ("mnist", "ped1", "resnet18")
  )
  image_size: int = configs.field(
    256, "input side (resnet18, mvtec/folder/textures)"
  )
  latent_dim: int = configs.field(32, "D, latent elements", interval="[1, inf)")
  batch_size: int = configs.field(8, "global batch", interval="[1, inf)")
  learning_rate: float = configs.field(
    1e-4, "Adam learning rate", interval="(0, inf)"
  )
  augment: bool = configs.field(
    True, "rotation in [-30, 30] degrees and mirroring"
  )
  eval_num_examples: int = configs.field(
    256, "test images for the eval hook (0: off)", interval="[0, inf)"
  )
  stats_batch_size: int = configs.field(
    64, "batch of the latent statistics pass (eq. 5)", interval="[1, inf)"
  )

  def __post_init__(self):
    super().__post_init__()
    if self.category and self.dataset not in ("mvtec", "textures"):
      raise ValueError(
        f"--category applies to --dataset=mvtec or textures; "
        f"--dataset={self.dataset} has none: drop --category."
      )
    if self.model != MODEL_OF[self.dataset]:
      raise ValueError(
        f"--model={self.model} (given, or the preset's) does not fit "
        f"--dataset={self.dataset} (its "
        f"images need --model={MODEL_OF[self.dataset]}); drop --model and "
        "--preset to take the data set's preset, or pass "
        f"--model={MODEL_OF[self.dataset]}."
      )


_MNIST = dict(
  model="mnist",
  image_size=28,
  learning_rate=1e-3,
  batch_size=128,
  augment=False,
  num_steps=5_000,
  checkpoint_every=1_000,
)
PRESETS = {
  "textures": Config(image_size=128, num_steps=3_000, checkpoint_every=500),
  "mvtec": Config(dataset="mvtec"),  # --category names the category.
  **{
    f"mvtec_{c}": Config(dataset="mvtec", category=c) for c in MVTEC_CATEGORIES
  },
  "folder": Config(dataset="folder"),
  "mnist": Config(dataset="mnist", **_MNIST),
  "digits": Config(dataset="digits", **_MNIST),
  "ped1": Config(
    dataset="ped1",
    model="ped1",
    image_size=100,
    batch_size=32,
    augment=False,
    num_steps=20_000,
  ),
  # Minutes on 2 CPU cores: the offline textured set at 64x64 (measured in
  # the README's one-class chain).
  "quick": Config(
    dataset="textures",
    image_size=64,
    augment=False,
    num_steps=150,
    log_every=25,
    checkpoint_every=150,
    eval_num_examples=24,
  ),
  "smoke": Config(
    dataset="digits",
    model="mnist",
    image_size=28,
    batch_size=8,
    augment=False,
    num_steps=4,
    log_every=2,
    checkpoint_every=2,
    eval_num_examples=32,
    stats_batch_size=256,
  ),
}


def load_data(config: Config, split: str, *, augment: bool = False):
  """The source of ``split`` ("train": normal images only), through the one
  data-set table (``vae_attn.data.datasets.load``)."""
  return datasets.load(
    config.dataset,
    split,
    data_dir=config.data_dir,
    category=config.category,
    image_size=config.image_size,
    normal_digit=config.normal_digit,
    mask_dir=config.mask_dir,
    augment=augment,
    seed=config.seed,
    allow_empty_masks=config.allow_empty_masks,
  )


def _model_kwargs(config: Config) -> dict:
  size = {"image_size": config.image_size} if config.model == "resnet18" else {}
  return {"latent_dim": config.latent_dim, **size}


def make_model(config: Config) -> models.VAE:
  return models.make_model(config.model, **_model_kwargs(config))


def create_train_state(key: jax.Array, config: Config) -> loop.TrainState:
  """Parameters (and BatchNorm statistics) of the VAE and Adam's state."""
  model = make_model(config)
  x = np.zeros((1, *models.input_shape(model)), np.float32)
  k_params, k_eps = jax.random.split(key)
  variables = model.init(k_params, x, k_eps)
  return loop.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=optax.adam(config.learning_rate),
    batch_stats=variables.get("batch_stats", {}),
  )


def _variables(state: loop.TrainState) -> dict:
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


def train_step(state, batch, key, weights, config) -> tuple:
  """One Adam step on the negative ELBO of a batch of normal images.

  Args:
    state: the VAE's parameters, BatchNorm statistics and Adam state.
    batch: ``{"image": float32 [B, H, W, C]}`` in [0, 1].
    key: the run's step key (folded with ``state.step`` here).
    weights: unused (``{}``): a one-class grid varies only the seed.
    config: the run's config (static).

  Returns:
    The new state and ``{"loss", "recon", "kl"}`` (nats per image).
  """
  del weights
  model = make_model(config)
  key = jax.random.fold_in(key, state.step)
  x = batch["image"]
  mutable = ["batch_stats"] if state.batch_stats else False

  def loss_fn(params):
    variables = {**_variables(state), "params": params}
    out = model.apply(variables, x, key, train=True, mutable=mutable)
    (logits, mu, logvar, _), updates = out if mutable else (out, {})
    recon = losses.bernoulli_nll(logits, x).mean()
    kl = losses.gaussian_kl(mu, logvar).mean()
    return recon + kl, (recon, kl, updates.get("batch_stats", {}))

  # On XLA:CPU, exact fast forms of the convolutions and their derivatives
  # (vae_attn.ops; a no-op on other backends).
  loss_fn = ops.fast_convolutions(loss_fn)
  (loss, (recon, kl, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  state = state.apply_gradients(grads=grads, batch_stats=stats)
  return state, {"loss": loss, "recon": recon, "kl": kl}


def _evaluate(state, config, *, elbo_fn, test) -> dict:
  """Test-split negative ELBO and its image AUROC as an anomaly score.

  ``elbo_fn(variables, x) -> (recon, kl)``, each ``[B]`` (jitted
  :func:`_elbo`).
  """
  # Evenly spaced, so that sorted test sets still mix normal and anomalous.
  num = min(config.eval_num_examples, len(test))
  idx = np.linspace(0, len(test) - 1, num).round().astype(np.int64)
  if hasattr(test, "get_batch"):
    batch = test.get_batch(idx)
  else:
    batch = base.stack_records([test[int(i)] for i in idx])
  recon, kl = elbo_fn(_variables(state), batch["image"])
  score = np.asarray(recon + kl)
  out = {"loss": score.mean(), "recon": recon.mean(), "kl": kl.mean()}
  labels = batch.get("anomalous", batch.get("label"))
  if labels is not None and len(np.unique(labels)) == 2:
    import sklearn.metrics  # Deferred: 0.8 s of imports at every start.

    out["image_auroc_elbo"] = sklearn.metrics.roc_auc_score(labels, score)
  return out


def _elbo(variables, x, *, model):
  mu, logvar = model.apply(variables, x, method=model.encode)
  logits = model.apply(variables, mu, method=model.decode)
  return losses.bernoulli_nll(logits, x), losses.gaussian_kl(mu, logvar)


def latent_stats(state, config, *, model, train) -> dict:
  """``vae_attn.anomaly.latent_statistics`` of the un-augmented train set."""
  it = pipeline.single_pass(train, config.stats_batch_size)
  encode_fn = functools.partial(model.apply, method=model.encode)
  stats = anomaly.latent_statistics(encode_fn, _variables(state), it)
  return {"latent_stats": stats._asdict()}


# Data sets small enough to live on the device (their images are drawn
# inside the step); the others are read by the host pipeline.
ON_DEVICE = ("mnist", "digits")


def run_spec(config: Config) -> runs.RunSpec:
  """What evaluation needs to rebuild this run's model and data."""
  return runs.RunSpec(
    trainer="oneclass",
    model=config.model,
    model_kwargs=_model_kwargs(config),
    input_shape=models.input_shape(make_model(config)),
    data=config.dataset,
    data_dir=config.data_dir,
    layer=models.DEFAULT_LAYERS[config.model],
    data_kwargs={
      "category": config.category,
      "normal_digit": config.normal_digit,
      "image_size": config.image_size,
    },
  )


def train_and_evaluate(
  config: Config | Sequence[Config],
  workdir: str,
  *,
  overwrite: bool = False,
  mesh=None,
  report: bool = True,
):
  """Trains (or resumes) a one-class VAE (or a seed grid) in ``workdir``.

  Args:
    config: one config, or a seed grid's (data on the device: mnist, digits
      without augmentation).
    workdir: the run folder (a grid's members go in subfolders).
    overwrite: delete an old run there first.
    mesh: the device mesh (default: every device).
    report: write each run's ``report/`` (figures, ``report.md``) at the end.

  Returns:
    The final state (a list of them for a grid).
  """
  configs_ = [config] if isinstance(config, Config) else list(config)
  head = configs_[0]
  model = make_model(head)
  source = load_data(head, "train", augment=head.augment)
  data, batches = None, None
  if head.dataset in ON_DEVICE and not head.augment:
    arrays, draw = device_data.uniform_rows(device_data.read_all(source))
    data = (arrays, device_data.independent_draws(draw, ("image",)))
  else:

    def batches(start_step, process_index, process_count):
      it = pipeline.batches(
        source,
        head.batch_size // process_count,
        seed=head.seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
      )
      return ({"image": b["image"]} for b in it)

  test = load_data(head, "test")
  evaluate = None
  if head.eval_num_examples:
    elbo_fn = jax.jit(functools.partial(_elbo, model=model))
    evaluate = functools.partial(_evaluate, elbo_fn=elbo_fn, test=test)
  states = loop.train_and_evaluate(
    config,
    workdir,
    create_train_state=create_train_state,
    train_step=train_step,
    batch_size=head.batch_size,
    device_data=data,
    host_batches=batches,
    evaluate=evaluate,
    final_items=functools.partial(
      latent_stats, model=model, train=load_data(head, "train")
    ),
    run_spec=run_spec,
    overwrite=overwrite,
    mesh=mesh,
  )
  if report:
    idx = np.linspace(0, len(test) - 1, 4).round().astype(np.int64)
    images = np.stack([np.asarray(test[int(i)]["image"]) for i in idx])
    command.write_reports(
      workdir,
      configs_,
      states,
      images.astype(np.float32),
      lambda c, s: {
        "model": model,
        "variables": _variables(s),
        "layer": models.DEFAULT_LAYERS[c.model],
      },
    )
  return states


SCORE_NAMES = {
  "eval/image_auroc_elbo": "image AUROC of the ELBO (test split)",
  "eval/loss": "test negative ELBO (nats per image)",
}


def default_workdir(configs: Sequence[Config]) -> str:
  """``runs/oneclass_<dataset>[_<category or digit>]``."""
  config = configs[0]
  name = config.category or (
    str(config.normal_digit) if config.model == "mnist" else ""
  )
  suffix = f"_{name}" if name else ""
  return f"runs/oneclass_{config.dataset}{suffix}"


def next_commands(configs: Sequence[Config], workdir: str) -> list[str]:
  """What to run on the finished run, or a grid's first member: localization
  where the test split has pixel masks, else eq. 5's difference attention."""
  run = grid.member_dirs(workdir, configs)[0]
  if configs[0].dataset in ("mnist", "digits"):
    return [
      f"python -m eval.explain --workdir={run} --code=difference  # this "
      "data set has no pixel masks for eval.localization"
    ]
  return [f"python -m eval.localization --workdir={run}"]


def main(argv: Sequence[str] | None = None) -> int:
  return command.main(
    argv,
    Config,
    PRESETS,
    train_and_evaluate,
    prog="python -m train.oneclass",
    description=__doc__,
    default_preset="textures",
    preset_field="dataset",
    default_workdir=default_workdir,
    score_names=SCORE_NAMES,
    next_commands=next_commands,
  )


if __name__ == "__main__":
  sys.exit(main())
