"""The generated derivation docs are fresh, fully proved, and typeset in a real browser.

The browser test builds the MkDocs site into a temporary directory, serves it
on 127.0.0.1 and loads pages in headless Chromium; it is skipped (with the
reason) when MkDocs, its plugins, MathJax or Chromium are not installed.
Install them with::

    pip install -e ".[docs]"
    apt-get install -y chromium
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from attnspec.impl import cli
from attnspec.spec import derive

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "derivations"


CONTRACT = ROOT.parent / "shared" / "MODEL.md"


@pytest.mark.skipif(not CONTRACT.is_file(), reason=f"the team's contract {CONTRACT} is not beside this checkout")
def test_docs_model_md_is_the_contract_word_for_word():
    """docs/model.md is the copy of MODEL.md that readers of the repository and the site get."""
    assert (ROOT / "docs" / "model.md").read_bytes() == CONTRACT.read_bytes(), \
        f"docs/model.md differs from {CONTRACT}: copy it again (cp {CONTRACT} docs/model.md)"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    """The pages as generated now (about 30 s: every identity and BPTT check is decided)."""
    return derive.render()


def test_committed_derivation_docs_are_not_stale(pages, tmp_path):
    derive.write(tmp_path, pages)
    fresh = sorted(p.name for p in tmp_path.glob("*.md"))
    committed = sorted(p.name for p in COMMITTED.glob("*.md"))
    assert fresh == committed, f"generated {fresh}, committed {committed}: run `attnspec derive`"
    differ = [name for name in fresh
              if (tmp_path / name).read_bytes() != (COMMITTED / name).read_bytes()]
    assert not differ, f"docs/derivations/{differ} are stale: run `attnspec derive` and commit the result"


def test_every_identity_and_bptt_check_is_proved(pages):
    for name, text in pages.items():
        assert "NOT VERIFIED" not in text, f"{name} reports an unproved identity"
    m = re.search(r"(\d+) of (\d+) checks proved", pages["index.md"])
    assert m and m[1] == m[2], f"index.md: {m and m[0]}"


def test_pages_are_deterministic_text(pages):
    for name, text in pages.items():
        assert text.startswith(derive.GENERATED), name
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\d+\.\d+ ?s\b|seconds", text), \
            f"{name} holds a date or a timing, which would make it differ on every run"


def test_worked_example_prints_the_exact_dot_product(pages):
    text = pages["worked-example.md"]
    assert r"= \frac{31}{50} = 0.62" in text
    # the oracle's weights for keys (0.8, 0.2), (0.1, 0.9), (-0.5, 0.4) and query (0.7, 0.3)
    assert r"\begin{bmatrix}0.458044 \\ 0.346182 \\ 0.195775\end{bmatrix}" in text


def test_check_flag_fails_on_stale_missing_and_leftover_pages(pages, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(derive, "render", lambda: pages)  # the check itself is what is tested here
    derive.write(tmp_path, pages)
    assert cli.main(["derive", "--check", "--out", str(tmp_path)]) == 0

    (tmp_path / "softmax.md").write_text(pages["softmax.md"].replace("diag", "Diag"), encoding="utf-8")
    (tmp_path / "context.md").unlink()
    (tmp_path / "old.md").write_text(derive.GENERATED + "\n# gone\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("# hand-written, not ours\n", encoding="utf-8")
    assert cli.main(["derive", "--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "softmax.md: differs" in err and "context.md: missing" in err and "old.md: not generated" in err
    assert "notes.md" not in err

    assert cli.main(["derive", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "old.md").exists() and (tmp_path / "notes.md").exists()
    assert derive.stale(tmp_path, pages) == []


# -- the site in a browser ---------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _site_tools_missing() -> str | None:
    for module, what in (("mkdocs", "mkdocs"), ("material", "mkdocs-material"),
                         ("pymdownx", "pymdown-extensions"), ("mathjax", "django-static-mathjax")):
        if importlib.util.find_spec(module) is None and not (module == "mathjax" and os.environ.get(
                "ATTNSPEC_MATHJAX_DIR")):
            return f"{what} is not installed (pip install -e '.[docs]')"
    if _chromium() is None:
        return "chromium is not installed (apt-get install -y chromium)"
    return None


class _Text(HTMLParser):
    """The text a reader sees: no scripts, styles or SVG internals."""

    SKIP = {"script", "style", "svg", "noscript"}

    def __init__(self):
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.SKIP

    def handle_endtag(self, tag):
        self.depth -= tag in self.SKIP and self.depth > 0

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site, served on 127.0.0.1: yields its base URL."""
    reason = _site_tools_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                            str(ROOT / "mkdocs.yml"), "-d", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"mkdocs build failed:\n{build.stdout}\n{build.stderr}"
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _render(url: str, profile: Path, *extra: str) -> str:
    """The DOM after scripts ran, from headless Chromium (no network but the local server)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", *extra, url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, f"chromium failed on {url}:\n{run.stderr[-2000:]}"
    return run.stdout


@pytest.mark.parametrize("page", ["derivations/", "derivations/bptt/", "derivations/lstm/",
                                  "derivations/worked-example/"])
def test_site_page_equations_are_typeset_by_mathjax(site, page, tmp_path):
    dom = _render(f"{site}/{page}", tmp_path / "profile", "--dump-dom")
    n_math = dom.count('class="arithmatex"')
    n_typeset = dom.count("<mjx-container")
    assert n_math > 0, f"{page}: no maths found on the page"
    assert n_typeset == n_math, f"{page}: MathJax typeset {n_typeset} of {n_math} formulas"
    assert "data-mjx-error" not in dom and "<mjx-merror" not in dom, f"{page}: a TeX error on the page"
    parser = _Text()
    parser.feed(dom)
    text = "".join(parser.parts)
    for raw in ("$$", r"\frac", r"\begin", r"\left", r"\[", r"\(", r"\mathrm"):
        assert raw not in text, f"{page}: raw LaTeX {raw!r} left in the rendered text"


def test_derive_checks_its_folder_before_rendering(tmp_path, monkeypatch, capsys):
    """Found by fuzzing: --out naming a file failed with a traceback after ~15 s of rendering."""
    monkeypatch.setattr(derive, "render", lambda: pytest.fail("rendered before checking --out"))
    (tmp_path / "file").write_text("x")
    for argv in (["derive", "--out", str(tmp_path / "file")], ["derive", "--out", str(tmp_path / "file" / "sub")],
                 ["derive", "--check", "--out", str(tmp_path / "missing")]):
        assert cli.main(argv) == 2
        assert "attnspec derive: error: out: " in capsys.readouterr().err
