"""benchmarks/experiments.py (both experiments) and profile_decode.py run and print their tables.

The threads experiment checks its own kernels before timing them (the tiles
and ``split_product`` against OpenBLAS) and raises if they disagree; the tests
run each script at its smallest settings. (The tiles themselves are tested in
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


def test_profile_decode_prints_its_table():
    cmd = [sys.executable, str(BENCH_DIR / "profile_decode.py"), "--sizes", "tiny", "--dtypes", "float64",
           "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for row in ("| whole decode, max_len = 6 |", "| encoder (encode) |", "| one step: decode_step |",
                "| one step: greedy_pick over 4 rows |", "| piece | float64, R = 4 | float64, R = 20 |",
                "| vocabulary |", "| LSTM cell |"):
        assert row in proc.stdout, proc.stdout


def test_transcendentals_experiment_prints_every_function():
    cmd = [sys.executable, str(BENCH_DIR / "experiments.py"), "transcendentals", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for dt in ("float32", "float64"):
        for fn in ("exp", "tanh", "sigmoid"):
            assert f"| {dt} | {fn} |" in proc.stdout, proc.stdout
