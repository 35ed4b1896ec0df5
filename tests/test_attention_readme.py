"""The README's attention sections run as written (issue 20): every Python
block of "The attention transform" and "Explain your own model"."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
SECTIONS = ["The attention transform", "Explain your own model"]


def _blocks(title: str) -> list[str]:
  text = README.read_text()
  start = text.index(f"\n## {title}\n")
  end = text.find("\n## ", start + 1)
  section = text[start : end if end >= 0 else None]
  return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("title", SECTIONS)
def test_readme_blocks_run(title):
  blocks = _blocks(title)
  assert blocks, f"no Python block under '## {title}'"
  namespace = {}
  for block in blocks:  # Later blocks use the names of earlier ones.
    exec(compile(block, f"README.md ({title})", "exec"), namespace)


# What only the trainers and evaluators need (the `workflow` extra; orbax
# comes with grain too), and their own folders: the library never imports
# them.
NOT_THE_LIBRARY = (
  "simple_parsing",
  "matplotlib",
  "tqdm",
  "tensorboardX",
  "train",
  "eval",
  "workflow",
)


def test_the_library_imports_nothing_of_the_workflow():
  modules = [
    ".".join(p.relative_to(README.parent).with_suffix("").parts)
    for p in sorted((README.parent / "vae_attn").rglob("*.py"))
  ]
  modules = [m.removesuffix(".__init__") for m in modules]
  script = (
    "import importlib, sys\n"
    f"for m in {modules!r}: importlib.import_module(m)\n"
    "print(sorted({m.split('.')[0] for m in sys.modules}))"
  )
  done = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    check=True,
    cwd=README.parent,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
  assert not loaded & set(NOT_THE_LIBRARY), loaded & set(NOT_THE_LIBRARY)
