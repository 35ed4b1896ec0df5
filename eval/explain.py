r"""Explains a VAE: per-latent attention maps of a few images (paper Fig. 1).

  python -m eval.explain                                   # demo, no files
  python -m eval.explain --model=resnet18 --image-size=128
  python -m eval.explain --workdir=runs/factorvae_ad --images a.png b.png
  python -m eval.explain --workdir=runs/mvtec_bottle --code=difference

Without --workdir a randomly initialised model of --model is built
(the maps of an untrained encoder only show that the pipeline runs); with it
the trained VAE is restored (eval.restore.load_run). Without
--images a few embedded images are used: procedural dSprites for the
64x64 grey models, textured-defect test images (vae_attn.data.textures)
for the ResNet VAE. Images are resized to the model's input.

Writes to --out (default <workdir>/explain, or explain/):
attention_grid.png (per image: the image, the mean map of eq. 4 and the
first --k per-latent maps of eq. 3, or the k strongest with
--order=response), mean_overlay.png (each image with its mean map)
and maps.npz (the raw maps at layer resolution).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eval import figures, restore
from vae_attn import attention as attention_lib
from vae_attn import models
from vae_attn.data import base, dsprites
from vae_attn.data import images as images_lib


def demo_images(run: restore.Run, num: int, seed: int) -> np.ndarray:
  """``num`` embedded images at the model's input shape ``[N, H, W, C]``.

  Grey models get procedural dSprites (resized to the model input); the
  ResNet VAE gets test images of the offline textured-defect set.
  """
  h, w, c = run.input_shape
  rng = np.random.RandomState(seed)
  if c == 3:
    from vae_attn.data import mvtec, textures

    # The run's own textured-defect set when it was trained on one.
    trained_on_textures = run.config.get("dataset") == "textures"
    config = run.config if trained_on_textures else {}
    root = textures.ensure_dataset(config.get("data_dir") or None)
    category = config.get("category") or textures.CATEGORIES[0]
    source = mvtec.load(root, category, "test", image_size=(h, w))
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    # Defective images first: they are the interesting ones to explain.
    order = np.r_[np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)]
    picked = order[:num]
    return np.stack([source[int(i)]["image"] for i in picked]).astype(
      np.float32
    )
  data = dsprites.procedural()
  x = data.sample_observations(num, rng)
  if (h, w) != x.shape[1:3]:
    x = np.asarray(jax.image.resize(x, (num, h, w, 1), "linear"))
  return x.astype(np.float32)


def read_images(paths: Sequence[str], input_shape) -> np.ndarray:
  """Reads image files resized to ``input_shape`` as float ``[N, H, W, C]``."""
  h, w, c = input_shape
  out = []
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"--images: {path} is not a file; pass paths of PNG or JPEG images."
      )
    out.append(images_lib.read_image(path, channels=c, size=(h, w)))
  return np.stack(out).astype(np.float32) / 255.0


def explain(
  run: restore.Run,
  x: np.ndarray,
  *,
  layer: str | None = None,
  code: str = "mu",
  positive: str = "relu",
  gradient_scale: str | None = None,
  num_samples: int = 8,
  seed: int = 0,
) -> tuple[attention_lib.AttentionMaps, str]:
  """Per-latent attention maps of images ``x`` ``[N, H, W, C]``.

  Args:
    run: a restored (or initialised) VAE.
    x: images at the model's input shape.
    layer: the attention layer (default: the paper's for the architecture).
    code: ``"mu"``, ``"sample"`` or ``"difference"`` (eq. 5; needs the
      latent statistics a one-class trainer saves with its checkpoint).
    positive: ``"relu"`` or ``"abs"``.
    gradient_scale: ``None`` or ``"rms"``.
    num_samples: ``eps`` draws averaged for the sampled codes.
    seed: seeds the draws.

  Returns:
    ``(maps, layer_path)``: the maps at layer resolution
    (``per_latent [N, D, h, w]``, ``mean [N, h, w]``; averaged over the draws
    for sampled codes) and the resolved path.

  Raises:
    ValueError: ``code="difference"`` for a run without latent statistics.
  """
  layer = layer or run.default_layer
  valid = attention_lib.layer_paths(run.encode_fn, run.variables, x)
  path = layer if layer in valid else None
  if path is None:
    matches = [p for p in valid if p.endswith("/" + layer)]
    path = matches[0] if len(matches) == 1 else layer  # attention() explains.
  if code == "difference" and run.latent_stats is None:
    raise ValueError(
      'code="difference" needs the latent statistics of the normal data, '
      "which the one-class trainer (python -m train.oneclass) saves with its "
      "final checkpoint; pass --workdir of such a run, or use --code=mu."
    )
  fn = attention_lib.attention(
    run.encode_fn,
    path,
    code=code,
    positive=positive,
    gradient_scale=gradient_scale,
  )
  x = jnp.asarray(x)
  if code == "mu":
    maps = jax.jit(fn)(run.variables, x)
  else:
    keys = jax.random.split(jax.random.key(seed), num_samples)
    draw = jax.jit(
      lambda k: fn(run.variables, x, key=k, stats=run.latent_stats)
    )
    maps = jax.tree.map(
      lambda *m: jnp.stack(m).mean(0), *[draw(k) for k in keys]
    )
  return jax.device_get(maps), path


def pick_latents(per_latent: np.ndarray, k: int, order: str) -> np.ndarray:
  """Indices ``[N, k]`` of the shown latents: the first ``k`` or the top."""
  n, d = per_latent.shape[:2]
  k = min(k, d)
  if order == "index":
    return np.broadcast_to(np.arange(k), (n, k))
  response = per_latent.reshape(n, d, -1).sum(-1)
  return np.argsort(-response, axis=1, kind="stable")[:, :k]


def attention_figure(
  path: str | os.PathLike,
  x: np.ndarray,
  maps: attention_lib.AttentionMaps,
  *,
  k: int = 8,
  order: str = "index",
  title: str = "",
) -> str:
  """Writes the Fig. 1-style grid: image, mean map, ``k`` per-latent maps.

  Args:
    path: the PNG to write.
    x: the explained images ``[N, H, W, C]``.
    maps: their maps at layer resolution (from :func:`explain`).
    k: per-latent maps shown per image.
    order: ``"index"`` (latents ``0..k-1``) or ``"response"`` (the ``k``
      strongest of each image).
    title: the figure title.

  Returns:
    The path written.
  """
  size = x.shape[1:3]
  per_latent = np.asarray(attention_lib.upsample(maps.per_latent, size))
  mean = np.asarray(attention_lib.upsample(maps.mean, size))
  ids = pick_latents(np.asarray(maps.per_latent), k, order)
  shown = np.take_along_axis(per_latent, ids[:, :, None, None], axis=1)
  return figures.attention_grid(path, x, mean, shown, ids, title=title)


def overlay_figure(
  path: str | os.PathLike,
  x: np.ndarray,
  maps: attention_lib.AttentionMaps,
  *,
  names: Sequence[str] | None = None,
  title: str = "",
) -> str:
  """Writes each image with its mean map (eq. 4) overlaid; returns the path."""
  mean = np.asarray(attention_lib.upsample(maps.mean, x.shape[1:3]))
  return figures.mean_overlays(path, x, mean, names=names, title=title)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m eval.explain",
    description="Per-latent attention maps of a VAE (paper Fig. 1).",
  )
  p.add_argument("--workdir", help="training run to restore (default: none)")
  p.add_argument("--step", type=int, help="checkpoint step (default latest)")
  p.add_argument(
    "--model",
    choices=sorted(models.MODELS),
    default="factorvae",
    help="architecture of the random model without --workdir",
  )
  p.add_argument("--latent-dim", type=int, default=32, help="random model D")
  p.add_argument(
    "--image-size",
    type=int,
    default=None,
    help="resnet18 input side without --workdir (multiple of 64; def. 256)",
  )
  p.add_argument("--images", nargs="+", help="image files to explain")
  p.add_argument("--num-images", type=int, default=4, help="embedded images")
  p.add_argument("--layer", help="attention layer (default: the paper's)")
  p.add_argument(
    "--code",
    choices=("mu", "sample", "difference"),
    default="mu",
    help="difference: eq. 5, needs a one-class run's latent statistics",
  )
  p.add_argument(
    "--num-samples", type=int, default=8, help="draws for sampled codes"
  )
  p.add_argument("--positive", choices=("relu", "abs"), default="relu")
  p.add_argument("--gradient-scale", choices=("none", "rms"), default="none")
  p.add_argument("--k", type=int, default=8, help="per-latent maps shown")
  p.add_argument(
    "--order",
    choices=("index", "response"),
    default="index",
    help="show latents 0..k-1, or the k strongest per image",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="output folder")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if min(args.k, args.num_images, args.num_samples) < 1:
    parser.error("--k, --num-images and --num-samples must be >= 1.")
  start = time.perf_counter()
  missing = [p for p in args.images or [] if not os.path.isfile(p)]
  if missing:
    print(
      f"error: --images: {missing[0]} is not a file; pass paths of PNG or "
      "JPEG images.",
      file=sys.stderr,
    )
    return 2
  try:
    if args.workdir:
      run = restore.load_run(args.workdir, step=args.step)
    else:
      run = restore.init_model(
        args.model,
        latent_dim=args.latent_dim,
        image_size=args.image_size,
        seed=args.seed,
      )
    if args.images:
      x = read_images(args.images, run.input_shape)
      names = [os.path.basename(p) for p in args.images]
    else:
      x = demo_images(run, args.num_images, args.seed)
      names = [f"demo{i}" for i in range(len(x))]
    maps, layer = explain(
      run,
      x,
      layer=args.layer,
      code=args.code,
      positive=args.positive,
      gradient_scale=None if args.gradient_scale == "none" else "rms",
      num_samples=args.num_samples,
      seed=args.seed,
    )
  except (FileNotFoundError, ValueError, base.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = args.out or (
    os.path.join(args.workdir, "explain") if args.workdir else "explain"
  )
  os.makedirs(out, exist_ok=True)
  what = f"{run.name}, {layer}, code={args.code}"
  what += f", step {run.step}" if run.workdir else ", random init"
  grid = attention_figure(
    os.path.join(out, "attention_grid.png"),
    x,
    maps,
    k=args.k,
    order=args.order,
    title=what,
  )
  means = overlay_figure(
    os.path.join(out, "mean_overlay.png"), x, maps, names=names, title=what
  )
  np.savez_compressed(
    os.path.join(out, "maps.npz"),
    per_latent=np.asarray(maps.per_latent),
    mean=np.asarray(maps.mean),
    images=x,
  )
  meta = {
    "model": run.name,
    "workdir": run.workdir,
    "step": run.step,
    "layer": layer,
    "code": args.code,
    "positive": args.positive,
    "gradient_scale": args.gradient_scale,
    "images": names,
    "elapsed_time": time.perf_counter() - start,
  }
  with open(os.path.join(out, "explain.json"), "w") as f:
    json.dump(meta, f, indent=2)
  print(f"Wrote {grid}\nWrote {means}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
