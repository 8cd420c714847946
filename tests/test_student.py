"""`make student`: solution cells become stubs; everything else is unchanged."""

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_student import MD_STUB, STUB, main, student_copy  # noqa: E402


def test_every_chapter_has_exercises_with_hidden_solutions():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        sols = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert sols, f"{path.name} has no cell tagged 'solution'"
        for c in sols:  # the website hides solutions behind a toggle
            if c.cell_type == "code":
                assert "hide-input" in c.metadata["tags"], f"{path.name}: solution cell without 'hide-input'"
            else:  # a written solution sketch: a MyST dropdown
                assert ":class: dropdown" in c.source, f"{path.name}: solution sketch that is not a dropdown"


def test_student_copy_stubs_only_solutions(tmp_path):
    assert main(str(ROOT / "notebooks"), str(tmp_path)) == 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        orig = nbformat.read(path, as_version=4)
        stud = nbformat.read(tmp_path / path.name, as_version=4)
        assert len(orig.cells) == len(stud.cells)
        for a, b in zip(orig.cells, stud.cells):
            if "solution" in a.metadata.get("tags", []):
                assert b.source.endswith(MD_STUB if a.cell_type == "markdown" else STUB)
                assert len(b.source) < len(a.source)
            else:
                assert a.source == b.source


def test_student_copy_of_a_small_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("Exercise 1"),
                nbformat.v4.new_code_cell("# Exercise 1\nx = 41 + 1", metadata={"tags": ["solution", "hide-input"]}),
                nbformat.v4.new_code_cell("assert x == 42")]
    out, n = student_copy(nb)
    assert n == 1 and out.cells[1].source == "# Exercise 1\n" + STUB and out.cells[2].source == "assert x == 42"
    assert out.cells[1].metadata["tags"] == []


def test_student_copy_of_a_written_solution_sketch():
    nb = nbformat.v4.new_notebook()
    sketch = ":::{admonition} Solution sketch (Exercise 2)\n:class: dropdown\nComplete the square: ...\n:::"
    nb.cells = [nbformat.v4.new_markdown_cell("Exercise 2: derive the posterior."),
                nbformat.v4.new_markdown_cell(sketch, metadata={"tags": ["solution"]})]
    out, n = student_copy(nb)
    assert n == 1 and out.cells[1].source == "**Solution sketch (Exercise 2).** " + MD_STUB
    assert "Complete the square" not in out.cells[1].source and out.cells[1].metadata["tags"] == []
