"""``attnspec`` starts fast: its parser declares arguments and imports no heavy library.

SymPy alone takes most of a second to import (spec.derive needs it), NumPy a
tenth; each subcommand imports what it needs in its handler. What an import
pulls in shows only in a fresh interpreter, hence the subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sympy", "mpmath", "numpy", "scipy", "numba", "hypothesis", "matplotlib", "torch")

# Runs COMMAND's -h in a fresh interpreter; prints the help, then (last line) the heavy top-level
# packages it imported.
SHOW_HELP = """
import contextlib, io, json, sys
import attnspec.impl.cli as cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main(sys.argv[1:] + ["-h"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
print(out.getvalue())
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules} & set(json.loads(%r)))))
"""


def _help(*command: str) -> tuple[str, list[str]]:
    """(help text, heavy packages imported) of ``attnspec COMMAND -h``."""
    proc = subprocess.run([sys.executable, "-c", SHOW_HELP % json.dumps(HEAVY), *command],
                          capture_output=True, text=True, check=True)
    text, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    return text, json.loads(last)


def test_importing_the_cli_does_not_import_sympy():
    proc = subprocess.run([sys.executable, "-c", "import attnspec.impl.cli, sys; print('sympy' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_help_imports_no_heavy_library():
    text, heavy = _help()
    assert "derive" in text and "verify" in text
    assert heavy == []


@pytest.mark.parametrize("command", ["verify", "check", "vectors", "demo", "translate", "derive"])
def test_subcommand_help_imports_no_heavy_library(command):
    text, heavy = _help(command)
    assert f"attnspec {command}" in text
    assert heavy == [], f"`attnspec {command} -h` imported {heavy}"


def test_derive_help_shows_its_options():
    text, _ = _help("derive")
    assert "--out" in text and "--check" in text and "docs/derivations" in text
