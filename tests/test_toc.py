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
    texts = [p.read_text() for p in list(BOOK.glob("*.md")) + list(BOOK.glob("*.ipynb"))
             + list((ROOT / "notebooks").glob("*.ipynb"))]
    keys = {k.strip() for t in texts for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", t) for k in group.split(",")}
    assert keys, "no citations found"
    assert keys <= bib, f"cited but not in references.bib: {sorted(keys - bib)}"


def _texts():
    """Every page of prose as ``(path, base, text)``: the chapters' and the book notebooks'
    markdown cells, the book's pages and the README; ``base`` is the folder that relative links
    start from on the website (the chapters sit in ``book/notebooks/`` there)."""
    import nbformat

    out = []
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(BOOK.glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        out.append((p, BOOK / "notebooks" if p.parent.name == "notebooks" else BOOK, text))
    out += [(p, BOOK, p.read_text(encoding="utf-8")) for p in sorted(BOOK.glob("*.md"))]
    return out + [(ROOT / "README.md", ROOT, (ROOT / "README.md").read_text(encoding="utf-8"))]


def test_every_chapter_reference_names_a_chapter_that_exists():
    """'chapter 12' (or 'Ch. 12', 'chapters 11-13') only once chapter 12 exists: a reader must
    never be sent to a page that is not there. The errata page quotes old text and is exempt."""
    existing = {int(p.name[:2]) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert existing, "no chapter notebooks found"
    pattern = re.compile(r"\b(?:[Cc]hapters?|[Cc]h\.)\s+(\d+)(?:\s*(?:[-–—]|to|and)\s*(\d+))?")
    bad = []
    for path, _, text in _texts():
        if path.name == "errata.md":
            continue
        for m in pattern.finditer(text):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            missing = [n for n in range(lo, max(lo, hi) + 1) if n not in existing]
            if missing:
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)!r} -> no chapter {missing}")
    assert not bad, "\n".join(bad)


def test_every_relative_link_to_a_file_resolves():
    """Markdown links ``[text](target)`` to local files (a chapter, a page, a figure) resolve,
    relative to the file that contains them; the site test checks the built pages as well."""
    import os

    bad = []
    for path, base, text in _texts():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            target = target.split("#", 1)[0]
            if not target or re.match(r"^[a-z]+:", target) or target.startswith("/"):
                continue
            if not Path(os.path.normpath(base / target)).exists():  # lexical '..', as the browser does
                bad.append(f"{path.relative_to(ROOT)}: ({target})")
    assert not bad, "\n".join(bad)
