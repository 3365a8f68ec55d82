"""benchmarks/experiments.py runs, and its kernels agree with BLAS and with long-double exp.

Each experiment checks its own kernel before timing it (the tiles and
``split_product`` against OpenBLAS, ``expd`` on special values) and raises if
it disagrees; these tests run both experiments at their smallest settings and
check the error bound the docs quote for ``expd``. (The tiles themselves are
tested in tests/test_impl_matmul.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import experiments  # noqa: E402


def test_threads_experiment_runs_and_its_kernels_agree_with_blas():
    cmd = [sys.executable, str(BENCH_DIR / "experiments.py"), "threads", "--dtypes", "float32",
           "--repeats", "1", "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "one pool (BLAS 1 thread)" in proc.stdout


def test_vectorised_exp64_stays_within_one_ulp():
    x = np.concatenate([np.linspace(-745.0, 709.7, 200_001), np.linspace(-1.0, 1.0, 20_001)])
    got = np.empty_like(x)
    experiments.map_expd(x, got)
    exact = np.exp(x.astype(np.longdouble))                # 64-bit significand: 11 bits to spare
    normal = exact >= np.finfo(np.float64).tiny
    ulps = np.abs(got[normal].astype(np.longdouble) - exact[normal]) / np.spacing(got[normal]).astype(np.longdouble)
    assert float(ulps.max()) < 1.0                          # docs/performance.md quotes 0.98 over 3e6 points
