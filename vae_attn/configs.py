"""Config dataclasses: their fields, flags (simple_parsing) and JSON.

Every entry point (``python -m train.*``, ``python -m eval.*``) describes its
options as one frozen dataclass whose fields are made with :func:`field`
(default, ``--help`` text, allowed values). `simple_parsing
<https://github.com/lebrice/SimpleParsing>`_ turns the dataclass into
``argparse`` flags: ``--num-steps`` or ``--num_steps``, booleans as
``--score``/``--no-score`` or ``--score=false``, the type and default in
``--help``. :func:`parse` returns the config itself (never an
``argparse.Namespace``), so a config built in Python and one parsed from a
command line are the same object, and :func:`to_dict`/:func:`from_dict`
write and read it as JSON.

A bad flag is one line, ``error: <what> (see <prog> --help)``, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import simple_parsing

__all__ = [
  "ArgumentParser",
  "Debug",
  "check_choices",
  "count",
  "field",
  "from_dict",
  "grid_field",
  "parse",
  "to_dict",
]

T = TypeVar("T")


def count(text: str) -> int:
  """Parses a whole number, also written as ``3e5`` (the paper's steps).

  Raises:
    argparse.ArgumentTypeError: ``text`` is not a whole number.
  """
  try:
    return int(text)
  except ValueError:
    pass
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not value.is_integer():
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
  return int(value)


count.__name__ = "int"  # The metavar in --help.


def field(
  default: Any,
  help: str,  # noqa: A002 (the argparse name)
  choices: Sequence[Any] | None = None,
  *,
  alias: str | Sequence[str] = (),
  type: Callable[[str], Any] | None = None,  # noqa: A002
  positional: bool = False,
  nargs: str | None = None,
  metadata: Mapping[str, Any] | None = None,
) -> Any:
  """A config field with its ``--help`` text and optional allowed values.

  Example: ``loss: str = configs.field("ad", "objective", ("ad", "tc"))``.

  Args:
    default: the value without the flag (a tuple for a list field).
    help: one line for ``--help`` (plain text).
    choices: the allowed values; checked by the parser and by
      :func:`check_choices` for configs built in Python.
    alias: more flag names (``"--data-path"``).
    type: the parser of one value (default: from the annotation).
    positional: a positional argument instead of ``--name``.
    nargs: ``"+"``/``"*"`` for list fields.
    metadata: more ``dataclasses.field`` metadata (e.g. ``grid``).
  """
  kwargs: dict[str, Any] = {}
  if choices is not None:
    kwargs["choices"] = tuple(choices)
  if type is not None:
    kwargs["type"] = type
  if nargs is not None:
    kwargs["nargs"] = nargs
  if isinstance(default, bool):
    kwargs["negative_prefix"] = "--no-"
  return simple_parsing.field(
    default,
    alias=list([alias] if isinstance(alias, str) else alias) or None,
    positional=positional,
    help=help,
    metadata={"allowed": kwargs.get("choices"), **(metadata or {})},
    **kwargs,
  )


def _one_value(tp: type, text: str) -> Any:
  if tp is int:
    return count(text)
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"expected a number, got {text!r}"
      ) from None
  return text


def grid_field(
  default: Any,
  help: str,  # noqa: A002 (the argparse name)
  choices: Sequence[Any] | None = None,
  *,
  alias: str | Sequence[str] = (),
) -> Any:
  """A config field whose flag also takes a comma list (a grid).

  The flag's value is a tuple of values (one without a comma); every
  value is checked against ``choices`` and none may repeat.
  ``train.flags.parse_flags`` expands the tuples into one config per
  combination.
  """
  tp = type(default)

  def parse(text: str) -> tuple[Any, ...]:
    values = tuple(_one_value(tp, v.strip()) for v in text.split(","))
    for v in values if choices is not None else ():
      if v not in choices:
        raise argparse.ArgumentTypeError(
          f"{v!r} is not one of {tuple(choices)}"
        )
    if len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
    return values

  parse.__name__ = tp.__name__
  allowed = f"; one of {', '.join(map(str, choices))}" if choices else ""
  return field(
    default,
    f"{help}{allowed} (a comma list trains a grid)",
    alias=alias,
    type=parse,
    metadata={"grid": True, "allowed": choices},
  )


@dataclasses.dataclass(frozen=True)
class Debug:
  """Error reporting (every entry point).

  Attributes:
    debug: show the traceback of a user error instead of one line.
  """

  debug: bool = field(
    False, "show the full traceback of an error (also: VAE_ATTN_DEBUG=1)"
  )


class ArgumentParser(simple_parsing.ArgumentParser):
  """``simple_parsing.ArgumentParser`` with this project's conventions.

  Flags are shown with dashes and also read with underscores
  (``--num_steps``), the description keeps its layout, and a
  bad flag prints one line, ``error: <what> (see <prog> --help)``, then
  exits with status 2 (no usage block).
  """

  def __init__(self, *, prog: str, description: str = ""):
    super().__init__(
      prog=prog,
      description=description,
      formatter_class=_HelpFormatter,
      add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
      nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT,
      add_config_path_arg=False,
    )

  def parse_known_args(self, args=None, namespace=None, **kwargs):
    """``--num_steps`` is read as ``--num-steps`` (values stay as given)."""
    args = sys.argv[1:] if args is None else args
    return super().parse_known_args(
      [_dashed(a) for a in args], namespace, **kwargs
    )

  def error(self, message: str):
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _dashed(arg: str) -> str:
  """``--a_b=c_d`` -> ``--a-b=c_d``; other arguments unchanged."""
  if not arg.startswith("--"):
    return arg
  name, eq, value = arg.partition("=")
  return name.replace("_", "-") + eq + value


class _HelpFormatter(
  simple_parsing.SimpleHelpFormatter, argparse.RawDescriptionHelpFormatter
):
  """simple_parsing's flags, the description's own line breaks.

  A flag whose help does not mention its default gets ``(default: X)``
  (switches: on/off); a flag whose default is ``None`` says in its help what
  happens without it.
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    default = action.default
    if (
      not action.option_strings
      or "default" in text
      or default is None
      or default is argparse.SUPPRESS
    ):
      return text
    if isinstance(default, bool):
      shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
      shown = " ".join(str(v) for v in default)
    else:
      shown = str(default) if default != "" else '""'
    return f"{text} (default: {shown.replace('%', '%%')})"


def parse(
  argv: Sequence[str] | None,
  *groups: type | Any,
  prog: str,
  description: str = "",
  parser: ArgumentParser | None = None,
) -> tuple[Any, ...]:
  """Parses ``argv`` into one instance per config dataclass in ``groups``.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    *groups: config dataclasses, or instances of them whose values are the
      defaults (a preset); their field names and class names must differ.
    prog: the program name in ``--help`` and errors.
    description: the ``--help`` text (the module docstring).
    parser: a parser with more arguments already added (``--preset``); its
      namespace is then returned last.

  Returns:
    The instances, in the order of ``groups`` (plus the namespace of the
    other arguments when ``parser`` is given).

  Raises:
    SystemExit: status 2 after one error line (bad flag), 0 after ``--help``.
  """
  own = parser is None
  parser = parser or ArgumentParser(prog=prog, description=description)
  dests = []
  for group in groups:
    cls = group if isinstance(group, type) else type(group)
    default = None if isinstance(group, type) else group
    dests.append(cls.__name__.lower())
    parser.add_arguments(cls, dest=dests[-1], default=default)
  args = parser.parse_args(argv)
  parsed = tuple(getattr(args, d) for d in dests)
  for config in parsed:
    try:
      check_choices(config)
    except ValueError as e:
      parser.error(str(e))
  return parsed if own else (*parsed, args)


def check_choices(config: Any) -> None:
  """Checks every field with ``choices`` (configs built in Python too).

  Raises:
    ValueError: naming the field, the bad value and the allowed values.
  """
  for f in dataclasses.fields(config):
    choices = f.metadata.get("allowed")
    value = getattr(config, f.name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values if choices is not None else ():
      if v not in choices:
        raise ValueError(
          f"{f.name}={v!r} is not one of {tuple(choices)}; pass "
          f"--{f.name.replace('_', '-')}=<one of them>."
        )


def to_dict(config: Any) -> dict[str, Any]:
  """The config as a JSON-ready dict (``dataclasses.asdict``)."""
  return dataclasses.asdict(config)


def from_dict(config_cls: type[T], values: Mapping[str, Any]) -> T:
  """Rebuilds a config from :func:`to_dict` output.

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


def field_types(config_cls: type) -> dict[str, Any]:
  """Field name -> resolved annotation (``from __future__`` strings too)."""
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}
