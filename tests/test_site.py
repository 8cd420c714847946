"""The built website in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright, over a local HTTP server, no network.

For every page: no request fails or leaves localhost, no console error, MathJax typesets the
equations (``mjx-container`` elements) on pages that contain math, every image has loaded
(``naturalWidth > 0``), and every internal link resolves to an existing file and anchor.

Run by ``make book-test`` after a quick build. Without a built site this module is skipped,
unless ``DIFFUSION_EDU_REQUIRE_BOOK=1`` (set by ``make book-test``), which makes it fail.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "book" / "_build" / "screenshots"
REQUIRED = os.environ.get("DIFFUSION_EDU_REQUIRE_BOOK", "") == "1"

if not (HTML / "index.html").exists():
    if REQUIRED:
        raise RuntimeError(f"DIFFUSION_EDU_REQUIRE_BOOK=1 but no built site at {HTML}: run `make book`")
    pytest.skip("the website is not built (make book-test builds and checks it)", allow_module_level=True)

playwright = pytest.importorskip("playwright.sync_api", reason="install the 'book' extra") if not REQUIRED \
    else __import__("playwright.sync_api", fromlist=["sync_playwright"])

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

PAGES = sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
               if not p.relative_to(HTML).parts[0].startswith("_"))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_site_has_the_chapters():
    chapters = [p for p in PAGES if p.startswith("notebooks/")]
    assert len(chapters) == len(list((ROOT / "notebooks").glob("*.ipynb"))), chapters
    assert "index.html" in PAGES or "intro.html" in PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(server, browser, page):
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', (HTML / page).read_text())
    if redirect:  # index.html forwards to the landing page
        assert (HTML / page).parent.joinpath(redirect.group(1)).is_file()
        return
    problems: list[str] = []
    ctx = browser.new_context()
    pg = ctx.new_page()

    def route(r):
        if urlparse(r.request.url).hostname in ("127.0.0.1", "localhost") or r.request.url.startswith("data:"):
            r.continue_()
        else:
            problems.append(f"external request {r.request.url}")
            r.abort()

    pg.route("**/*", route)
    pg.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    pg.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    pg.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(server + page, wait_until="load")
    has_math = pg.evaluate("document.querySelectorAll('.math, span.math, div.math').length") > 0
    if has_math:
        pg.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20_000)
        pg.evaluate("MathJax.startup.promise")
        n_typeset = pg.evaluate("document.querySelectorAll('mjx-container').length")
        if n_typeset == 0:
            problems.append("page has math but MathJax typeset none of it")
        if pg.evaluate("document.querySelectorAll('mjx-merror').length"):
            problems.append("MathJax reported a TeX error")
    broken = pg.evaluate(
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    problems += [f"image did not load: {src}" for src in broken]
    for m in pg.evaluate(_MEDIA_JS):  # every <audio> / <video> decodes and has a duration
        if m["error"] is not None or not (m["duration"] and m["duration"] > 0 and m["duration"] != float("inf")):
            problems.append(f"{m['tag']} did not load (error {m['error']}, duration {m['duration']}): {m['src']}")
    if page.startswith("notebooks/"):
        n_img = pg.evaluate("document.images.length")
        if n_img == 0:
            problems.append("chapter page shows no figure")
    if page in ("intro.html", "notebooks/04_reverse_time.html"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / (page.replace("/", "_") + ".png")), full_page=False)
    ctx.close()
    assert not problems, "\n".join(problems)


# Resolve, for each audio/video element, once its metadata is read (or it fails, or 10 s pass).
_MEDIA_JS = """async () => Promise.all(Array.from(document.querySelectorAll('audio, video')).map(m =>
  new Promise(resolve => {
    const done = () => resolve({tag: m.tagName.toLowerCase(), src: (m.currentSrc || m.src || '').slice(0, 60),
                                duration: isNaN(m.duration) ? null : m.duration,
                                error: m.error ? m.error.code : null});
    if (m.readyState >= 1) return done();
    m.addEventListener('loadedmetadata', done, {once: true});
    m.addEventListener('error', done, {once: true});
    setTimeout(done, 10000);
    m.preload = 'metadata';
    m.load();
  })))"""


def test_chapter_14_plays_sound_and_animates():
    """The applications chapter carries its media: <audio> elements and animated GIFs."""
    page = HTML / "notebooks" / "14_audio_video_science.html"
    if not (ROOT / "notebooks" / "14_audio_video_science.ipynb").exists():
        pytest.skip("chapter 14 is not written yet")
    html = page.read_text(encoding="utf-8")
    assert html.count("<audio") >= 2, "chapter 14 should play real and generated notes"
    gifs = re.findall(r'<img[^>]+src="([^"]+\.gif)"', html) + re.findall(r'src="(data:image/gif[^"]{0,40})', html)
    assert gifs, "chapter 14 should show an animated GIF"
    for src in gifs:
        if not src.startswith("data:"):
            data = (page.parent / unquote(src)).read_bytes()
            assert data[:6] in (b"GIF87a", b"GIF89a") and data.count(b"\x21\xf9\x04") >= 2, src  # >= 2 frames


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])


@functools.lru_cache(maxsize=None)
def _parse(rel: str) -> _Links:
    p = _Links()
    p.feed((HTML / rel).read_text(encoding="utf-8"))
    return p


def test_internal_links_resolve():
    bad = []
    for page in PAGES:
        for href in _parse(page).hrefs:
            url = urlparse(href)
            if url.scheme or href.startswith("//") or href.startswith("mailto:"):
                continue
            target = urlparse(urljoin("http://x/" + page, href))
            rel = unquote(target.path.lstrip("/")) or "index.html"
            if rel.endswith("/"):
                rel += "index.html"
            if not (HTML / rel).is_file():
                bad.append(f"{page}: {href} -> missing {rel}")
            elif target.fragment and rel.endswith(".html") and unquote(target.fragment) not in _parse(rel).ids:
                bad.append(f"{page}: {href} -> no anchor #{target.fragment}")
    assert not bad, "\n".join(bad[:50])
