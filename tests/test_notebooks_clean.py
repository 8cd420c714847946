"""Chapter notebooks are committed clean.

Every ``notebooks/*.ipynb`` (and ``book/*.ipynb``, the math appendix) is valid nbformat v4, names the ``python3`` kernel,
and has no outputs and no execution counts in its code cells. Fix a failure
with ``make strip`` (nbstripout), or in JupyterLab with "Clear All Outputs"
before saving.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb")) + sorted((ROOT / "book").glob("*.ipynb"))  # + the math appendix


def _id(path: Path) -> str:
    return path.name


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_is_valid_nbformat_v4(path: Path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw.get("nbformat") == 4, f"{path.name}: nbformat {raw.get('nbformat')}, want 4"
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_kernelspec_is_python3(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    kernelspec = nb.get("metadata", {}).get("kernelspec", {})
    assert kernelspec.get("name") == "python3", (
        f"{path.name}: kernelspec {kernelspec!r}, want name 'python3'"
    )
    assert kernelspec.get("language", "python") == "python", path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_has_no_outputs(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            dirty.append(f"cell {i}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            dirty.append(f"cell {i}: execution_count={cell['execution_count']}")
    assert not dirty, (
        f"{path.name} is not stripped (run `make strip`):\n  " + "\n  ".join(dirty)
    )
