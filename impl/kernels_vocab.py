"""Vocabulary kernels: the generator's softmax work over V outputs, row by row, fused.

For a row x = logits (bias included) of one decoder step, with m = max_v x_v:

    log p_v = (x_v - m) - log(sum_w exp(x_w - m))          (log-softmax, overflow-free)
    dL/dx_v = (p_v - [v = y]) / count                      (cross-entropy, MODEL.md)

Every routine makes at most three passes over a row (max; exp and sum; the
result), writes its result in place or into one reused scratch row, and never
materialises log p, p and dL/dx as three separate (N, V) arrays: at the sizes
of issue 7 these are 50-60 MB each and their traffic cost more than the exps.

``exp_shifted_sum`` and ``log_sum_exp_shifted`` call ``kernels_math.exp_`` in
a loop that LLVM vectorises and sum in 16 interleaved partial sums (``sum16``):
about 3x faster over a row than libm's ``exp`` one element at a time and one
running sum.
"""

from __future__ import annotations

import numpy as np

from .kernels_math import exp_, maximum_
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

    A float reduction in one accumulator cannot be vectorised (no reassociation
    without fastmath); this order is fixed, so results stay deterministic. Scalars,
    not a (16,) array: LLVM keeps them in two or four vector registers, where an
    array's loads and stores stay in memory (it cannot tell them from x's).
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
    """log(sum_v exp(x_v - m)) for a row x (V,), x untouched (exps in scratch (V,))."""
    for v in range(x.shape[0]):           # vectorised: scratch is not x, so LLVM's overlap test passes
        scratch[v] = exp_(x[v] - m)
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
    one = np.ones(1, x.dtype)[0]
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
        for v in range(V):
            row[v] = (row[v] / total) / count
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
def top_log_probs(x, bias, scratch, top, top_lp, top_x):
    """The M = len(top) best tokens of log_softmax(x + bias) for a row of logits x (V,), V >= M.

    Writes their ids into top and their log-probabilities into top_lp, best
    first, lowest id on ties, with a sorted insertion list (M << V); top_x (M,)
    is scratch for their logits. x is modified in place.

    The scan in id order inserts a token only if its logit beats the M-th
    listed logit (log p is monotone in x), which is exact: a later id loses
    ties. Random logits still insert about M ln(V / M) times, each a few
    mispredicted branches, so a floor comes first: the M-th largest of the
    maxima of blocks of 16 logits (M tokens reach it, so the M-th best logit
    does too), lowered by a margin wider than any pair of logits whose log p
    can round to equal. Blocks whose maximum is below both are skipped whole.
    """
    M = top.shape[0]
    V = x.shape[0]
    m = add_bias_max(x, bias)
    lse = log_sum_exp_shifted(x, m, scratch)
    n_blocks = (V + 15) // 16
    for i in range(V // 16):                                          # scratch[i] = block i's maximum
        b_max = x[16 * i]
        for j in range(1, 16):            # a constant trip count: LLVM vectorises it (2.6-6x faster)
            b_max = maximum_(b_max, x[16 * i + j])
        scratch[i] = b_max
    if V % 16:
        b_max = x[V - V % 16]
        for v in range(V - V % 16 + 1, V):
            b_max = maximum_(b_max, x[v])
        scratch[n_blocks - 1] = b_max
    floor = -np.inf
    if n_blocks >= M:                          # the M-th largest block maximum, sorted into top_lp
        for i in range(n_blocks):              # (top, top_lp, top_x are overwritten below)
            if i < M or scratch[i] > top_lp[M - 1]:
                _insert(i, scratch[i], scratch[i], min(i, M - 1), top, top_lp, top_x)
        b_max_mth = top_lp[M - 1]
        floor = b_max_mth - _TIE_MARGIN * (abs(b_max_mth) + abs(m) + abs(lse))
    for v in range(M):                                                # the first M, sorted
        _insert(v, x[v], (x[v] - m) - lse, v, top, top_lp, top_x)
    threshold = top_x[M - 1]
    for i in range(n_blocks):
        if scratch[i] <= threshold or scratch[i] < floor:
            continue
        for v in range(max(16 * i, M), min(16 * i + 16, V)):
            # x_v <= the M-th logit implies log p_v <= its log p (monotone): skip at the
            # cost of one compare, the common case; else the exact test on log p decides.
            if x[v] > threshold and x[v] >= floor:
                lp = (x[v] - m) - lse
                if lp > top_lp[M - 1]:                                # strict: earlier ids win ties
                    _insert(v, x[v], lp, M - 1, top, top_lp, top_x)
                    threshold = top_x[M - 1]


@kernel
def _insert(v, x_v, lp, i, top, top_lp, top_x):
    """Put (v, lp) at slot i of the sorted list, then move it up past every strictly smaller lp."""
    while i > 0 and lp > top_lp[i - 1]:
        top[i] = top[i - 1]
        top_lp[i] = top_lp[i - 1]
        top_x[i] = top_x[i - 1]
        i -= 1
    top[i] = v
    top_lp[i] = lp
    top_x[i] = x_v

