"""benchmarks/experiments.py runs, and its kernels agree with BLAS.

The experiment checks its own kernels before timing them (the tiles and
``split_product`` against OpenBLAS) and raises if they disagree; this test runs
it at its smallest settings. (The tiles themselves are tested in
tests/test_impl_matmul.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def test_threads_experiment_runs_and_its_kernels_agree_with_blas():
    cmd = [sys.executable, str(BENCH_DIR / "experiments.py"), "threads", "--dtypes", "float32",
           "--repeats", "1", "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "one pool (BLAS 1 thread)" in proc.stdout
