"""Write student copies of the chapter notebooks: every solution cell (tag ``solution``) is
replaced by a stub, everything else is kept, outputs are stripped. A code solution keeps its
``# Exercise k`` first line; a written solution sketch (a markdown cell, a MyST dropdown on the
website) becomes a prompt to write the derivation.

Usage: ``python tools/make_student.py [notebooks_dir] [out_dir]`` (``make student``).
The checks that follow an exercise stay in place, so a student knows when they are right.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
STUB = "# your code here\n"
MD_STUB = "*Your derivation here.*\n"


def student_copy(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return a copy of ``nb`` with solution cells stubbed, and how many were replaced."""
    nb = nbformat.from_dict(nb)
    replaced = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if SOLUTION_TAG in tags and cell.cell_type == "markdown":
            title = next((ln.split("}", 1)[1].strip() for ln in cell.source.splitlines()
                          if ln.lstrip(":").startswith("{admonition}")), "")
            cell.source = (f"**{title}.** " if title else "") + MD_STUB
            cell.metadata["tags"] = [t for t in tags if t != SOLUTION_TAG]
            replaced += 1
        elif SOLUTION_TAG in tags:
            if cell.cell_type != "code":
                raise ValueError(f"cell tagged {SOLUTION_TAG!r} must be a code or markdown cell, got {cell.cell_type}")
            first = cell.source.splitlines()[0] if cell.source.strip() else ""
            keep = first if first.startswith("# Exercise") else ""
            cell.source = (keep + "\n" if keep else "") + STUB
            cell.metadata["tags"] = [t for t in tags if t not in (SOLUTION_TAG, "hide-input")]
            replaced += 1
    return nb, replaced


def main(src: str = "notebooks", out: str = "student") -> int:
    src_dir, out_dir = Path(src), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(src_dir.glob("*.ipynb")):
        nb, n = student_copy(nbformat.read(path, as_version=4))
        nbformat.write(nb, out_dir / path.name)
        print(f"{path.name}: {n} solution cell(s) replaced")
        total += n
    return 0 if total else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
