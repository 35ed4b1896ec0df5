"""Command-line flags generated from a trainer's frozen config dataclass.

``--preset=NAME`` picks a base config, every field gets a ``--field-name``
flag (dashes or underscores), and only flags given on the command line
override the preset. Fields a config lists in ``GRID_FIELDS`` also take comma
lists (``--seeds=0,1,2 --loss=tc,ad --gamma=10,40``): the trainer then trains
every combination as one grid (``train.loop``). Launch flags for several
processes (``--coordinator-address``, ``--num-processes``, ``--process-id``)
and ``--debug`` (tracebacks) are common to every trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class Launch(NamedTuple):
  """Flags that are not part of a run's config.

  Attributes:
    workdir: ``--workdir`` or ``None``.
    overwrite: ``--overwrite``.
    debug: ``--debug`` (show tracebacks).
    coordinator_address: ``host:port`` of process 0 (several processes).
    num_processes: processes in the job.
    process_id: this process's index.
  """

  workdir: str | None
  overwrite: bool
  debug: bool
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _field_types(config_cls: type) -> dict[str, Any]:
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _scalar_type(tp: Any) -> type:
  """``int | None`` -> ``int``; plain scalars pass; others are an error."""
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = tuple(a for a in args if a is not type(None))
    if len(args) == 1:
      return _scalar_type(args[0])
  if tp in (bool, int, float, str):
    return tp
  raise TypeError(f"Config fields must be bool, int, float or str; got {tp}.")


def parse_value(name: str, tp: type, text: str) -> Any:
  """Parses one flag value of type ``tp`` (``3e5`` is accepted for ints).

  Raises:
    ValueError: naming the flag and the expected type.
  """
  if tp is bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"--{name}: expected true or false, got {text!r}.")
  if tp is int:
    try:
      return int(text)
    except ValueError:
      pass
    try:
      value = float(text)
    except ValueError:
      raise ValueError(
        f"--{name}: expected an integer, got {text!r}."
      ) from None
    if not value.is_integer():
      raise ValueError(f"--{name}: expected an integer, got {text!r}.")
    return int(value)
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"--{name}: expected a number, got {text!r}.") from None
  return text


def check_config(config: Any) -> None:
  """Checks ``choices`` metadata and positive loop counts of a config.

  Raises:
    ValueError: naming the field, the bad value and the allowed values.
  """
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
      raise ValueError(
        f"{f.name}={value!r} is not one of {tuple(choices)}; pass "
        f"--{f.name.replace('_', '-')}=<one of them>."
      )
  for name in ("num_steps", "log_every", "checkpoint_every", "max_to_keep"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}.")
  for name in ("eval_every", "steps_per_call"):
    if getattr(config, name) < 0:
      raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}.")


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--workdir",
    default=None,
    help="checkpoints, logs and config go here; a run resumes from it.",
  )
  parser.add_argument(
    "--overwrite",
    action="store_true",
    help="delete the workdir's checkpoints and logs and start afresh.",
  )
  parser.add_argument(
    "--debug",
    action="store_true",
    help="show the full traceback of an error (also: VAE_ATTN_DEBUG=1).",
  )
  group = parser.add_argument_group(
    "several processes (only when no cluster is detected: SLURM, Cloud TPU "
    "and MPI are found automatically)"
  )
  group.add_argument(
    "--coordinator-address",
    default=None,
    help="host:port of process 0 (or JAX_COORDINATOR_ADDRESS).",
  )
  group.add_argument(
    "--num-processes",
    type=int,
    default=None,
    help="processes in the job (or JAX_NUM_PROCESSES).",
  )
  group.add_argument(
    "--process-id",
    type=int,
    default=None,
    help="this process's index, 0 .. num_processes-1 (or JAX_PROCESS_ID).",
  )


class _Parser(argparse.ArgumentParser):
  """A bad flag is one line, ``error: <what> (see <prog> --help)``, status 2."""

  def error(self, message: str):
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(
  config_cls: type,
  presets: Mapping[str, Any],
  *,
  prog: str,
  description: str,
  default_preset: str,
  preset_field: str | None = None,
) -> argparse.ArgumentParser:
  """An ``argparse`` parser with ``--preset`` and one flag per config field.

  Flags accept dashes or underscores (``--num-steps`` or ``--num_steps``);
  booleans also accept ``--no-<name>``. Defaults are left unset so that only
  flags given on the command line override the preset. Values of the
  config's ``GRID_FIELDS`` are kept as text here (they may be comma lists)
  and parsed by :func:`parse_flags`.
  """
  preset_help = f"base config, one of {sorted(presets)} (default "
  if preset_field:
    preset_help += (
      f"the value of --{preset_field.replace('_', '-')} when it names a "
      f"preset, else {default_preset!r})."
    )
  else:
    preset_help += f"{default_preset!r})."
  parser = _Parser(
    prog=prog,
    description=description,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--preset", choices=sorted(presets), default=None, help=preset_help
  )
  _add_launch_flags(parser)
  grid_fields = tuple(getattr(config_cls, "GRID_FIELDS", ()))
  defaults = presets[default_preset]
  for name, tp in _field_types(config_cls).items():
    tp = _scalar_type(tp)
    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    dashed = name.replace("_", "-")
    flags = [f"--{dashed}"] + ([f"--{name}"] if "_" in name else [])
    if name == "seed" and "seed" in grid_fields:
      flags.append("--seeds")
    for alias, target in getattr(config_cls, "FLAG_ALIASES", {}).items():
      if target == name:
        flags += [f"--{alias.replace('_', '-')}", f"--{alias}"]
    help_text = f.metadata.get("help", "")
    help_text += f" [{tp.__name__}, default {getattr(defaults, name)!r}"
    if name in grid_fields:
      help_text += "; a comma list trains a grid"
    help_text += "]"
    kwargs = dict(dest=name, default=None, help=help_text.strip())
    if name in grid_fields:
      parser.add_argument(*flags, metavar=tp.__name__.upper(), **kwargs)
      continue
    if "choices" in f.metadata:
      kwargs["choices"] = tuple(f.metadata["choices"])
    if tp is bool:
      parser.add_argument(
        *flags,
        nargs="?",
        const="true",
        type=lambda s, n=name: parse_value(n, bool, s),
        **kwargs,
      )
      parser.add_argument(
        f"--no-{dashed}",
        *([f"--no_{name}"] if "_" in name else []),
        dest=name,
        action="store_const",
        const=False,
        help=argparse.SUPPRESS,
      )
    else:

      def convert(s, n=name, t=tp, grid=grid_fields):
        if "," in s and t is not str:
          lists = ", ".join(f"--{g.replace('_', '-')}" for g in grid) or "none"
          raise argparse.ArgumentTypeError(
            f"--{n.replace('_', '-')} takes one value; comma lists (a grid) "
            f"are taken by: {lists}."
          )
        try:
          return parse_value(n, t, s)
        except ValueError as e:
          raise argparse.ArgumentTypeError(str(e)) from None

      convert.__name__ = tp.__name__
      parser.add_argument(*flags, type=convert, **kwargs)
  return parser


def _grid_values(config_cls: type, name: str, text: str) -> list[Any]:
  tp = _scalar_type(_field_types(config_cls)[name])
  values = [parse_value(name, tp, v.strip()) for v in text.split(",")]
  if len(set(values)) != len(values):
    raise ValueError(f"--{name.replace('_', '-')}={text!r} repeats a value.")
  return values


def expand_grid(base: Any, lists: Mapping[str, Sequence[Any]]) -> list[Any]:
  """Every combination of ``lists`` applied to ``base`` (last field fastest).

  Example: ``expand_grid(config, {"loss": ["tc", "ad"], "seed": [0, 1]})``
  gives tc/0, tc/1, ad/0, ad/1.
  """
  names = list(lists)
  return [
    dataclasses.replace(base, **dict(zip(names, combo, strict=True)))
    for combo in itertools.product(*(lists[n] for n in names))
  ]


def member_name(config: Any, varying: Sequence[str]) -> str:
  """A grid member's folder name from the fields that vary in the grid.

  ``loss`` shows its value alone, other fields as name and value:
  ``ad_gamma40_seed0``. The seed is always part of the name.
  """
  parts = []
  for name in list(dict.fromkeys([*varying, "seed"])):
    value = getattr(config, name)
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    parts.append(str(value) if name == "loss" else f"{name}{value}")
  return "_".join(parts)


def parse_flags(
  argv: Sequence[str] | None,
  config_cls: type,
  presets: Mapping[str, Any],
  *,
  prog: str,
  description: str = "",
  default_preset: str,
  preset_field: str | None = None,
  grid: bool = False,
  launch: bool = False,
) -> tuple[Any, ...]:
  """Parses ``argv`` into ``(config, workdir or None, overwrite)``.

  The config is ``presets[--preset]`` (or, with ``preset_field``, the preset
  named by that field's flag, e.g. ``--dataset=mnist``; else
  ``default_preset``) with every given field flag applied on top.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    config_cls: the frozen config dataclass.
    presets: preset name -> config.
    prog: program name for ``--help``.
    description: text for ``--help``.
    default_preset: the preset used when none is named.
    preset_field: a field whose value picks the preset when ``--preset`` is
      absent and the value is a preset name.
    grid: return the list of configs of every combination of the comma lists
      given for ``GRID_FIELDS`` (one config without lists) instead of one
      config; without it a comma list is a usage error.
    launch: return ``(configs_or_config, Launch)`` instead.

  Returns:
    The config (a list with ``grid``), the ``--workdir`` value and the
    ``--overwrite`` switch; or ``(config, Launch)`` with ``launch``.
  """
  parser = make_parser(
    config_cls,
    presets,
    prog=prog,
    description=description,
    default_preset=default_preset,
    preset_field=preset_field,
  )
  args = parser.parse_args(argv)
  grid_fields = tuple(getattr(config_cls, "GRID_FIELDS", ()))
  overrides, lists = {}, {}
  try:
    for f in dataclasses.fields(config_cls):
      value = getattr(args, f.name)
      if value is None:
        continue
      if f.name in grid_fields:
        values = _grid_values(config_cls, f.name, value)
        if len(values) > 1:
          lists[f.name] = values
        value = values[0]
      overrides[f.name] = value
  except ValueError as e:
    parser.error(str(e))
  if lists and not grid:
    parser.error(f"{prog} trains one run; comma lists are not accepted here.")
  preset = args.preset
  if preset is None and preset_field and overrides.get(preset_field) in presets:
    preset = overrides[preset_field]
  config = dataclasses.replace(presets[preset or default_preset], **overrides)
  lists = {k: lists[k] for k in grid_fields if k in lists}  # Seeds fastest.
  configs = expand_grid(config, lists) if lists else [config]
  try:
    for c in configs:
      check_config(c)
  except ValueError as e:
    parser.error(str(e))
  result = configs if grid else config
  if launch:
    return result, Launch(
      workdir=args.workdir,
      overwrite=args.overwrite,
      debug=args.debug,
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  return result, args.workdir, args.overwrite


def config_to_dict(config: Any) -> dict[str, Any]:
  """The config as a JSON-ready dict."""
  return dataclasses.asdict(config)


def config_from_dict(config_cls: type, values: Mapping[str, Any]) -> Any:
  """Rebuilds a config from :func:`config_to_dict` output.

  Raises:
    ValueError: ``values`` names fields ``config_cls`` does not have.
  """
  names = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(
      f"Unknown {config_cls.__qualname__} fields {unknown}; the config was "
      "written by another trainer or version."
    )
  return config_cls(**values)
