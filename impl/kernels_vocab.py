"""Vocabulary kernels: the generator's softmax work over V outputs, row by row, fused.

For a row x = logits (bias included) of one decoder step, with m = max_v x_v:

    log p_v = (x_v - m) - log(sum_w exp(x_w - m))          (log-softmax, overflow-free)
    dL/dx_v = (p_v - [v = y]) / count                      (cross-entropy, MODEL.md)

Every routine makes at most three passes over a row (max; exp and sum; the
result), writes its result in place or into one reused scratch row, and never
materialises log p, p and dL/dx as three separate (N, V) arrays: at the sizes
of issue 7 these are 50-60 MB each and their traffic cost more than the exps.

``exp_shifted_sum`` and ``log_sum_exp_shifted`` call ``kernels_math.exp_``
(``exp_nonpos_`` where only the sum is kept) in a loop that LLVM vectorises
and sum in 16 interleaved partial sums (``sum16``): about 3x faster over a row
than libm's ``exp`` one element at a time and one running sum.
"""

from __future__ import annotations

import numpy as np

from .kernels_math import exp_, exp_nonpos_, maximum_
from .kernels_util import kernel


# -- exp of a shifted row ----------------------------------------------------------------
# One loop per aliasing: a loop with separate input and output arrays is guarded by
# LLVM's overlap test, which an exact alias (in place) fails, running it unvectorised.

@kernel
def exp_shifted_sum(x, m):
    """x[v] = exp(x[v] - m) in place for a row x (V,); returns the sum of the new x."""
    for v in range(x.shape[0]):           # vectorised: no reduction in this loop
        x[v] = exp_(x[v] - m)
    return sum16(x)


@kernel
def sum16(x):
    """The sum of a row x (V,) in 16 interleaved partial sums, then added in order.

    A float reduction in one accumulator is one long chain of dependent adds (no
    reassociation without fastmath); sixteen chains overlap, in an order fixed by
    V alone, so results stay deterministic whatever the CPU's vector width.
    Scalars, not a (16,) array, whose loads and stores would stay in memory (LLVM
    cannot tell them from x's). They stay scalar adds: only LLVM's SLP vectoriser
    could pack them, and Numba leaves it off (switched on for the whole process,
    the float32 sum ran 2.4x faster, small greedy decoding no faster: docs/performance.md).
    """
    V = x.shape[0]
    V16 = V - V % 16
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = x.dtype.type(0)
    for v in range(0, V16, 16):
        s0 += x[v]; s1 += x[v + 1]; s2 += x[v + 2]; s3 += x[v + 3]              # noqa: E702
        s4 += x[v + 4]; s5 += x[v + 5]; s6 += x[v + 6]; s7 += x[v + 7]          # noqa: E702
        s8 += x[v + 8]; s9 += x[v + 9]; s10 += x[v + 10]; s11 += x[v + 11]      # noqa: E702
        s12 += x[v + 12]; s13 += x[v + 13]; s14 += x[v + 14]; s15 += x[v + 15]  # noqa: E702
    total = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11 + s12 + s13 + s14 + s15
    for v in range(V16, V):
        total += x[v]
    return total


# -- row routines ------------------------------------------------------------------------

@kernel
def add_bias_max(x, bias):
    """x += bias in place for a row x (V,); returns max_v x_v, NaN if some x_v is NaN."""
    m = x[0] + bias[0]
    for v in range(x.shape[0]):           # vectorised: ``maximum_`` is exact in any order
        xv = x[v] + bias[v]
        x[v] = xv
        m = maximum_(m, xv)
    return m


@kernel
def log_sum_exp_shifted(x, m, scratch):
    """log(sum_v exp(x_v - m)) for a row x (V,) whose maximum is m, x untouched (exps in scratch (V,)).

    The terms come from ``exp_nonpos_``, which flushes those below e^-87 (float32)
    or e^-708 (float64) to 0: with m the maximum, one term is exactly 1, and the sum
    has the bits ``exp_`` would give unless a partial sum lands exactly on a rounding
    midpoint (docs/implementation.md; tests/test_impl_kernels.py).
    """
    for v in range(x.shape[0]):           # vectorised: scratch is not x, so LLVM's overlap test passes
        scratch[v] = exp_nonpos_(x[v] - m)
    return np.log(sum16(scratch))


@kernel
def log_softmax_rows(x, bias):
    """x (N, V) -> log_softmax(x + bias) in place, row by row."""
    scratch = np.empty(x.shape[1], x.dtype)
    for n in range(x.shape[0]):
        row = x[n]
        m = add_bias_max(row, bias)
        lse = log_sum_exp_shifted(row, m, scratch)
        for v in range(row.shape[0]):
            row[v] = (row[v] - m) - lse


@kernel
def log_softmax_grad_rows(x, bias, labels, pad, count, picked, db):
    """Fused loss and gradient over rows x (N, V) of logits without bias; in place.

    For each row n with label y = labels[n] != pad: picked[n] = log p_y and
    x[n] becomes dL/dlogits = (p - onehot(y)) / count; PAD rows become 0 and
    picked[n] = 0. db (V,) receives the column sums of the result (= dL/db_out),
    accumulated in row order.
    """
    N, V = x.shape
    one = x.dtype.type(1)
    for n in range(N):
        row = x[n]
        y = labels[n]
        if y == pad:
            for v in range(V):
                row[v] = 0.0
            picked[n] = 0.0
            continue
        m = add_bias_max(row, bias)
        x_y = row[y]
        total = exp_shifted_sum(row, m)                              # row = exp(x - m)
        picked[n] = (x_y - m) - np.log(total)
        p_y = row[y] / total
        # p_v / count as one division by total * count: two roundings, as with two
        # divisions, in half the time (division throughput bounds this pass in float64)
        scale = total * count
        for v in range(V):
            row[v] = row[v] / scale
        row[y] = (p_y - one) / count
        for v in range(V):
            db[v] += row[v]


# Tie margin of the argmax scans below: log p_v = fl(fl(x_v - m) - lse) can equal the
# largest log-probability -lse only if |x_v - m| is within an ulp of lse, i.e. at most
# eps * |lse|; 4 float32 epsilons is more than enough for both dtypes. Only a prefilter:
# the exact comparison of log-probabilities decides.
_TIE_MARGIN = 4.8e-7


@kernel
def greedy_pick(x, bias, scratch):
    """Argmax of log_softmax(x + bias) for a row of logits x (V,) (modified in place).

    Returns (v, log p_v), lowest id on ties of the computed log-probabilities: the
    first v whose log p_v equals the largest, -lse (log p is monotone in x, so no
    log p exceeds it). One early-exit scan, a compare per logit until it stops.
    """
    m = add_bias_max(x, bias)
    lse = log_sum_exp_shifted(x, m, scratch)
    best_lp = (m - m) - lse
    threshold = m - _TIE_MARGIN * abs(lse)
    for v in range(x.shape[0]):
        if x[v] >= threshold and (x[v] - m) - lse == best_lp:
            return v, best_lp
    return 0, (x[0] - m) - lse                                        # NaN logits: reported by the caller


@kernel
def n_blocks(V):
    """The number of blocks ``top_log_probs`` splits a row of V logits into: 16 * ceil(V / 256),
    so that no block holds more than 16 logits and the passes over blocks have no remainder."""
    return 16 * ((V + 255) // 256)


@kernel
def add_bias_block_max(x, bias, block_max):
    """x += bias in place for a row x (V,) and the maxima of its nb = len(block_max) blocks,
    nb <= V; returns max_v x_v, NaN if some x_v is NaN.

    Block i holds the logits i, i + nb, i + 2 nb, ... (strided, not contiguous): then the
    maxima are an elementwise fold over the row's chunks of nb logits, which LLVM
    vectorises whole when nb is a multiple of the vector width, as ``n_blocks`` makes it.
    Contiguous blocks need one horizontal maximum per 16 logits: 0.8 against 0.4 ns
    per logit with the bias pass included (float32, V = 1000, docs/performance-history.md).
    """
    V, nb = x.shape[0], block_max.shape[0]
    for i in range(nb):
        xv = x[i] + bias[i]
        x[i] = xv
        block_max[i] = xv
    for lo in range(nb, V, nb):
        # slices: with them LLVM proves the chunk and block_max apart (2x faster than indexing x)
        x_c, bias_c = x[lo:lo + nb], bias[lo:lo + nb]
        for i in range(x_c.shape[0]):
            xv = x_c[i] + bias_c[i]
            x_c[i] = xv
            block_max[i] = maximum_(block_max[i], xv)
    m = block_max[0]
    for i in range(nb):
        m = maximum_(m, block_max[i])
    return m


@kernel
def top_log_probs(x, bias, scratch, block_max, top, top_lp, top_x):
    """The M = len(top) best tokens of log_softmax(x + bias) for a row of logits x (V,), V >= M.

    Writes their ids into top and their log-probabilities into top_lp, best
    first, lowest id on ties. scratch (V,) and block_max (``n_blocks(V)``,) are
    work space; top_x (M,) receives the tokens' logits. x is modified in place.

    Only tokens whose logit reaches a floor are ranked, each inserted into a
    sorted list of M by (log p descending, id ascending). The floor: a value
    that at least M block maxima reach (then M tokens reach it, and so does the
    M-th best logit), found by bisection between the smallest block maximum and
    the largest, lowered by a margin wider than any pair of logits whose log p
    can round to equal. Blocks whose maximum is below the floor are skipped whole;
    about M + 1 tokens are ranked for random logits. With fewer than M blocks,
    or V < 16, every token is ranked.
    """
    M, V = top.shape[0], x.shape[0]
    nb = block_max.shape[0]
    if M <= nb <= V:
        m = add_bias_block_max(x, bias, block_max)
    else:
        m = add_bias_max(x, bias)
        nb = 1                                                        # one block: the whole row
        block_max[0] = m
    lse = log_sum_exp_shifted(x, m, scratch)
    floor = -np.inf
    if nb > 1:
        lo = block_max[0]                                             # all nb >= M blocks reach lo
        for i in range(nb):
            lo = min(lo, block_max[i])
        hi = m
        for _ in range(16):                    # the floor only has to be low enough: stop early
            mid = lo + (hi - lo) * 0.5
            count = 0
            for i in range(nb):                                       # vectorised
                count += block_max[i] >= mid
            if count >= M:
                lo = mid
                if count == M:
                    break
            else:
                hi = mid
        floor = lo - _TIE_MARGIN * (abs(lo) + abs(m) + abs(lse))
    # NaN logits make m, lse and the floor NaN: every compare below is then false, and
    # every token is ranked (so top holds M real ids; the caller reports the NaN)
    n = np.int64(0)                                                   # not a literal 0: see kernels_util
    for i in range(nb):
        if block_max[i] < floor:
            continue
        for v in range(i, V, nb):
            if not x[v] < floor:
                lp = (x[v] - m) - lse
                if n < M:
                    _insert(v, x[v], lp, n, top, top_lp, top_x)
                elif lp > top_lp[M - 1] or (lp == top_lp[M - 1] and v < top[M - 1]):
                    _insert(v, x[v], lp, M - 1, top, top_lp, top_x)
                n += 1


@kernel
def _insert(v, x_v, lp, i, top, top_lp, top_x):
    """Put (v, lp) at slot i of the sorted list, then move it up past every entry it ranks
    before: a smaller lp, or the same lp and a larger id (blocks are not visited in id order)."""
    while i > 0 and (lp > top_lp[i - 1] or (lp == top_lp[i - 1] and v < top[i - 1])):
        top[i] = top[i - 1]
        top_lp[i] = top_lp[i - 1]
        top_x[i] = top_x[i - 1]
        i -= 1
    top[i] = v
    top_lp[i] = lp
    top_x[i] = x_v

