r"""Explains a VAE: per-latent attention maps of a few images (paper Fig. 1).

  python -m eval.explain                                   # random model
  python -m eval.explain --model=resnet18 --image-size=128
  python -m eval.explain --workdir=runs/factorvae_ad --images a.png b.png
  python -m eval.explain --workdir=runs/oneclass_textures --code=difference

Without --workdir a randomly initialised model of --model is built (the
maps of an untrained encoder only show that the pipeline runs); with it the
trained VAE is restored (eval.restore.load_run). Without --images a few
test images of the run's own data are shown (its spec.json: dSprites,
digits or MNIST, the textured-defect set, MVTec-AD...; defective images
first); a random model gets procedural dSprites (FactorVAE), offline digits
(MNIST VAE) or textured-defect images (ResNet, Ped1). Images are resized and
converted (grey or RGB) to the model's input; the figures say so for each
file that was.

Writes to --out (default <workdir>/explain, or runs/explain/<model>_random
without --workdir): attention_grid.png (per image: the image, the mean map
of eq. 4 and the first --k per-latent maps of eq. 3, "z3" of "8 of 32
latents", or the k strongest with --order=response; one colour scale for the
figure, stated under it, --scale=image or map for one per image or per map;
all-zero maps hatched with a 0 badge; file names on the rows),
mean_overlay.png (each image with its mean map), maps.npz (the raw maps at
layer resolution) and explain.json. docs/evaluation.md explains why normal
images can look "hot" when each map is scaled on its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from eval import cli, demo_data, restore
from vae_attn import anomaly, models
from vae_attn import attention as attention_lib
from vae_attn.data import images as images_lib
from workflow import configs, figures

attention_figure = figures.attention_figure  # The notebooks' name.


def read_images(
  paths: Sequence[str], input_shape
) -> tuple[np.ndarray, list[str]]:
  """Reads image files at the model's input shape.

  Returns:
    ``(x, notes)``: float ``[N, H, W, C]`` in ``[0, 1]``, and one note per
    file that was resized or converted (``"a.png: 300x200 RGB, shown as
    64x64 grey"``), for the figures.
  """
  h, w, c = input_shape
  out, notes = [], []
  for path in paths:
    out.append(images_lib.read_image(path, channels=c, size=(h, w)))
    with PIL.Image.open(path) as im:
      grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
    height, width = images_lib.image_size_of(path)
    if (height, width) != (h, w) or grey != (c == 1):
      notes.append(
        f"{os.path.basename(path)}: {width}x{height} "
        f"{'grey' if grey else 'RGB'}, shown as {w}x{h} "
        f"{'grey' if c == 1 else 'RGB'} (the model's input)"
      )
  return np.stack(out).astype(np.float32) / 255.0, notes


def maps_fn(
  run: restore.Run,
  layer: str,
  *,
  code: str = "mu",
  num_samples: int = 8,
  **attention_kwargs,
):
  """``fn(variables, x, stats, key) -> AttentionMaps`` for :func:`explain`.

  Every array is an argument of ``fn`` (nothing large is captured), so
  ``jax.jit(fn)`` compiles the parameters and images as inputs instead of
  constant-folding them. Sampled codes (``"sample"``, ``"difference"``:
  eq. 5) average ``num_samples`` draws (``vae_attn.anomaly.mean_over_draws``).
  """
  encode_fn = run.encode_fn
  if code == "mu":
    fn = attention_lib.attention(encode_fn, layer, **attention_kwargs)
    return lambda variables, x, stats, key: fn(variables, x)

  def sampled(variables, x, stats, key):
    return anomaly.mean_over_draws(
      encode_fn, layer, variables, x, key,
      code=code, stats=stats if code == "difference" else None,
      num_samples=num_samples, **attention_kwargs,
    )  # fmt: skip

  return sampled


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
    layer: the attention layer, a path or unique suffix (default: the
      run's).
    code: ``"mu"``, ``"sample"`` or ``"difference"`` (eq. 5, through
      ``vae_attn.anomaly.difference_attention``; needs the latent statistics
      a one-class trainer saves with its checkpoint).
    positive: ``"relu"`` or ``"abs"``.
    gradient_scale: ``None`` or ``"rms"``.
    num_samples: ``eps`` draws averaged for the sampled codes.
    seed: seeds the draws.

  Returns:
    ``(maps, layer_path)``: the maps at layer resolution
    (``per_latent [N, D, h, w]``, ``mean [N, h, w]``; averaged over the draws
    for sampled codes) and the resolved path.

  Raises:
    ValueError: an unknown layer (the valid ones are listed), or
      ``code="difference"`` for a run without latent statistics.
  """
  x = jnp.asarray(x)
  layer = layer or run.default_layer
  path = attention_lib.resolve_layers(run.encode_fn, run.variables, x, layer)
  path = path[layer]
  if code == "difference" and run.latent_stats is None:
    raise ValueError(
      'code="difference" needs the latent statistics of the normal data, '
      "which the one-class trainer (python -m train.oneclass) saves with its "
      "final checkpoint; pass --workdir of such a run, or use --code=mu."
    )
  fn = maps_fn(
    run,
    path,
    code=code,
    num_samples=num_samples,
    positive=positive,
    gradient_scale=gradient_scale,
  )
  maps = jax.jit(fn)(run.variables, x, run.latent_stats, jax.random.key(seed))
  return jax.device_get(maps), path


@dataclasses.dataclass(frozen=True)
class Config:
  """What python -m eval.explain explains and where it writes."""

  workdir: str | None = configs.field(
    None, "training run to restore (default: a random model)"
  )
  step: int | None = configs.field(
    None, "checkpoint step (default: the newest good one)"
  )
  model: str = configs.field(
    "factorvae",
    "architecture of the random model without --workdir",
    sorted(models.MODELS),
  )
  latent_dim: int = configs.field(32, "D of the random model")
  image_size: int | None = configs.field(
    None,
    "input side of the random resnet18 model, a multiple of 64 (default: 256)",
  )
  images: list[str] | None = configs.field(
    None, "image files to explain (default: test images of the run's data)"
  )
  num_images: int = configs.field(
    4, "test images without --images", interval="[1, inf)"
  )
  layer: str | None = configs.field(
    None, "attention layer, a path or unique suffix (default: the run's)"
  )
  code: str = configs.field(
    "mu",
    "the code explained; difference: eq. 5, needs a one-class run's latent "
    "statistics",
    ("mu", "sample", "difference"),
  )
  num_samples: int = configs.field(
    8, "draws averaged for --code=sample or difference", interval="[1, inf)"
  )
  positive: str = cli.positive_field()
  gradient_scale: str = configs.field(
    "none",
    "rms: divide each gradient by its root mean square before pooling, as "
    "the official code does",
    ("none", "rms"),
  )
  k: int | None = configs.field(
    None,
    "per-latent maps shown (default: 8, or every latent of a smaller model)",
    interval="[1, inf)",
  )
  order: str = configs.field(
    "index",
    "show latents 0..k-1, or the k strongest per image",
    ("index", "response"),
  )
  scale: str = configs.field(
    "figure",
    "colour scale of the maps: one for the whole figure (near-zero maps "
    "look cold), one per image, or one per map (each map's own range)",
    figures.SCALES,
  )
  seed: int = configs.field(
    0,
    "seed of the random model, the demo images and the draws",
    interval=configs.SEEDS,
  )
  out: str | None = configs.field(
    None,
    "output folder (default: <workdir>/explain, or "
    "runs/explain/<model>_random without --workdir)",
  )

  def __post_init__(self):
    if self.images is not None and not self.images:
      raise ValueError("--images: name at least one image file.")


def _load(config: Config):
  """The run and the images to explain: ``(run, x, names, source)``."""
  missing = [p for p in config.images or () if not os.path.isfile(p)]
  if missing:  # Before the (slow) model.
    raise FileNotFoundError(
      f"--images: {missing[0]} is not a file; pass paths of PNG or JPEG images."
    )
  if config.workdir:
    cli.stage(f"restoring {config.workdir}")
    run = restore.load_run(config.workdir, step=config.step)
  else:
    cli.stage(f"initialising a random {config.model} VAE")
    run = restore.init_model(
      config.model,
      latent_dim=config.latent_dim,
      image_size=config.image_size,
      seed=config.seed,
    )
  if config.images is not None:
    x, notes = read_images(config.images, run.input_shape)
    names = [os.path.basename(p) for p in config.images]
    return run, x, names, "files", notes
  x, names, data = demo_data.demo_images(run, config.num_images, config.seed)
  cli.stage(f"{len(x)} test images of {data}")
  return run, x, [str(n) for n in names], data, []


def _run(config: Config) -> int:
  start = time.perf_counter()
  run, x, names, source, notes = _load(config)
  k = min(8, run.latent_dim) if config.k is None else config.k
  if k > run.latent_dim:
    raise ValueError(
      f"--k={config.k} is more than the model's {run.latent_dim} latents; "
      f"pass --k={run.latent_dim} or less."
    )
  out = config.out or (
    os.path.join(config.workdir, "explain")
    if config.workdir
    else os.path.join("runs", "explain", f"{run.name}_random")
  )
  out = cli.make_out_dir(out)
  cli.stage(
    f"compiling and computing the {config.code} maps of {len(x)} images"
  )
  maps, layer = explain(
    run,
    x,
    layer=config.layer,
    code=config.code,
    positive=config.positive,
    gradient_scale=None if config.gradient_scale == "none" else "rms",
    num_samples=config.num_samples,
    seed=config.seed,
  )
  what = f"{run.name}, {layer}, code={config.code}"
  what += f", step {run.step}" if run.workdir else ", random init"
  cli.stage(f"writing figures to {out}")
  written = [
    figures.attention_figure(
      os.path.join(out, name),
      x,
      maps,
      k=k_shown,
      order=config.order,
      title=what,
      scale=config.scale,
      names=names,
      notes=notes,
    )
    for name, k_shown in (("attention_grid.png", k), ("mean_overlay.png", 0))
  ]
  np.savez_compressed(
    os.path.join(out, "maps.npz"),
    per_latent=np.asarray(maps.per_latent),
    mean=np.asarray(maps.mean),
    images=x,
  )
  zero = figures.is_zero(np.asarray(maps.per_latent))
  meta = {
    "model": run.name,
    "workdir": run.workdir,
    "step": run.step,
    "layer": layer,
    "code": config.code,
    "positive": config.positive,
    "gradient_scale": config.gradient_scale,
    "scale": config.scale,
    "images": names,
    "images_from": source,
    "input_notes": notes,
    "all_zero_maps_per_image": zero.sum(axis=1).tolist(),
    "elapsed_time": time.perf_counter() - start,
  }
  with open(os.path.join(out, "explain.json"), "w") as f:
    json.dump(meta, f, indent=2)
  cli.stage(f"wrote {written[0]} and {written[1]}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.explain", description=__doc__
  )
  return cli.run_main(_run, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
