"""The Colab notebooks: run top to bottom in QUICK mode, stored without outputs.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (cwd
``notebooks/``, as when it is opened there) with ``VAE_ATTN_QUICK=1`` and
``VAE_ATTN_WORKDIR`` in a temporary folder, so nothing is written into the
repository; a cell that raises fails the test. The notebooks must also be
committed clean: no outputs, no execution counts, valid nbformat v4, the
``python3`` kernel and a Colab TPU runtime. The runs are marked ``slow``
(over 20 s each): the default ``pytest`` leaves them out, ``pytest -m slow``
runs them (CI does).
"""

from __future__ import annotations

import os
import pathlib

import ipykernel  # noqa: F401  (the kernel the notebooks run on)
import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {
  "01_explain_mnist",
  "02_localize_mvtec",
  "03_ad_factorvae_dsprites",
}
CELL_TIMEOUT_S = 900
COLAB_PREFIX = (
  "https://colab.research.google.com/github/vae-attn/vae-attn/blob/main/"
  "notebooks/"
)


def _ids(path: pathlib.Path) -> str:
  return path.stem


def test_every_notebook_is_there():
  assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_clean(path):
  nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
  assert nb.nbformat == 4, f"{path.name}: not nbformat v4"
  nbformat.validate(nb)
  assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
  assert nb.metadata.get("accelerator") == "TPU", "Colab runtime: TPU"
  dirty = [
    i
    for i, cell in enumerate(nb.cells)
    if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
  ]
  assert not dirty, (
    f"{path.name}: cells {dirty} have outputs or execution counts; clear "
    "them before committing (jupyter nbconvert --clear-output --inplace)."
  )
  assert COLAB_PREFIX + path.name in nb.cells[0].source, "Open in Colab link"
  sources = [c.source for c in nb.cells if c.cell_type == "code"]
  assert any("REPO_URL" in s and "pip" in s for s in sources), "install cell"
  assert any("jax.devices()" in s for s in sources), "device cell"
  assert any("QUICK = True" in s for s in sources), "parameters cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_in_quick_mode(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  pythonpath = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
  )
  env = {
    **os.environ,
    "VAE_ATTN_QUICK": "1",
    "VAE_ATTN_WORKDIR": str(tmp_path / "runs"),
    "PYTHONPATH": pythonpath,
    "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
    "MPLBACKEND": "Agg",
  }
  before = {p: p.exists() for p in (NOTEBOOK_DIR / "runs", ROOT / "runs")}
  client = nbclient.NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  client.execute(env=env)  # Raises CellExecutionError naming the cell.
  created = [str(p) for p, existed in before.items() if p.exists() > existed]
  assert not created, f"The notebook wrote into the repository: {created}"
