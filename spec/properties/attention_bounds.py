"""Forward error bounds of one attention step, which the attention-level properties use as tolerances.

Tolerances are forward error bounds, not tuned constants. With eps the
machine epsilon of the implementation's dtype (twice the unit roundoff, a
factor 2 of slack against the textbook bounds) and gamma_n = n eps / (1 - n eps):

* a score is a sum of at most m products, so |delta e_s| <= gamma_m sum |terms|
  (``score_error_bound``; m = H for dot, 2H for general, concat adds tanh);
* a weight's relative error is |eps_s| + log sum_j a_j exp|eps_j| from the scores
  (eps_s = delta e_s plus the rounding of e_s - max), plus (n + 3) eps for exp,
  the sum of n terms and the division (``weight_error_bound``);
* ctx_j = sum_s a_s k_sj then errs by at most sum_s a_s |k_sj| (rel_s + gamma_n).

Where two outputs of the implementation are compared with each other (the
permutation and shift properties), each carries its own bound, so the
tolerance is the sum of the two.
"""

from __future__ import annotations

import math

import numpy as np

from ..compare import max_errors
from ..strategies import AttentionCase
from .base import Measure, PropertyFailure

__all__ = ["ORACLE_DPS", "eps_of", "gamma", "underflow_slack", "parts64", "scores64", "softmax64", "concat_tanh",
           "score_error_bound", "weight_error_bound", "forward_bounds", "sum_tolerance", "require_within"]

ORACLE_DPS = 40  # 40 digits: the oracle's own error (~1e-40) is nothing next to float64's 1e-16


def eps_of(dtype) -> float:
    """The machine epsilon of ``dtype``."""
    return float(np.finfo(dtype).eps)


def gamma(n, eps: float) -> float:
    """gamma_n = n eps / (1 - n eps): the relative error of a sum or product of n + 1 terms."""
    return n * eps / (1 - n * eps)


def underflow_slack(n, dtype) -> np.ndarray:
    """Absolute slack for underflow: each of ~n + 1 operations may lose up to the smallest normal
    number (gradual underflow loses far less; this also admits flush-to-zero arithmetic)."""
    return (np.asarray(n) + 1) * float(np.finfo(dtype).tiny)


def parts64(case: AttentionCase):
    """The case's query, keys, W_a and v_a in float64 (exact: every float32 is a float64)."""
    f = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
    return f(case.query), f(case.keys), f(case.W_a), f(case.v_a)


def scores64(case: AttentionCase) -> np.ndarray:
    """Scores [B, S] in float64: the reference for magnitudes and bounds (within 1e-16 relative)."""
    q, k, W, v = parts64(case)
    H = q.shape[1]
    if case.score == "dot":
        return np.einsum("bh,bsh->bs", q, k)
    if case.score == "scaled_dot":
        return np.einsum("bh,bsh->bs", q, k) / math.sqrt(H)
    if case.score == "general":
        return np.einsum("bi,ij,bsj->bs", q, W, k)
    return np.tanh((q @ W[:, :H].T)[:, None, :] + k @ W[:, H:].T) @ v


def softmax64(e: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked softmax of scores ``e`` [B, S] over the positions where ``mask`` is true, in float64."""
    e = np.where(mask, e, -np.inf)
    w = np.exp(e - e.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def concat_tanh(case: AttentionCase):
    """concat's u_s = tanh(W_q h + W_k k_s) [B, S, H] in float64 and a bound on its rounding error.

    z = W_q h + W_k k errs by gamma_2H |W||[h; k]|; tanh is 1-Lipschitz and
    libm's is within 2 ulp, which adds 2 eps |u|.
    """
    eps = eps_of(case.dtype)
    q, k, W, _ = parts64(case)
    H = q.shape[1]
    u = np.tanh((q @ W[:, :H].T)[:, None, :] + k @ W[:, H:].T)
    aW = np.abs(W)
    dz = gamma(2 * H, eps) * ((np.abs(q) @ aW[:, :H].T)[:, None, :] + np.abs(k) @ aW[:, H:].T)
    return u, dz + 2 * eps * np.abs(u)


def score_error_bound(case: AttentionCase) -> np.ndarray:
    """A bound [B, S] on |computed e_s - exact e_s| for any implementation in ``case.dtype``.

    dot: gamma_H sum_j |h_j k_sj|;  scaled_dot: the same over sqrt(H) with 2 more
    roundings (sqrt, division);  general: gamma_2H sum_ij |h_i W_ij k_sj| (either
    association); concat: u = tanh(W_a [h; k]) errs by ``concat_tanh``'s bound
    du, and v . u adds gamma_H sum |v_i u_i|.
    """
    eps = eps_of(case.dtype)
    q, k, W, v = parts64(case)
    B, S, H = k.shape
    aq, ak = np.abs(q), np.abs(k)
    if case.score in ("dot", "scaled_dot"):
        mag = np.einsum("bh,bsh->bs", aq, ak)
        if case.score == "dot":
            return gamma(H, eps) * mag
        return (gamma(H, eps) + 2 * eps) * mag / math.sqrt(H)
    if case.score == "general":
        return gamma(2 * H, eps) * np.einsum("bi,ij,bsj->bs", aq, np.abs(W), ak)
    u, du = concat_tanh(case)
    return gamma(H, eps) * (np.abs(u) @ np.abs(v)) + du @ np.abs(v)


def weight_error_bound(case: AttentionCase, e: np.ndarray | None = None) -> np.ndarray:
    """A bound [B, S] on the relative error of each valid weight (0 at masked positions).

    With eps_s = delta e_s + eps |e_s - max_j e_j| (score error plus the rounding
    of the max-subtraction), the softmax of the perturbed scores differs from
    the exact one by the factor exp(eps_s - log sum_j a_j exp eps_j), whose log
    is at most |eps_s| + log sum_j a_j exp|eps_j| (Jensen); exp, the sum of n
    terms and the division add (n + 3) eps.
    """
    eps = eps_of(case.dtype)
    mask = case.mask
    e = scores64(case) if e is None else e
    a = softmax64(e, mask)
    e_max = np.where(mask, e, -np.inf).max(axis=1, keepdims=True)
    err = np.where(mask, score_error_bound(case) + eps * np.abs(e - e_max), 0.0)
    spread = np.log(np.sum(a * np.exp(np.minimum(err, 700.0)), axis=1, keepdims=True))
    n = case.src_len[:, None]
    return np.where(mask, np.expm1(np.minimum(err + spread, 700.0)) + (n + 3) * eps, 0.0)


def forward_bounds(case: AttentionCase):
    """(reference weights a [B, S], weight abs bound [B, S], ctx abs bound [B, H]) in float64."""
    e = scores64(case)
    a = softmax64(e, case.mask)
    rel = weight_error_bound(case, e)
    k = np.abs(np.asarray(case.keys, np.float64))
    n = case.src_len[:, None]
    w_bound = a * rel + underflow_slack(n, case.dtype)
    ctx_bound = (np.einsum("bs,bsh->bh", a * (rel + gamma(n, eps_of(case.dtype))), k)
                 + underflow_slack(n, case.dtype))
    return a, w_bound, ctx_bound


def sum_tolerance(n, dtype) -> np.ndarray:
    """|sum_s a_s - 1| bound: the sum of n terms (gamma_{n-1}), the division (eps), a float64 re-sum;
    doubled for implementations that normalise as exp(e - logsumexp e) ((log n + 3) eps)."""
    return 2 * (np.asarray(n) + 2) * eps_of(dtype)


def require_within(actual, expected, bound, name: str) -> Measure:
    """Fail unless |actual - expected| <= bound elementwise; the message names the worst element."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise PropertyFailure(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        i = tuple(int(j) for j in np.argwhere(~np.isfinite(actual))[0])
        raise PropertyFailure(f"{name}: non-finite value {float(actual[i])!r} at index {i}",
                              Measure(math.inf, math.inf))
    diff = np.abs(actual - expected)
    measure = Measure(*max_errors(actual, expected))
    excess = diff - bound
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess / np.maximum(bound, 1e-300)), excess.shape)
        raise PropertyFailure(
            f"{name}: worst element at index {tuple(int(j) for j in i)}: {float(actual[i])!r} vs expected "
            f"{float(expected[i])!r} (|diff| {diff[i]:.3g} > bound {np.broadcast_to(bound, diff.shape)[i]:.3g})",
            measure)
    return measure
