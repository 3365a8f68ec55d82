"""benchmarks/bench.py runs end to end, refuses to time implementations whose losses differ,
and computes the decoding ceiling (every product of a call) as documented.

The first two tests run the script in a subprocess on the reduced size ``tiny``
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


def test_decode_ceiling_sums_every_product_of_a_call_at_the_faster_rate():
    sys.path.insert(0, str(BENCH.parent))
    import bench
    B, S, H, V = bench.SIZES["small"]
    T = S
    products = bench.decode_products("small")
    # OpenBLAS 1 ms for every product, MKL 2 ms, but for the generator, where MKL takes 0.5 ms
    times = {shape: ({"openblas": 1.0, "mkl": 0.5} if name == "generator" else {"openblas": 1.0, "mkl": 2.0})
             for kind in products for name, shape, _, _ in products[kind]}
    r = {"greedy_torch_protocol": {"median": 3.0}, "greedy_torch_batched": {"median": 1.0},
         "beam_torch": {"median": 2.0}, "greedy_numba": {"tokens": B * T}, "beam_numba": {"tokens": B * T // 2},
         "decode_gemm": times}
    assert [name for name, *_ in products["greedy"]] == ["encoder input", "encoder recurrence", "layer 0", "W_c",
                                                         "generator"]
    assert products["beam"][4][1] == (B * bench.BEAM_K, H, V) and products["beam"][1][1] == (B, H, 4 * H)
    # greedy, T steps: the encoder's 1 + S products, then 3 a step; best: the generator at 0.5 ms
    g = bench.decode_ceiling(r, "greedy", "small")
    assert g["openblas_s"] == pytest.approx((1 + S + 3 * T) * 1e-3)
    assert g["mkl_s"] == pytest.approx(((1 + S + 2 * T) * 2.0 + T * 0.5) * 1e-3)
    assert g["ceiling"] == pytest.approx(1.0 / ((1 + S + 2 * T + T * 0.5) * 1e-3))   # the faster PyTorch, 1 s
    assert g["ceiling_openblas"] == pytest.approx(1.0 / ((1 + S + 3 * T) * 1e-3))
    assert g["generator"] == pytest.approx(T / (1 + S + 3 * T))
    # beam: half the tokens, so T / 2 steps; the encoder's products are made once a call all the same
    b = bench.decode_ceiling(r, "beam", "small")
    assert b["openblas_s"] == pytest.approx((1 + S + 3 * T / 2) * 1e-3)
    assert b["ceiling"] == pytest.approx(2.0 / ((1 + S + 2 * T / 2 + T / 2 * 0.5) * 1e-3))
