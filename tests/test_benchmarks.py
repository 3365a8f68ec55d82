"""benchmarks/bench.py runs end to end and refuses to time implementations whose losses differ.

Both tests run the script in a subprocess on the reduced size ``tiny``
(B=4, S=T=6, E=H=8, V=50) with ``--quick``, one dtype; each takes a few
seconds once the Numba cache is warm. Skipped without PyTorch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def run_bench(tmp_path, *extra):
    out = tmp_path / "performance.md"
    cmd = [sys.executable, str(BENCH), "--quick", "--sizes", "tiny", "--dtypes", "float64", "--repeats", "1",
           "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300), out


def test_quick_benchmark_writes_the_tables(tmp_path):
    proc, out = run_bench(tmp_path)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout}\n{proc.stderr}"
    text = out.read_text()
    for heading in ("### Training step", "### Decoding", "GEMM rate", "### Cold start", "### Peak resident memory"):
        assert heading in text, f"{heading!r} missing from the report:\n{text}"
    row = next((line for line in text.splitlines() if line.startswith("| tiny | float64 |")), None)
    assert row is not None and "x**" in row, f"no training-step row with a ratio for tiny/float64:\n{text}"
    assert "bench.py --quick --sizes tiny" in text, "the report must quote the command that produced it"


def test_benchmark_refuses_to_time_models_whose_losses_differ(tmp_path):
    proc, out = run_bench(tmp_path, "--perturb-torch")
    assert proc.returncode == 3, f"expected the loss check to stop the run (exit 3), got {proc.returncode}:\n{proc.stderr}"
    assert "LOSS MISMATCH" in proc.stderr, proc.stderr
    assert not out.exists(), "no report may be written when the losses disagree"
