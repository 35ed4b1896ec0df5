"""The README's attention sections run as written (issue 20): every Python
block of "The attention transform" and "Explain your own model"."""

import pathlib
import re

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
