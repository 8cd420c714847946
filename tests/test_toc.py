"""The website's table of contents lists every chapter notebook, and only files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def toc_files():
    return re.findall(r"^\s*-?\s*file:\s*(\S+)\s*$", (BOOK / "_toc.yml").read_text(), flags=re.M)


def test_every_notebook_is_in_the_toc():
    listed = set(toc_files())
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    missing = [nb for nb in notebooks if f"notebooks/{nb}" not in listed]
    assert not missing, f"notebooks missing from book/_toc.yml: {missing}"


def test_every_toc_entry_exists():
    root = re.search(r"^root:\s*(\S+)", (BOOK / "_toc.yml").read_text(), flags=re.M).group(1)
    for entry in toc_files() + [root]:
        candidates = [BOOK / f"{entry}{ext}" for ext in ("", ".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"book/_toc.yml lists {entry!r}, which does not exist"


def test_chapters_reach_the_book_through_one_source():
    link = BOOK / "notebooks"
    assert link.is_symlink() and link.resolve() == (ROOT / "notebooks").resolve()


def test_every_citation_key_is_in_the_bibliography():
    """Each {cite}`key` in the book and the notebooks names an entry of references.bib
    (the build also fails on a missing one; this finds it in seconds)."""
    bib = set(re.findall(r"^@\w+\{([^,]+),", (BOOK / "references.bib").read_text(), flags=re.M))
    texts = [p.read_text() for p in list(BOOK.glob("*.md")) + list((ROOT / "notebooks").glob("*.ipynb"))]
    keys = {k.strip() for t in texts for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", t) for k in group.split(",")}
    assert keys, "no citations found"
    assert keys <= bib, f"cited but not in references.bib: {sorted(keys - bib)}"
