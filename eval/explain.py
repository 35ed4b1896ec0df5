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

from eval import cli, restore
from eval import localization as data_lib
from vae_attn import anomaly, models
from vae_attn import attention as attention_lib
from vae_attn.data import digits, dsprites, mnist
from vae_attn.data import images as images_lib
from workflow import configs, figures


def read_images(
  paths: Sequence[str], input_shape
) -> tuple[np.ndarray, list[str]]:
  """``(x, notes)``: image files as float ``[N, H, W, C]`` in ``[0, 1]`` at
  the model's input shape, and a note per file that was resized or
  converted (``"a.png: 300x200 RGB, shown as 64x64 grey"``)."""
  h, w, c = input_shape
  out, notes = [], []
  for path in paths:
    out.append(images_lib.read_image(path, channels=c, size=(h, w)))
    with PIL.Image.open(path) as im:
      grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
    height, width = images_lib.image_size_of(path)  # Upright (EXIF).
    if (height, width) != (h, w) or grey != (c == 1):
      notes.append(
        f"{os.path.basename(path)}: {width}x{height} "
        f"{'grey' if grey else 'RGB'}, shown as {w}x{h} "
        f"{'grey' if c == 1 else 'RGB'} (the model's input)"
      )
  return np.stack(out).astype(np.float32) / 255.0, notes


# The demo data of a random model (no run spec), by architecture.
DEMO_DATA = {
  "factorvae": "procedural",
  "mnist": "digits",
  "resnet18": "textures",
  "ped1": "textures",
}


def _demo_records(run: restore.Run, data: str, num: int, seed: int):
  """``(images, names)``: dSprites draws, one test image per digit (the
  normal digit first), or defective images first, a defect type in turn."""
  spec = run.spec
  data_dir = (spec.data_dir if spec is not None else "") or None
  rng = np.random.RandomState(seed)
  if data in ("procedural", "npz"):
    gt = dsprites.load_npz(data_dir) if data == "npz" else dsprites.procedural()
    x = gt.sample_observations(num, rng)
    return x, [f"dSprites {i}" for i in range(len(x))]
  if data == "tfds":
    source = dsprites.load_tfds(data_dir=data_dir)
    idx = rng.choice(len(source), size=min(num, len(source)), replace=False)
    x = np.stack([source[int(i)]["image"] for i in idx])
    return x, [f"dSprites {int(i)}" for i in idx]
  if data in ("digits", "mnist"):
    digit = dict(spec.data_kwargs).get("normal_digit") if spec else None
    if data == "digits":
      source = digits.load("test", normal_digit=digit)
    else:
      source = mnist.load("test", normal_digit=digit, data_dir=data_dir)
    labels = np.asarray(source.get_batch(np.arange(len(source)))["label"])
    first = int(digit) if digit is not None else 0
    order = [(first + d) % 10 for d in range(10)]
    idx = [int(np.flatnonzero(labels == d)[0]) for d in order if d in labels]
    x = np.asarray(source.get_batch(np.asarray(idx[:num]))["image"])
    return x, [f"digit {int(labels[i])}" for i in idx[:num]]
  test, _, _ = data_lib.load_splits(spec, run.input_shape[:2], dataset=data)
  records = [test[i] for i in range(len(test))]
  # Anomalous images without a defect type count as normal ones.
  kinds = [str(r.get("defect_type", "")) if r["label"] else "" for r in records]
  defective = [i for i, kind in enumerate(kinds) if kind]
  types = [kinds[i] for i in defective]
  picked = [defective[i] for i in data_lib.in_turn(types, num)]
  picked += [i for i, kind in enumerate(kinds) if not kind][: num - len(picked)]
  names = [str(records[i].get("defect_type", "")) or "image" for i in picked]
  return np.stack([records[i]["image"] for i in picked]), names


def demo_images(
  run: restore.Run, num: int, seed: int
) -> tuple[np.ndarray, list[str], str]:
  """``(x, names, data)``: ``num`` test images of the run's own data (its
  spec; a random model: :data:`DEMO_DATA`), float32 ``[N, H, W, C]`` in
  [0, 1] at its input shape, a caption each, and the data set's name.

  Raises:
    vae_attn.data.DataError: the run's data cannot be read.
  """
  h, w, c = run.input_shape
  data = run.spec.data if run.spec is not None else DEMO_DATA[run.name]
  x, names = _demo_records(run, data, num, seed)
  x = data_lib.to_channels(np.asarray(x, np.float32), c)
  if x.shape[1:3] != (h, w):
    x = np.asarray(jax.image.resize(x, (len(x), h, w, c), "linear"))
  return x.astype(np.float32), names, data


def maps_fn(
  run: restore.Run,
  layer: str,
  *,
  code: str = "mu",
  num_samples: int = 8,
  **attention_kwargs,
):
  """``fn(variables, x, stats, key) -> AttentionMaps`` for :func:`explain`;
  every array is an argument (nothing large is constant-folded). Sampled
  codes average ``num_samples`` draws (``vae_attn.anomaly.mean_over_draws``).
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

  ``layer``: a path or unique suffix (default: the run's). ``code``:
  ``"mu"``, ``"sample"`` or ``"difference"`` (eq. 5; needs the latent
  statistics a one-class trainer saves), sampled codes averaged over
  ``num_samples`` draws seeded by ``seed``.

  Returns:
    ``(maps, layer_path)``: ``per_latent [N, D, h, w]`` and ``mean [N, h,
    w]`` at layer resolution, and the resolved path.

  Raises:
    ValueError: an unknown layer (the valid ones are listed), or
      ``code="difference"`` for a run without latent statistics.
  """
  x = jnp.asarray(x)
  layer = layer or run.default_layer
  paths = attention_lib.resolve_layers(run.encode_fn, run.variables, x, layer)
  path = paths[layer]
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
class Config(cli.SavedRun):
  """What python -m eval.explain explains and where it writes."""

  workdir: str | None = configs.field(
    None, "training run to restore (default: a random model)"
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
    "rms: divide each image's gradient by its root mean square before "
    "pooling (the official code divides by one over the batch)",
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
  x, names, data = demo_images(run, config.num_images, config.seed)
  cli.stage(f"{len(x)} test images of {data}")
  return run, x, [str(n) for n in names], data, []


def _run(config: Config) -> int:
  start = time.perf_counter()
  run, x, names, source, notes = _load(config)
  for note in notes:  # Also in the figure's footer and explain.json.
    cli.stage(f"resized: {note}")
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
  flags = {k: getattr(config, k) for k in "layer code positive seed".split()}
  scale = None if config.gradient_scale == "none" else "rms"
  maps, layer = explain(
    run, x, gradient_scale=scale, num_samples=config.num_samples, **flags
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
    **{k: getattr(config, k) for k in ("code", "positive", "gradient_scale")},
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
