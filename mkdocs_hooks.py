"""MkDocs hooks for the attnspec site (see mkdocs.yml): local MathJax, optional pages.

MathJax is served from the site itself, never from a CDN: the build machines
and CI reach package registries only, and a page that typesets its maths from
the network shows raw LaTeX offline. The MathJax 3 files come from an
installed package, in this order:

1. ``$ATTNSPEC_MATHJAX_DIR``: a MathJax ``es5`` directory (e.g. from
   ``npm install mathjax@3``: ``node_modules/mathjax/es5``);
2. the PyPI package ``django-static-mathjax`` (MathJax 3.2.2 as plain files,
   no Django needed at build time), which the ``docs`` extra installs;
3. ``node_modules/mathjax/es5`` next to this file.

Pages listed in the nav that do not exist (yet) are dropped from the nav
with a log line instead of failing the build: some hand-written pages are
produced by other commands (``attnspec demo --compare`` writes
docs/attention-vs-bottleneck.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.attnspec")

MATHJAX_URI = "javascripts/mathjax"          # where the site serves MathJax from
ENTRY = "tex-svg.js"                         # TeX in, SVG out: one file, no web fonts to fetch
COMBINED = {"tex-svg.js"}                    # the only combined bundle shipped; the rest are lazy parts

# pymdownx.arithmatex (generic mode) wraps maths in \( \) and \[ \] inside
# elements of class "arithmatex"; MathJax is told to typeset those only.
CONFIG_JS = """window.MathJax = {
  tex: {
    inlineMath: [["\\\\(", "\\\\)"]],
    displayMath: [["\\\\[", "\\\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
"""


def _mathjax_dir() -> Path:
    candidates = []
    if os.environ.get("ATTNSPEC_MATHJAX_DIR"):
        candidates.append(Path(os.environ["ATTNSPEC_MATHJAX_DIR"]))
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "static" / "mathjax" / "es5" for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parent / "node_modules" / "mathjax" / "es5")
    for path in candidates:
        if (path / ENTRY).is_file():
            return path
    raise PluginError(
        "MathJax 3 not found (the site serves it locally). Install the docs extra "
        "(pip install -e '.[docs]', which brings django-static-mathjax), or set ATTNSPEC_MATHJAX_DIR "
        f"to a MathJax es5 directory holding {ENTRY}. Looked in: " + ", ".join(map(str, candidates)))


def _existing(nav, docs_dir: Path):
    """The nav without the pages whose markdown file is missing (sections emptied by that go too)."""
    kept = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                value = _existing(value, docs_dir)
                if value:
                    kept.append({title: value})
            elif value.startswith(("http://", "https://")) or (docs_dir / value).is_file():
                kept.append(item)
            else:
                log.info("attnspec: %s is not in docs/ (yet); left out of the nav", value)
        elif isinstance(item, str) and not (docs_dir / item).is_file():
            log.info("attnspec: %s is not in docs/ (yet); left out of the nav", item)
        else:
            kept.append(item)
    return kept


def on_config(config, **kwargs):
    if config.nav:
        config.nav = _existing(config.nav, Path(config.docs_dir))
    return config


def on_files(files, config, **kwargs):
    """Add MathJax and its configuration to the site as if they were in docs/."""
    root = _mathjax_dir()
    files.append(File.generated(config, "javascripts/mathjax-config.js", content=CONFIG_JS))
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and (len(rel.parts) > 1 or rel.name in COMBINED):
            files.append(File.generated(config, f"{MATHJAX_URI}/{rel.as_posix()}", abs_src_path=str(path)))
    return files
