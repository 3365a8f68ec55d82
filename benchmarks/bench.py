"""Side-by-side CPU benchmark of the Numba implementation and the bundled PyTorch model (issue 7).

    python benchmarks/bench.py [--sizes small,medium,large] [--dtypes float32,float64]
                               [--repeats N] [--quick] [--out docs/performance.md]

In ONE process, on 2 threads (torch intra-op threads and the BLAS of NumPy and
SciPy, the one Numba calls, via threadpoolctl), for each size and dtype:

- the training step (forward + backward, no optimizer) in target tokens/s:
  ``attnspec.impl.model.loss_and_grads`` against ``TorchSeq2Seq.loss_and_grads``
  holding the same parameters (``from_params``, i.e. the same state dict). Before
  timing, the two losses must agree (rtol 1e-9 in float64, 1e-4 in float32), or
  the script stops with exit status 3;
- greedy decoding and beam search (K = 5) in output tokens/s. PyTorch greedy is
  the protocol's ``TorchImplementation.greedy_decode`` (``torch_model.greedy_batched``
  pinned to one thread, with scores and attention as Numba returns them) and the
  minimal batched loop ``torch_greedy_batched`` written here (tokens only) on 2 threads; the ratio
  against the target uses the faster of the two. PyTorch beam search is
  ``torch_model.beam_batched`` (the whole batch per step, the Numba rules);
- every matrix product of one decoding call (``decode_products``), timed alone with
  the decoders' own ``mm_nt`` (SciPy's OpenBLAS) and with PyTorch's MKL: what the
  products alone cost a call, and the decoding ratio they leave room for
  (``decode_ceiling``).

Numba and PyTorch calls alternate inside each repeat (so load from other jobs
hits both alike); each figure is the median over ``--repeats`` runs after
warm-up, with the min-max spread. Before each timed call the benchmark waits
``SETTLE_S`` and makes one untimed call of the same function (that call is
also the warm-up): the other library's idle threads spin for up to ~0.1 s
after its last call and would otherwise take the cores from the first
milliseconds of the timed one. The machine's NumPy GEMM rate (square
matrices, same dtype, 2 threads; at the start and at the end of the run, the
best counts) is measured too, and each training step's
rate in matrix-product FLOPs is reported as a fraction of it (``train_flops``).

Subprocesses measure the cold start (first calls in a fresh process with an
empty, then a warm, Numba cache in a temporary NUMBA_CACHE_DIR) and the peak
resident memory (VmHWM) of one large float32 training step per
implementation. ``--quick`` = the small size, float32, 3 repeats, memory at the
first size, no compile from an empty cache: a smoke test.

The tables go between the markers ``<!-- bench:begin -->`` / ``<!-- bench:end -->``
of ``--out``; the rest of the file (the hand-written Profile section) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
SIZES = {   # name: (B, S=T, E=H, V); dot score, input feeding, L = 1
    "tiny": (4, 6, 8, 50),            # for tests/test_benchmarks.py only
    "small": (32, 20, 64, 1000),
    "medium": (64, 30, 256, 8000),
    "large": (16, 50, 512, 16000),
}
TARGETS = {"small": 2.0, "medium": 1.2, "large": 1.0, "tiny": None}   # training step, Numba / PyTorch
DECODE_TARGET, GEMM_FRACTION_TARGET, COLD_TARGET_S, COMPILE_TARGET_S, MEMORY_TARGET = 2.0, 0.60, 3.0, 60.0, 1.5
LOSS_RTOL = {"float64": 1e-9, "float32": 1e-4}
BEAM_K = 5
MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def limit_threads(n: int = THREADS):
    """n threads for torch (if imported) and every BLAS loaded (SciPy's is the one Numba uses)."""
    import scipy.linalg  # noqa: F401  loads SciPy's OpenBLAS so that threadpoolctl sees it
    from threadpoolctl import threadpool_info, threadpool_limits
    limiter = threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return limiter, threadpool_info()


def train_flops(B, S, T, E, H, V) -> int:
    """Matrix-product FLOPs of one training step (2 per multiply-add), L = 1, dot, input feeding.

    forward F = 2 * [ B*S*(E + H)*4H            encoder: input projection + recurrence
                    + B*T*(E + 2H)*4H           decoder: [emb; h~] projection + recurrence
                    + 2*B*T*S*H                 scores h.k_s and context sum_s a_s k_s
                    + B*T*2H*H                  h~ = tanh(W_c [ctx; h])
                    + B*T*H*V ]                 generator
    backward = 2F (one product for the input gradient, one for the weight gradient), total 3F.
    Elementwise work (gates, softmaxes, tanh) is not counted.
    """
    fwd = 2 * (B * S * (E + H) * 4 * H + B * T * (E + 2 * H) * 4 * H + 2 * B * T * S * H
               + B * T * 2 * H * H + B * T * H * V)
    return 3 * fwd


def make_problem(size: str, dtype: str, seed: int = 0):
    """Config, parameters and a full-length batch (every row S source and T target tokens)."""
    from attnspec.impl.model import init_params
    from attnspec.spec.config import Config
    B, S, E, V = SIZES[size]
    T = S
    config = Config(V_src=V, V_tgt=V, E=E, H=E, L=1, score="dot", input_feeding=True, dtype=dtype)
    params = init_params(config, seed)
    rng = np.random.default_rng(seed + 1)
    src = rng.integers(3, V, size=(B, S))
    src_len = np.full(B, S)
    tgt = np.concatenate([np.full((B, 1), config.bos_id), rng.integers(3, V, size=(B, T - 1)),
                          np.full((B, 1), config.eos_id)], axis=1)            # (B, T + 1)
    return config, params, src, src_len, tgt


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stats(times):
    t = np.sort(np.asarray(times))
    return {"median": float(np.median(t)), "min": float(t[0]), "max": float(t[-1]), "n": len(t)}


def gemm_rate(dtype: str, n: int, repeats: int) -> float:
    """GFLOP/s of an (n, n) @ (n, n) NumPy product, median of repeats."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    a @ b
    return 2 * n ** 3 / stats([timed(lambda: a @ b)[0] for _ in range(max(repeats, 5))])["median"] / 1e9


GEMM_BURST = 10
# OpenBLAS's idle workers spin for 2^28 cycles (~0.1 s) before they sleep; PyTorch's OpenMP
# threads for less. Waiting longer than both lets each timed call start on quiet cores.
SETTLE_S = 0.25


def timed_settled(fn):
    """(seconds, result) of fn() after the other library's threads went to sleep and one untimed fn()."""
    time.sleep(SETTLE_S)
    fn()
    return timed(fn)


def decode_products(size: str) -> dict:
    """The matrix products of one decoding call at ``size`` (dot score, input feeding, L = 1):
    {kind: [(name, (M, K, N), per_step, count)]} for kind greedy (R = B rows a step) and beam
    (R = B*K), each an (M, K) @ (K, N) product made ``count`` times a call, or ``count`` times
    a step if ``per_step``. The encoder runs on the B source rows; a step's layer-0 product
    is Numba's one product of [emb; h~; h] (PyTorch makes the same FLOPs in two). The
    attention's products (one query row against S keys) are left out: 2*R*S*H multiply-adds,
    2% of a step's at small size and under 1% at the others."""
    B, S, H, V = SIZES[size]
    E = H
    encoder = [("encoder input", (B * S, E, 4 * H), False, 1), ("encoder recurrence", (B, H, 4 * H), False, S)]
    return {kind: encoder + [("layer 0", (R, E + 2 * H, 4 * H), True, 1), ("W_c", (R, 2 * H, H), True, 1),
                             ("generator", (R, H, V), True, 1)]
            for kind, R in (("greedy", B), ("beam", B * BEAM_K))}


def decode_gemm(size: str, dtype: str, repeats: int) -> dict:
    """Milliseconds per product of every shape in ``decode_products(size)``, {(M, K, N): {"openblas": ms,
    "mkl": ms}}: A (M, K) @ W (N, K)^T into one output, as the decoders multiply, with the
    decoders' own ``mm_nt`` on BLAS (SciPy's OpenBLAS, through Numba) and with PyTorch (MKL),
    in bursts of ``GEMM_BURST``."""
    import torch
    from numba import njit
    from attnspec.impl.kernels_matmul import ON_BLAS, mm_nt

    @njit(cache=True)
    def mm_nt_burst(tiles, A, W, out, n):             # in compiled code: no dispatch per product
        for _ in range(n):
            mm_nt(tiles, A, W, out)

    rng = np.random.default_rng(0)
    shapes = sorted({shape for products in decode_products(size).values() for _, shape, _, _ in products})
    out = {}
    for M, K, N in shapes:
        A, W = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)
        C = np.empty((M, N), dtype)         # into one output, as the decoders write their steps'
        tA, tW, tC = torch.from_numpy(A), torch.from_numpy(W), torch.from_numpy(C.copy())
        # A burst of one library's products, as a decoder calls them: a single product timed
        # right after the other library's measured the other's spinning threads (about 4 ms
        # whatever the size).
        bursts = {"openblas": lambda: mm_nt_burst(ON_BLAS, A, W, C, GEMM_BURST),
                  "mkl": lambda: [torch.matmul(tA, tW.T, out=tC) for _ in range(GEMM_BURST)]}
        times = {"openblas": [], "mkl": []}
        for _ in range(max(repeats, 5)):                  # alternate, as everywhere else
            for lib, burst in bursts.items():
                times[lib].append(timed_settled(burst)[0] / GEMM_BURST)
        out[(M, K, N)] = {k: stats(v)["median"] * 1e3 for k, v in times.items()}
    return out


def torch_greedy_batched(model, src, src_len, max_len):
    """Greedy decoding written the way one writes it in PyTorch: whole batch per step, no per-row loop."""
    import torch
    import torch.nn.functional as F
    c = model.config
    src_t, len_t = torch.from_numpy(src), torch.from_numpy(src_len)
    B, S = src_t.shape
    with torch.no_grad():
        enc, state = model.encoder(src_t, len_t)                              # (B, S, H)
        mask = torch.arange(S).unsqueeze(0) < len_t.unsqueeze(1)
        keys = model.attention.keys(enc)
        y = torch.full((B, 1), c.bos_id, dtype=torch.int64)
        h_tilde = torch.zeros(B, 1, c.H, dtype=getattr(torch, c.dtype))
        done = torch.zeros(B, dtype=torch.bool)
        lengths = torch.zeros(B, dtype=torch.int64)
        tokens = []
        for _ in range(max_len):
            u = torch.cat([model.decoder.embedding(y), h_tilde], dim=-1)       # (B, 1, E + H)
            h, state = model.decoder.lstm(u, state)
            h_tilde, _ = model.attention(h, keys, enc, mask)
            best = F.log_softmax(model.generator(h_tilde[:, 0]), dim=-1).argmax(dim=-1)   # (B,)
            lengths += ~done
            tokens.append(best)
            done |= best == c.eos_id
            if bool(done.all()):
                break
            y = best.unsqueeze(1)
    return torch.stack(tokens, 1).numpy(), lengths.numpy()


def bench_case(size, dtype, repeats, perturb_torch=False):
    """Every measurement of one (size, dtype) in this process; returns a dict of stats."""
    import torch
    from attnspec.impl.decode import beam_search, greedy_decode
    from attnspec.impl.model import loss_and_grads
    from attnspec.impl.torch_model import TorchImplementation, TorchSeq2Seq, beam_batched
    config, params, src, src_len, tgt = make_problem(size, dtype)
    B, S, E, V = SIZES[size]
    T = S
    model = TorchSeq2Seq.from_params(params, config)
    if perturb_torch:                                  # only to test that the check below bites
        with torch.no_grad():
            model.generator.bias.add_(0.5 * torch.arange(V, dtype=model.generator.bias.dtype) / V)

    # -- the two implementations must compute the same loss before anything is timed --
    loss_nb, _ = loss_and_grads(params, config, src, src_len, tgt)
    loss_pt, _ = model.loss_and_grads(src, src_len, tgt)
    rel = abs(loss_nb - loss_pt) / abs(loss_pt)
    if not rel <= LOSS_RTOL[dtype]:
        print(f"LOSS MISMATCH ({size}, {dtype}): Numba {loss_nb!r} vs PyTorch {loss_pt!r}, "
              f"relative difference {rel:.3e} > {LOSS_RTOL[dtype]:g}; refusing to benchmark", file=sys.stderr)
        sys.exit(3)

    torch_impl = TorchImplementation()
    fns = {
        "train_numba": lambda: loss_and_grads(params, config, src, src_len, tgt),
        "train_torch": lambda: model.loss_and_grads(src, src_len, tgt),
        "greedy_numba": lambda: int(greedy_decode(params, config, src, src_len, T).lengths.sum()),
        "greedy_torch_protocol": lambda: int(torch_impl.greedy_decode(params, config, src, src_len, T).lengths.sum()),
        "greedy_torch_batched": lambda: int(torch_greedy_batched(model, src, src_len, T)[1].sum()),
        "beam_numba": lambda: int(beam_search(params, config, src, src_len, BEAM_K, T).lengths.sum()),
        "beam_torch": lambda: int(beam_batched(model, src, src_len, BEAM_K, T).lengths.sum()),
    }
    times = {k: [] for k in fns}
    tokens = {}
    for _ in range(repeats):                           # alternate: both see the same machine load
        for k, fn in fns.items():
            dt, out = timed_settled(fn)
            times[k].append(dt)
            tokens[k] = out if isinstance(out, int) else B * T
    out = {"loss_numba": loss_nb, "loss_torch": loss_pt, "loss_rel_diff": rel,
           "flops": train_flops(B, S, T, E, E, V), "decode_gemm": decode_gemm(size, dtype, repeats)}
    for k in fns:
        s = stats(times[k])
        out[k] = {**s, "tokens": tokens[k], "tps": tokens[k] / s["median"],
                  "tps_min": tokens[k] / s["max"], "tps_max": tokens[k] / s["min"]}
    return out


# -- subprocess measurements ---------------------------------------------------------------

def child(kind: str, size: str, dtypes) -> dict:
    """Run inside a fresh interpreter (``--child``): cold start, or one step's peak memory."""
    def status_mb(field):
        """VmRSS (now) or VmHWM (peak) of this process in MB. Not getrusage's ru_maxrss: Linux
        carries the parent's high-water mark over fork + exec, so a child of this (torch-laden)
        benchmark would report the parent's peak."""
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    if kind == "cold":
        t0 = time.perf_counter()
        from attnspec.impl.decode import beam_search, greedy_decode
        from attnspec.impl.model import loss_and_grads
        limit_threads()
        res = {"import_s": time.perf_counter() - t0, "size": size, "dtypes": list(dtypes)}
        for dtype in dtypes:
            config, params, src, src_len, tgt = make_problem(size, dtype)
            res[f"train_{dtype}_s"] = timed(lambda: loss_and_grads(params, config, src, src_len, tgt))[0]
            res[f"greedy_{dtype}_s"] = timed(lambda: greedy_decode(params, config, src, src_len, 5))[0]
            res[f"beam_{dtype}_s"] = timed(lambda: beam_search(params, config, src, src_len, BEAM_K, 5))[0]
        res["total_s"] = time.perf_counter() - t0
        return res
    impl = kind.split("-")[1]
    if impl == "torch":
        import torch  # noqa: F401
        from attnspec.impl.torch_model import TorchSeq2Seq
    from attnspec.impl.model import loss_and_grads
    limit_threads()
    config, params, src, src_len, tgt = make_problem(size, "float32")
    if impl == "torch":
        model = TorchSeq2Seq.from_params(params, config)
        del params
        step = lambda: model.loss_and_grads(src, src_len, tgt)  # noqa: E731
    else:
        step = lambda: loss_and_grads(params, config, src, src_len, tgt)  # noqa: E731
    import gc
    gc.collect()
    try:                                # reset VmHWM to the current RSS: the peak is then the step's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = status_mb("VmRSS")
    step()
    step()
    return {"before_mb": before, "peak_mb": status_mb("VmHWM"), "hwm_reset": reset}


def run_child(kind: str, size: str, dtypes=("float32",), env=None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--sizes", size,
           "--dtypes", ",".join(dtypes)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- report ---------------------------------------------------------------------------------

def machine(blas_info) -> list[str]:
    import numba
    import scipy
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    blas = "; ".join(f"{i['prefix']} {i.get('version')} ({i['user_api']}, {i['num_threads']} threads)"
                     for i in blas_info)
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    # the same "AMD EPYC" name has come with and without AVX-512 on this VM: LLVM's view
    # of the CPU decides the vector width of every kernel, so it goes into the report
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    avx = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "no AVX2"
    return [f"- CPU: {cpu}, {os.cpu_count()} logical cores (LLVM: {llvm.get_host_cpu_name()}, {avx}); "
            f"load average (1/5/15 min) at the start: {load}",
            f"- Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
            f"Numba {numba.__version__}, PyTorch {torch.__version__}",
            f"- threads: torch.get_num_threads() = {torch.get_num_threads()}; BLAS: {blas}"]


def fmt_tps(d) -> str:
    return f"{d['tps']:,.0f} ({d['tps_min']:,.0f}-{d['tps_max']:,.0f})"


def verdict(ratio, target) -> str:
    if target is None:
        return "-"
    return f"{'met' if ratio >= target else 'NOT met'} (>= {target:g}x)"


def best_torch_s(r: dict, kind: str) -> float:
    """PyTorch's median seconds a call for ``kind``: the faster of its two greedy decoders, or its beam search."""
    if kind == "greedy":
        return min(r["greedy_torch_protocol"]["median"], r["greedy_torch_batched"]["median"])
    return r["beam_torch"]["median"]


def decode_ceiling(r: dict, kind: str, size: str) -> dict:
    """What the matrix products alone of one decoding call cost, and the Numba / PyTorch ratio a
    decoder doing nothing else could reach: {"openblas_s", "mkl_s", "best_s": the products' seconds
    a call at OpenBLAS's rate, MKL's, and the faster of the two per product; "generator": the
    generator's share of openblas_s; "ceiling_openblas", "ceiling": ``best_torch_s`` over
    openblas_s and over best_s}. A step's products count steps = output tokens / B times (the
    mean output length: at most the steps the decoder ran, so the ceilings are upper bounds)."""
    steps = r[f"{kind}_numba"]["tokens"] / SIZES[size][0]
    openblas_s = mkl_s = best_s = generator_s = 0.0
    for name, shape, per_step, count in decode_products(size)[kind]:
        n = count * (steps if per_step else 1)
        ms = r["decode_gemm"][shape]
        openblas_s += n * ms["openblas"] / 1e3
        mkl_s += n * ms["mkl"] / 1e3
        best_s += n * min(ms["openblas"], ms["mkl"]) / 1e3
        if name == "generator":
            generator_s = n * ms["openblas"] / 1e3
    torch_s = best_torch_s(r, kind)
    return {"openblas_s": openblas_s, "mkl_s": mkl_s, "best_s": best_s, "generator": generator_s / openblas_s,
            "ceiling_openblas": torch_s / openblas_s, "ceiling": torch_s / best_s}


def report(results, gemm, cold, compile_, memory, args, blas_info) -> str:
    lines = [MARK_BEGIN, "",
             "## Measured now", "",
             "Produced by", "", "```bash", f"python benchmarks/bench.py {' '.join(args.argv)}", "```", "",
             f"on {time.strftime('%Y-%m-%d %H:%M')}:", ""] + machine(blas_info) + [
             "",
             "The machine is shared (CI jobs may run beside the benchmark): absolute numbers are noisy. "
             "Numba and PyTorch calls alternate within each repeat, so the **ratios** are the figures to "
             f"read; each timed call follows a {SETTLE_S} s pause (the other library's idle threads stop "
             "spinning) and one untimed call of the same function. Cells are `median (min-max)` over "
             "the repeats; batches are full length (every row S source and T target tokens, T = S), dot score, input feeding, L = 1.", "",
             "### Training step (forward + backward, no optimizer), target tokens/s", "",
             "| size | dtype | Numba | PyTorch | Numba / PyTorch | target | loss Numba / PyTorch (rel. diff) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (size, dtype), r in results.items():
        ratio = r["train_numba"]["tps"] / r["train_torch"]["tps"]
        lines.append(f"| {size} | {dtype} | {fmt_tps(r['train_numba'])} | {fmt_tps(r['train_torch'])} | "
                     f"**{ratio:.2f}x** | {verdict(ratio, TARGETS[size])} | "
                     f"{r['loss_numba']:.6f} / {r['loss_torch']:.6f} ({r['loss_rel_diff']:.1e}) |")
    lines += ["", "### Decoding, output tokens/s (max_len = T)", "",
              "PyTorch protocol = `TorchImplementation.greedy_decode` (`torch_model.greedy_batched`, whole "
              "batch per step, scores and attention as Numba returns them, pinned to 1 thread); PyTorch "
              "batched = the minimal whole-batch loop `torch_greedy_batched` in bench.py (tokens only) on 2 "
              "threads. The greedy ratio uses the faster PyTorch variant. Beam PyTorch = "
              "`torch_model.beam_batched` (whole batch per step, same rules and results as Numba's).", "",
              "| size | dtype | greedy Numba | greedy PyTorch protocol | greedy PyTorch batched | "
              "Numba / best PyTorch | target | beam K=5 Numba | beam K=5 PyTorch | beam Numba / PyTorch | target |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (size, dtype), r in results.items():
        best = max(r["greedy_torch_protocol"]["tps"], r["greedy_torch_batched"]["tps"])
        ratio = r["greedy_numba"]["tps"] / best
        beam = r["beam_numba"]["tps"] / r["beam_torch"]["tps"]
        lines.append(f"| {size} | {dtype} | {fmt_tps(r['greedy_numba'])} | {fmt_tps(r['greedy_torch_protocol'])} | "
                     f"{fmt_tps(r['greedy_torch_batched'])} | **{ratio:.2f}x** | {verdict(ratio, DECODE_TARGET)} | "
                     f"{fmt_tps(r['beam_numba'])} | {fmt_tps(r['beam_torch'])} | **{beam:.2f}x** | "
                     f"{verdict(beam, DECODE_TARGET)} |")
    lines += ["", "Every matrix product of one decoding call (`decode_products`: the encoder's input projection "
              "and its S recurrent products on B rows; per step, on R rows (B greedy, B*K beam), layer 0's "
              "product of [emb; h~; h], W_c [ctx; h] and the generator), each timed alone as `A @ W.T` into one "
              f"output on 2 threads, median over bursts of {GEMM_BURST} products of one library at a time: the "
              "decoders' own `mm_nt` on BLAS (SciPy's OpenBLAS, through Numba) and PyTorch's `matmul` (MKL). "
              "Their sum is what the products alone cost a call, steps = output tokens / B. The ceilings are the largest "
              "ratio over the best PyTorch a decoder could reach if everything but these products took no "
              "time: PyTorch's median call / the products' time at OpenBLAS's rate (Numba's library), and "
              "at the faster library's rate for each product. A ceiling below the 2x target puts the target "
              "out of reach of these products.", "",
              "| size | dtype | decoder | products at OpenBLAS's rate | at MKL's | generator's share of them | "
              "Numba call | best PyTorch call | ceiling at OpenBLAS's rate | ceiling at the faster rate |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (size, dtype), r in results.items():
        for kind in ("greedy", "beam"):
            c = decode_ceiling(r, kind, size)
            lines.append(f"| {size} | {dtype} | {kind} | {c['openblas_s'] * 1e3:.2f} ms | {c['mkl_s'] * 1e3:.2f} ms | "
                         f"{c['generator']:.0%} | {r[f'{kind}_numba']['median'] * 1e3:.2f} ms | "
                         f"{best_torch_s(r, kind) * 1e3:.2f} ms | {c['ceiling_openblas']:.2f}x | {c['ceiling']:.2f}x |")
    lines += ["", "### Fraction of the machine's GEMM rate reached by the training step", "",
              "GEMM rate: NumPy `a @ b` on square (n, n) matrices, same dtype, 2 threads, median, measured "
              "at the start and again at the end of the run; the machine rate is the best of the four (a "
              "load that slows one measurement must not lower the yardstick). Step rate = `train_flops` / median step time, with "
              "`train_flops = 3 * 2 * [B*S*(E+H)*4H + B*T*(E+2H)*4H + 2*B*T*S*H + B*T*2H*H + B*T*H*V]` "
              "(forward matrix products, x3 for backward; elementwise work not counted).", "",
              "| dtype | " + " | ".join(f"GEMM {key}" for key in next(iter(gemm.values()))) + " |",
              "| --- |" + " --- |" * len(next(iter(gemm.values())))]
    for dtype, rates in gemm.items():
        lines.append(f"| {dtype} | " + " | ".join(f"{rate:.1f} GFLOP/s" for rate in rates.values()) + " |")
    lines += ["", "| size | dtype | GFLOP per step | Numba GFLOP/s (fraction) | PyTorch GFLOP/s (fraction) | target |",
              "| --- | --- | --- | --- | --- | --- |"]
    for (size, dtype), r in results.items():
        peak = max(gemm[dtype].values())
        nb, pt = (r["flops"] / r[k]["median"] / 1e9 for k in ("train_numba", "train_torch"))
        tgt = verdict(nb / peak, GEMM_FRACTION_TARGET) if size == "large" else "-"
        lines.append(f"| {size} | {dtype} | {r['flops'] / 1e9:.2f} | {nb:.1f} ({nb / peak:.0%}) | "
                     f"{pt:.1f} ({pt / peak:.0%}) | {tgt.replace('>= 0.6x', '>= 60%')} |")
    lines += ["", f"### Cold start (Numba, fresh process, size {cold['size']})", "",
              "Import of attnspec.impl, then the first call of each API in each dtype; the empty cache is a "
              "fresh temporary NUMBA_CACHE_DIR, the warm cache the same directory afterwards.", ""]
    rows = [("warm cache", cold)] + ([("empty cache (compilation)", compile_)] if compile_ else [])
    cols = [(k, d) for d in cold["dtypes"] for k in ("train", "greedy", "beam")]
    lines += ["| Numba cache | import | " + " | ".join(f"first {k} {d}" for k, d in cols) + " | total | target |",
              "| --- |" + " --- |" * (len(cols) + 3)]
    for name, c in rows:
        target = COLD_TARGET_S if name == "warm cache" else COMPILE_TARGET_S
        lines.append(f"| {name} | {c['import_s']:.2f} s | " + " | ".join(
            f"{c[f'{k}_{d}_s']:.2f} s" for k, d in cols)
            + f" | {c['total_s']:.2f} s | {'met' if c['total_s'] < target else 'NOT met'} (< {target:g} s) |")
    if not compile_:
        lines.append("\n(compilation from an empty cache not measured in --quick mode)")
    mem_size = memory["size"]
    nb, pt = memory["numba"], memory["torch"]
    lines += ["", f"### Peak resident memory, {mem_size} float32 training step (own subprocess each)", "",
              "Two steps in a fresh interpreter per implementation; peak = VmHWM of /proc/self/status, "
              "reset (clear_refs 5) after imports, parameters and batch are set up"
              + ("" if nb["hwm_reset"] and pt["hwm_reset"] else " (the reset was refused here: the peak "
                 "includes the set-up)") + ". (getrusage's ru_maxrss is not used: Linux carries the "
              "parent's high-water mark across fork + exec.)", "",
              "| | RSS before the step (imports, parameters, batch) | peak RSS | step increment |",
              "| --- | --- | --- | --- |",
              f"| Numba | {nb['before_mb']:.0f} MB | {nb['peak_mb']:.0f} MB | {nb['peak_mb'] - nb['before_mb']:.0f} MB |",
              f"| PyTorch | {pt['before_mb']:.0f} MB | {pt['peak_mb']:.0f} MB | {pt['peak_mb'] - pt['before_mb']:.0f} MB |",
              "", f"Peak ratio Numba / PyTorch = **{nb['peak_mb'] / pt['peak_mb']:.2f}x** "
              f"({'met' if nb['peak_mb'] <= MEMORY_TARGET * pt['peak_mb'] else 'NOT met'}, target <= "
              f"{MEMORY_TARGET:g}x); step increments ratio = "
              f"{(nb['peak_mb'] - nb['before_mb']) / max(pt['peak_mb'] - pt['before_mb'], 1):.2f}x "
              "(the PyTorch process also carries the torch import, ~hundreds of MB).", "", MARK_END]
    return "\n".join(lines) + "\n"


def write_report(path: Path, block: str) -> None:
    """Replace the bench block of ``path`` (or create the file); keep everything outside the markers."""
    if path.exists() and MARK_BEGIN in (text := path.read_text()):
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        text = head + block.rstrip("\n") + tail
    else:
        text = "# Performance\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="comma-separated, of " + ",".join(SIZES))
    p.add_argument("--dtypes", default=None, help="comma-separated, of float32,float64")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5, quick 3)")
    p.add_argument("--quick", action="store_true", help="small size, float32, 3 repeats, no compile-from-empty-cache")
    p.add_argument("--out", default="docs/performance.md")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--perturb-torch", action="store_true", help=argparse.SUPPRESS)  # tests the loss check
    args = p.parse_args(argv)
    args.argv = argv
    sizes = (args.sizes or ("small" if args.quick else "small,medium,large")).split(",")
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,float64")).split(",")
    if args.child:
        print(json.dumps(child(args.child, sizes[0], dtypes)))
        return 0
    repeats = args.repeats or (3 if args.quick else 5)
    import torch  # noqa: F401  (before limit_threads, so that its threads are limited too)
    _, blas_info = limit_threads()
    gemm = {d: {f"n={n}, start": gemm_rate(d, n, repeats) for n in (256, 1024)} for d in dtypes}
    print("GEMM GFLOP/s:", gemm, flush=True)
    results = {}
    for size in sizes:
        for dtype in dtypes:
            results[size, dtype] = r = bench_case(size, dtype, repeats, args.perturb_torch)
            print(f"{size} {dtype}: train {r['train_numba']['tps']:.0f} vs {r['train_torch']['tps']:.0f} tok/s, "
                  f"greedy {r['greedy_numba']['tps']:.0f} vs {r['greedy_torch_batched']['tps']:.0f}, "
                  f"beam {r['beam_numba']['tps']:.0f}", flush=True)
    for d in dtypes:
        gemm[d].update({f"n={n}, end": gemm_rate(d, n, repeats) for n in (256, 1024)})
    print("GEMM GFLOP/s:", gemm, flush=True)
    cold_size = sizes[0] if args.quick else "small"
    if args.quick:                     # the project's own Numba cache, warm after the runs above
        compile_, cold = None, run_child("cold", cold_size, dtypes)
    else:
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            compile_ = run_child("cold", cold_size, dtypes, env)              # empty cache: compiles
            cold = run_child("cold", cold_size, dtypes, env)                  # the same cache, now warm
    print("cold start:", cold, "compile:", compile_, flush=True)
    mem_size = sizes[0] if args.quick else "large"
    memory = {"size": mem_size, "numba": run_child("memory-numba", mem_size),
              "torch": run_child("memory-torch", mem_size)}
    print("memory:", memory, flush=True)
    out = Path(args.out)
    write_report(out if out.is_absolute() else ROOT / out, report(results, gemm, cold, compile_, memory, args, blas_info))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
