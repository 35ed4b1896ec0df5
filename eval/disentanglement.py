r"""Disentanglement of a FactorVAE / AD-FactorVAE / beta-VAE (paper Table 3).

  python -m eval.disentanglement --workdir=runs/factorvae_ad
  python -m eval.disentanglement --workdir=runs/factorvae_tc --quick
  python -m eval.disentanglement --workdir=runs/ad --data=npz \
      --data-path=dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz --tabulate

Restores the VAE of --workdir (eval.restore.load_run) and scores its
posterior means on dSprites with every metric of eval.metrics
(compute_all): the FactorVAE metric in two conventions (the
"disentanglement_lib" one and the "paper" one of Kim & Mnih, whose
collapsed-dimension pruning uses the per-dimension KL to the prior), the
beta-VAE metric, MIG, DCI and SAP. The driver owns the I/O (as in
disentanglement_lib's evaluate.py): it builds the representation and KL
functions, runs the metrics, adds elapsed_time and writes the results.

Data default to the training config's ("data", "data_path"): the
procedural dSprites renderer needs no file. --quick uses small sample
sizes (CPU smoke runs; not comparable with the paper). --tabulate
encodes all 737,280 images once and looks codes up (exact and fast when the
metrics draw many images).

Writes into --out (default <workdir>/eval/disentanglement):
results.json (flat "scores" plus the conventions used),
report.md, attention.png (Fig. 8 style: inputs and the attention
maps of their two highest-responding latents) and traversals.png
(decoded latent traversals of the most informative latents, by KL).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval import cli, figures, inference, metrics, restore
from vae_attn import attention as attention_lib
from vae_attn import losses
from vae_attn.data import dsprites

DATA = ("procedural", "npz")

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


def load_data(args: argparse.Namespace, config: Mapping[str, Any]):
  """The dSprites ground-truth data: flags, else the training config."""
  kind = args.data or config.get("data") or "procedural"
  path = args.data_path or config.get("data_path") or ""
  if kind not in DATA:
    raise ValueError(
      f"--data={kind} has no ground-truth factor interface; pass "
      "--data=procedural (no file) or --data=npz --data-path=<dsprites npz>."
    )
  if kind == "npz":
    if not path:
      raise ValueError("--data=npz needs --data-path=<dsprites .npz file>.")
    return dsprites.load_npz(path), kind
  return dsprites.procedural(), kind


def representation_function(run: restore.Run, batch_size: int = 64):
  """NumPy observations ``[N, H, W, C]`` -> ``[N, 2 D]``: mu, then KL.

  The first ``D`` columns are the posterior means, the last ``D`` the
  per-dimension ``KL(q(z_d|x) || N(0, 1))`` that the paper convention prunes
  collapsed dimensions with; one encoder pass gives both. Micro-batches are
  dealt over all local devices (``eval.inference.batched``).
  """
  channels = run.input_shape[-1]

  def encode(variables, x):
    mu, logvar = run.encode_fn(variables, x)
    kl = 0.5 * (mu**2 + jnp.exp(logvar) - logvar - 1.0)
    return jnp.concatenate([mu, kl], axis=1)

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


def score(
  mu_and_kl,
  latent_dim: int,
  data,
  *,
  seed: int,
  quick: bool,
  tabulate: bool,
  dci_importance: str = "gbt",
) -> dict[str, float]:
  """``metrics.compute_all`` of the posterior means (and KL for pruning).

  ``mu_and_kl`` is a :func:`representation_function`.
  """
  d = latent_dim
  random_state = np.random.RandomState(seed)
  if tabulate:
    data, mu_and_kl = metrics.tabulate(data, mu_and_kl, random_state)
  scores = metrics.compute_all(
    data,
    lambda obs: mu_and_kl(obs)[:, :d],
    random_state,
    kl_function=lambda obs: mu_and_kl(obs)[:, d:],
    quick=quick,
    dci_importance=dci_importance,
  )
  return {k: float(v) for k, v in scores.items()}


def top_latent_figure(
  run: restore.Run,
  x: np.ndarray,
  layer: str,
  path: str,
  title: str,
) -> dict:
  """Fig. 8: the maps of each input's two highest-responding latents.

  "Highest-responding" is the total mass of a latent's map, the rule of
  ``L_AD``'s ``top2`` pair mode.
  """
  fn = attention_lib.attention(run.encode_fn, layer)
  maps = jax.device_get(jax.jit(fn)(run.variables, jnp.asarray(x)))
  per_latent = np.asarray(maps.per_latent)
  n, d = per_latent.shape[:2]
  response = per_latent.reshape(n, d, -1).sum(-1)
  top = np.argsort(-response, axis=1, kind="stable")[:, :2]
  shown = np.take_along_axis(per_latent, top[:, :, None, None], axis=1)
  shown = np.asarray(attention_lib.upsample(jnp.asarray(shown), x.shape[1:3]))
  overlap = losses.attention_disentanglement(
    jnp.asarray(per_latent), jax.random.key(0), mode="top2"
  )
  figures.top_latent_maps(path, x, shown, top, title=title)
  return {
    "layer": layer,
    "top_latents": top.tolist(),
    "top2_overlap_l_ad": [float(v) for v in np.asarray(overlap)],
  }


def traversal_figure(
  run: restore.Run,
  x: np.ndarray,
  kl: np.ndarray,
  path: str,
  *,
  num_latents: int,
  limit: float,
  steps: int,
  title: str,
) -> dict:
  """Decodes ``mu(x)`` with one latent swept over ``[-limit, limit]``.

  The rows are the ``num_latents`` latents of largest mean KL (the
  informative ones first); ``x`` is one image ``[1, H, W, C]``.
  """
  mu, _ = jax.jit(run.encode_fn)(run.variables, jnp.asarray(x))
  order = np.argsort(-kl, kind="stable")[:num_latents]
  values = np.linspace(-limit, limit, steps, dtype=np.float32)
  z = np.repeat(np.asarray(mu), len(order) * steps, axis=0)
  z = z.reshape(len(order), steps, -1)
  z[
    np.arange(len(order))[:, None], np.arange(steps)[None, :], order[:, None]
  ] = values[None, :]
  # One jitted decode: the traversals, then the reconstruction of mu.
  decode = jax.jit(
    lambda variables, z: jax.nn.sigmoid(
      run.model.apply(variables, z, method=run.model.decode)
    )
  )
  images = np.asarray(
    decode(run.variables, jnp.concatenate([z.reshape(-1, z.shape[-1]), mu]))
  )
  decoded = images[:-1].reshape(len(order), steps, *run.input_shape)
  recon = images[-1:]
  figures.traversals(
    path,
    decoded,
    order,
    values,
    reference=[x[0], np.asarray(recon)[0]],
    reference_labels=["input", "reconstruction"],
    row_labels=[f"KL {kl[i]:.2f}" for i in order],
    title=title,
  )
  return {"latents": order.tolist(), "values": values.tolist()}


def _fmt(value: float | None, key: str = "") -> str:
  if value is None or not math.isfinite(value):
    return "-"
  if "/num_" in key:  # A count, e.g. num_active_dims.
    return str(int(value))
  return f"{value:.3f}"


def write_report(path: str, results: Mapping[str, Any]) -> str:
  """``report.md``: every score with its convention."""
  meta, scores = results["meta"], results["scores"]
  lines = [
    f"# Disentanglement: {meta['objective']}",
    "",
    f"Model `{meta['model']}` (D = {meta['latent_dim']}) from "
    f"`{meta['workdir']}`, step {meta['step']}; data: {meta['data']} "
    f"dSprites; metric seed {meta['seed']}; DCI importance "
    f"{meta['dci_importance']}; "
    + (
      "**quick sample sizes** (smoke run, not comparable with the paper)."
      if meta["quick"]
      else "published sample sizes."
    ),
    "",
    "| score | value | convention |",
    "|---|---|---|",
  ]
  for key, what in SCORES:
    lines.append(f"| `{key}` | {_fmt(scores.get(key))} | {what} |")
  for key in sorted(scores):
    if key not in dict(SCORES):
      lines.append(f"| `{key}` | {_fmt(scores[key], key)} | |")
  lines += [
    "",
    "Conventions of the FactorVAE metric"
    + (
      " (published sizes; `--quick` replaced them with 20 images per vote, "
      "200 train / 100 eval votes and 1,000 variance images):"
      if meta["quick"]
      else ":"
    ),
    "",
  ]
  for name, conv in results["conventions"].items():
    fields = ", ".join(f"{k}={v}" for k, v in conv.items())
    lines.append(f"- `{name}`: {fields}")
  lines += [
    "",
    "Paper (FactorVAE metric, Table 3): "
    + "; ".join(f"{k}: {v}" for k, v in PAPER.items())
    + ". A single run is not a result: train several seeds and run "
    "`python -m eval.aggregate` for the mean and spread.",
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
    f"Elapsed: {results['elapsed_time']:.1f} s.",
    "",
  ]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _objective(config: Mapping[str, Any]) -> str:
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


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m eval.disentanglement",
    description="Disentanglement scores and figures of a dSprites VAE.",
  )
  p.add_argument("--workdir", required=True, help="FactorVAE training run")
  p.add_argument("--step", type=int, help="checkpoint step (default latest)")
  p.add_argument("--data", choices=DATA, help="default: the config's")
  p.add_argument("--data-path", help="dSprites .npz for --data=npz")
  p.add_argument("--seed", type=int, default=0, help="metric random state")
  p.add_argument(
    "--quick", action="store_true", help="small sample sizes (smoke runs)"
  )
  p.add_argument(
    "--tabulate",
    action="store_true",
    help="encode all 737,280 images once, then look codes up",
  )
  p.add_argument(
    "--dci-importance",
    choices=("gbt", "random_forest"),
    default=None,
    help="DCI importance model (gbt: published, the default; random_forest: "
    "faster, the default with --quick)",
  )
  p.add_argument("--layer", help="attention layer (default: the config's)")
  p.add_argument("--num-images", type=int, default=6, help="Fig. 8 inputs")
  p.add_argument("--num-traversals", type=int, default=10)
  p.add_argument("--traversal-range", type=float, default=2.5)
  p.add_argument("--traversal-steps", type=int, default=9)
  p.add_argument("--out", help="default <workdir>/eval/disentanglement")
  p.add_argument(
    "--cpu-devices",
    type=int,
    help="split the CPU into this many JAX devices to encode on all cores "
    "(default: 2 per core when this command starts JAX itself; 0: JAX's "
    "default of one)",
  )
  return p


def evaluate(args: argparse.Namespace) -> dict:
  """Runs everything for parsed flags; returns the results dict."""
  start = time.perf_counter()
  if args.dci_importance is None:
    args.dci_importance = "random_forest" if args.quick else "gbt"
  run = restore.load_run(args.workdir, step=args.step)
  data, kind = load_data(args, run.config)
  mu_and_kl = representation_function(run)  # Compiled once, used twice.
  scores = score(
    mu_and_kl,
    run.latent_dim,
    data,
    seed=args.seed,
    quick=args.quick,
    tabulate=args.tabulate,
    dci_importance=args.dci_importance,
  )
  out = args.out or os.path.join(args.workdir, "eval", "disentanglement")
  os.makedirs(out, exist_ok=True)
  rng = np.random.RandomState(args.seed)
  x = np.asarray(data.sample_observations(args.num_images, rng), np.float32)
  sample = data.sample_observations(512, rng)
  kl = mu_and_kl(sample)[:, run.latent_dim :]
  objective = _objective(run.config)
  layer = args.layer or run.config.get("layer") or run.default_layer
  figs = {
    "attention": top_latent_figure(
      run,
      x,
      layer,
      os.path.join(out, "attention.png"),
      f"{objective}: two highest-responding latents",
    ),
    "traversals": traversal_figure(
      run,
      x[:1],
      kl.mean(axis=0),
      os.path.join(out, "traversals.png"),
      num_latents=min(args.num_traversals, run.latent_dim),
      limit=args.traversal_range,
      steps=args.traversal_steps,
      title=f"{objective}: latent traversals",
    ),
  }
  results = {
    "meta": {
      "workdir": os.path.abspath(args.workdir),
      "step": run.step,
      "model": run.name,
      "latent_dim": run.latent_dim,
      "objective": objective,
      "config": run.config,
      "data": kind,
      "seed": args.seed,
      "quick": args.quick,
      "tabulate": args.tabulate,
      "dci_importance": args.dci_importance,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    },
    "scores": scores,
    "conventions": {
      name: dataclasses.asdict(conv)
      for name, conv in metrics.FACTOR_VAE_CONVENTIONS.items()
    },
    "figures": figs,
    "active_dims_by_kl": int((kl.mean(axis=0) > 0.05).sum()),
  }
  return cli.save_results(out, results, write_report, start)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.num_images < 1 or args.traversal_steps < 2:
    parser.error("--num-images must be >= 1 and --traversal-steps >= 2.")
  if args.cpu_devices is None:
    cli.use_all_cpu_cores()
  elif args.cpu_devices > 0:
    inference.use_cpu_devices(args.cpu_devices)
  return cli.run_report(evaluate, args)


if __name__ == "__main__":
  sys.exit(main())
