"""The high-precision oracle: loss, log-probabilities, attention and every gradient of MODEL.md.

For tiny configurations the oracle evaluates the whole model at ``dps``
significant digits (mpmath, default 40) and differentiates it with the scalar
reverse-mode engine of ``spec.autodiff``, whose primitive derivatives SymPy
derived. Each equation is a function of ``spec.equations`` (the same code the
symbolic specification differentiates and prints); this module only composes
them in MODEL.md's order. float64 results of any implementation can then be
compared with a truth that is exact to ~dps digits, not with another float64
computation.

Public API
----------
evaluate(params, config, src, src_len, tgt, dps=40, grads=True) -> OracleResult
attention(score, query, keys, src_len, W_a=None, v_a=None, dps=40) -> (weights, ctx)
finite_difference_grad(params, config, src, src_len, tgt, name, index, h="1e-15", dps=50) -> mpf

Cost (best of 3 evaluations at dps = 40, V = 6, on a shared 2-core machine;
``python -m attnspec.spec.oracle`` prints the table of docs/oracle.md): a few
microseconds per scalar operation, from ~2 ms (loss only) / ~7 ms (loss +
grads) for B=1, S=T=2, E=H=2, L=1 to ~45 ms / ~0.35 s for B=2, S=T=6, E=H=4,
L=2. Reverse mode costs 4-8x the loss alone (graph nodes plus two
multiply-adds per edge); one finite difference costs two loss-only runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

import mpmath
import numpy as np
from mpmath.libmp import from_man_exp

from .autodiff import AUTODIFF, MPMATH, Var, value_of
from .config import SCORES, Config, param_shapes
from .equations import (
    attentional_state,
    context,
    generator,
    log_softmax,
    lstm_cell,
    masked_softmax,
    token_loss,
)
from .equations import score as score_fn
from .validate import check_attention_params, check_batch, check_params

__all__ = ["OracleResult", "evaluate", "attention", "finite_difference_grad"]

F64_MAX = float(np.finfo(np.float64).max)
"""The largest magnitude of any number the oracle takes: the model's inputs are float32/float64 values."""


@dataclass(frozen=True)
class OracleResult:
    """What the oracle computes for one batch (values are ``mpmath.mpf`` unless converted).

    Attributes
    ----------
    loss : mpf
        sum_{b,t} m[b,t] loss_t[b] / sum_{b,t} m[b,t], with m = (y_out != PAD).
    log_probs : object array [B, T, V_tgt]
        log softmax(logits_t) for every step, PAD labels included.
    attention : object array [B, T, S], or None for the baseline ``score="none"``
        a_{t,s}; exactly 0 where s > src_len. None (not zeros) for the baseline,
        which has no attention at all: zeros would break sum_s a_{t,s} = 1.
    grads : dict name -> object array, or None when ``grads=False``
        d loss / d param for every name of ``param_shapes(config)``, same shapes.
    dps : int
        The working precision (significant decimal digits).
    """

    loss: object
    log_probs: np.ndarray
    attention: np.ndarray | None
    grads: dict | None
    dps: int

    def as_float64(self) -> "OracleResult":
        """The same result with every mpf correctly rounded to float64 (loss a Python float)."""
        f64 = lambda a: None if a is None else np.asarray(a, dtype=object).astype(np.float64)  # noqa: E731
        return OracleResult(
            loss=float(self.loss),
            log_probs=f64(self.log_probs),
            attention=f64(self.attention),
            grads=None if self.grads is None else {n: f64(g) for n, g in self.grads.items()},
            dps=self.dps,
        )


# -- checks and conversions -------------------------------------------------------

def _check_config(config) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config: expected a Config, got {type(config).__name__}")


def _check_dps(dps) -> None:
    # 15 digits are 53 bits: every float64 input then converts to mpf exactly.
    if isinstance(dps, bool) or not isinstance(dps, int):
        raise TypeError(f"dps: expected an int, got {type(dps).__name__}")
    if dps < 15:
        raise ValueError(f"dps: expected an int >= 15 (float64 inputs must convert exactly), got {dps!r}")


def _mpf(x) -> mpmath.mpf:
    """One number as mpf: float, int and long double exactly, decimal strings rounded once to the working precision."""
    if isinstance(x, np.longdouble):
        # item() keeps a long double (mpmath refuses it), and its 64-bit significand needs more
        # than dps = 15: built from its exact ratio p / 2^k, it is exact at any precision.
        if not np.isfinite(x):
            return mpmath.mpf(float(x))
        p, q = x.as_integer_ratio()
        return mpmath.mp.make_mpf(from_man_exp(p, 1 - q.bit_length()))
    if isinstance(x, np.generic):
        x = x.item()
    return x if isinstance(x, mpmath.mpf) else mpmath.mpf(x)


def _nested(a: np.ndarray, leaf):
    """A 1-d or 2-d array as a list (of rows) of ``leaf(element)``: the layout spec.equations uses."""
    if a.ndim == 1:
        return [leaf(_mpf(x)) for x in a]
    return [[leaf(_mpf(x)) for x in row] for row in a]


def _literal_in_range(s: str) -> bool:
    """False for a decimal literal beyond float64's range, judged without mpmath; True otherwise.

    mpmath turns '1e1000000000' into a number whose exponent makes every later
    operation run for hours, and parses a thousand-digit exponent for seconds.
    ``Decimal`` reads any literal in linear time, and one whose exponent it
    refuses (beyond 10^18) but ``float`` reads is out of every range.
    Anything else (NaN, mpmath's p/q form, garbage) is left to mpmath and the
    checks after it.
    """
    text = s.strip().lower().rstrip("l")  # mpmath's own normalisation of a literal
    try:
        with localcontext() as ctx:
            ctx.traps[InvalidOperation] = True  # a refused exponent raises, whatever the caller's context
            d = Decimal(text)
    except (InvalidOperation, ValueError):
        try:
            float(text)
        except ValueError:
            return True
        return False
    return not d.is_finite() or d.copy_abs() <= F64_MAX  # copy_abs: exact, no rounding to the context


def _real(name: str, x) -> mpmath.mpf:
    """One number given by the user as mpf, finite and at most F64_MAX in magnitude, or an error naming ``name``."""
    if isinstance(x, (bool, np.bool_)):  # True would be taken as 1
        raise TypeError(f"{name}: expected a real number or a decimal string, got a bool")
    shown = x if not isinstance(x, str) or len(x) <= 40 else x[:20] + "..." + x[-10:]
    if isinstance(x, str) and not _literal_in_range(x):
        raise ValueError(f"{name}: {shown!r} is beyond float64's range (|x| <= {F64_MAX:.4g}), "
                         "a magnitude no input of the model can have")
    try:
        v = _mpf(x)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise TypeError(f"{name}: expected a real number or a decimal string, got {shown!r} ({exc})") from None
    if not mpmath.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {shown!r}")
    if abs(v) > F64_MAX:  # an mpf, a long double or an int can be larger than any float64
        raise ValueError(f"{name}: {mpmath.nstr(v, 5)} is beyond float64's range (|x| <= {F64_MAX:.4g}), "
                         "a magnitude no input of the model can have")
    return v


def _numbers(name: str, a: np.ndarray):
    """A user's 1-d/2-d array of numbers as nested mpf lists, or an error naming the argument and the entry."""
    out = np.empty(a.shape, dtype=object)
    for i in np.ndindex(a.shape):
        out[i] = _real(f"{name}[{', '.join(map(str, i))}]", a[i])
    return out.tolist()


def _check_oracle_params(params, config: Config) -> dict:
    """check_params, and no magnitude beyond float64's (only a long double array can hold one)."""
    params = check_params(params, config)
    for name, a in params.items():
        largest = np.max(np.abs(a)) if a.size else 0
        if largest > F64_MAX:
            shown = np.format_float_scientific(largest, precision=3)  # a long double: float() would print inf
            raise ValueError(f"params[{name!r}]: values up to {shown} are beyond float64's range "
                             f"(|x| <= {F64_MAX:.4g}), a magnitude no parameter of the model can have")
    return params


def _check_index(name: str, index, shape: tuple) -> tuple:
    """``index`` (a tuple of ints, or one int for a 1-d parameter) within ``shape``, or an error naming index."""
    if isinstance(index, np.ndarray):
        index = index.tolist()
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        index = (index,)
    if not isinstance(index, (tuple, list)) or any(
            isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in index):
        raise TypeError(f"index: expected a tuple of ints, got {index!r}")
    index = tuple(int(i) for i in index)
    if len(index) != len(shape) or not all(0 <= i < n for i, n in zip(index, shape)):
        raise ValueError(f"index: {index} is not an index of params[{name!r}] with shape {shape}")
    return index


def _check_step(h, x: mpmath.mpf) -> mpmath.mpf:
    """h as a positive mpf that moves ``x`` at the working precision, or an error naming h."""
    step = _real("h", h)
    if step <= 0:
        raise ValueError(f"h: expected a positive step, got {h!r}")
    if x + step == x - step:  # both round to x: the difference quotient would divide by zero
        raise ValueError(f"h: {h!r} is below the resolution of the coordinate ({mpmath.nstr(x, 5)}) at "
                         f"dps = {mpmath.mp.dps}; use a larger h or a larger dps")
    return step


def _grad_array(leaves) -> np.ndarray:
    """The .grad of nested Var leaves as an object array of mpf (exact 0 for unused leaves)."""
    if isinstance(leaves[0], Var):
        return np.array([value_of(v.grad) for v in leaves], dtype=object)
    return np.array([[value_of(v.grad) for v in row] for row in leaves], dtype=object)


def _values(xs) -> np.ndarray:
    return np.array([value_of(x) for x in xs], dtype=object)


# -- the model, composed from spec.equations ------------------------------------------

def _lstm_layer(P, prefix: str, k: int):
    return (P[f"{prefix}.weight_ih_l{k}"], P[f"{prefix}.weight_hh_l{k}"],
            P[f"{prefix}.bias_ih_l{k}"], P[f"{prefix}.bias_hh_l{k}"])


def _stack_step(ops, P, prefix: str, x, h, c):
    """One time step of the L-layer stack: layer k's h' is layer k+1's x. Updates h, c in place."""
    for k in range(len(h)):
        h[k], c[k] = lstm_cell(ops, x, h[k], c[k], *_lstm_layer(P, prefix, k))
        x = h[k]
    return x


def _encode(ops, P, config: Config, src_row, n: int):
    """Encoder over one source row: (h^enc [S][H], final h [L][H], final c [L][H]).

    h_0 = c_0 = 0; for s > src_len = n the state is frozen, so no step runs and
    h^enc_s repeats the state at src_len (those keys are masked anyway).
    """
    h = [[0] * config.H for _ in range(config.L)]
    c = [[0] * config.H for _ in range(config.L)]
    h_enc = []
    for s in range(n):
        h_enc.append(_stack_step(ops, P, "encoder.lstm", P["encoder.embedding.weight"][src_row[s]], h, c))
    h_enc += [h_enc[-1]] * (len(src_row) - n)
    return h_enc, h, c


def _attend(ops, score_name: str, query, keys, n_valid: int, W_a=None, v_a=None):
    """e_s = score(h_t, h^enc_s); a = masked softmax (a_s = 0 exactly for s > n_valid); ctx = sum_s a_s h^enc_s."""
    scores = [score_fn(ops, score_name, query, k, W_a, v_a) for k in keys]  # [S]
    a = masked_softmax(ops, scores, n_valid)  # [S]
    ctx = context(a, keys)  # [H]
    return a, ctx


def _decode_row(ops, P, config: Config, h_enc, h, c, n: int, y_in):
    """Decoder over one row: for each t, (log-probs [V_tgt], attention weights [S] or None)."""
    h_tilde = [0] * config.H  # h~_0 = 0
    W_a, v_a = P.get("attention.W_a"), P.get("attention.v_a")
    steps = []
    for y in y_in:
        emb = P["decoder.embedding.weight"][y]
        u = list(emb) + list(h_tilde) if config.feeds_input else emb  # embedding first
        h_t = _stack_step(ops, P, "decoder.lstm", u, h, c)  # top layer: the query
        if config.attention:
            a, ctx = _attend(ops, config.score, h_t, h_enc, n, W_a, v_a)
            h_tilde = attentional_state(ops, P["attention.W_c"], ctx, h_t)
        else:
            a, h_tilde = None, h_t  # baseline: no scores, no context
        logits = generator(P["generator.weight"], P["generator.bias"], h_tilde)
        steps.append((log_softmax(ops, logits), a))
    return steps


def _forward(ops, P, config: Config, src, src_len, tgt):
    """loss (a scalar of ``ops``), log_probs [B][T][V], attention [B][T][S] or None."""
    y_in, y_out = tgt[:, :-1], tgt[:, 1:]
    m = y_out != config.pad_id
    total, log_probs, attn = 0, [], []
    for b in range(src.shape[0]):
        n = int(src_len[b])
        h_enc, h, c = _encode(ops, P, config, src[b], n)
        steps = _decode_row(ops, P, config, h_enc, h, c, n, y_in[b])
        for t, (lp, _) in enumerate(steps):
            if m[b, t]:
                total = total + token_loss(lp, int(y_out[b, t]))
        log_probs.append([lp for lp, _ in steps])
        attn.append([a for _, a in steps])
    return total / int(m.sum()), log_probs, (attn if config.attention else None)


def evaluate(params, config: Config, src, src_len, tgt, dps: int = 40, grads: bool = True) -> OracleResult:
    """Loss, log-probabilities, attention weights and (optionally) all gradients, at ``dps`` digits.

    Parameters
    ----------
    params : dict name -> real array
        Every name of ``param_shapes(config)`` (MODEL.md), nothing else. float
        (long double included) and int values convert to mpf exactly; each must
        be finite and at most float64's largest (~1.8e308) in magnitude.
    config : Config
    src : int array [B, S];  src_len : int array [B], 1 <= src_len <= S
    tgt : int array [B, T+1], ``tgt[:, 0] == BOS``; y_in = tgt[:, :-1], y_out = tgt[:, 1:]
    dps : int
        Significant decimal digits of the working precision (>= 15).
    grads : bool
        Also compute d loss / d param by reverse mode (4-8x the cost of the loss alone).

    Returns
    -------
    OracleResult
        loss = sum_{b,t} m[b,t] (-log p(y_out[b,t])) / sum_{b,t} m[b,t].

    Examples
    --------
    >>> cfg = Config(V_src=5, V_tgt=5, E=2, H=2)
    >>> rng = np.random.default_rng(0)
    >>> params = {n: rng.normal(0, 0.5, s) for n, s in param_shapes(cfg).items()}
    >>> res = evaluate(params, cfg, [[3, 4]], [2], [[1, 3, 2]])
    >>> res.attention.shape, res.grads["attention.W_c"].shape
    ((1, 2, 2), (2, 4))
    >>> float(sum(res.attention[0, 1])) == 1.0
    True
    """
    _check_config(config)
    _check_dps(dps)
    params = _check_oracle_params(params, config)
    src, src_len, tgt = check_batch(config, src, src_len, tgt)
    with mpmath.workdps(dps):
        ops, leaf = (AUTODIFF, Var) if grads else (MPMATH, lambda x: x)
        P = {name: _nested(a, leaf) for name, a in params.items()}
        loss, log_probs, attn = _forward(ops, P, config, src, src_len, tgt)
        gradients = None
        if grads:
            loss.backward()
            gradients = {name: _grad_array(P[name]) for name in params}
        return OracleResult(
            loss=value_of(loss),
            log_probs=np.array([[_values(lp) for lp in row] for row in log_probs], dtype=object),
            attention=None if attn is None else np.array([[_values(a) for a in row] for row in attn], dtype=object),
            grads=gradients,
            dps=dps,
        )


def attention(score: str, query, keys, src_len: int, W_a=None, v_a=None, dps: int = 40):
    """The attention step alone: scores, masked softmax and context, at ``dps`` digits.

    Parameters
    ----------
    score : str
        ``"dot"``, ``"scaled_dot"``, ``"general"`` or ``"concat"``.
    query : [H] or [Q, H]
        One query h_t, or Q queries attending to the same keys.
    keys : [S, H]
        Encoder outputs h^enc_s; only the first ``src_len`` are valid.
    src_len : int, 1 <= src_len <= S
    W_a : [H, H] (general) or [H, 2H] (concat);  v_a : [H] (concat)
    Entries may be floats or ints (converted exactly, long doubles too), mpf, or
    decimal strings (rounded once to the working precision); each must be finite
    and at most float64's largest (~1.8e308) in magnitude: larger ones are refused
    before any arithmetic, which on a '1e1000000000' would run for hours.

    Returns
    -------
    weights : object array [S] (or [Q, S]) of mpf
        a_s = exp(e_s) / sum_{j <= src_len} exp(e_j); exactly 0 for s > src_len.
    ctx : object array [H] (or [Q, H]) of mpf
        ctx = sum_s a_s h^enc_s.

    Examples
    --------
    >>> a, ctx = attention("dot", ["0.7", "0.3"], [["0.8", "0.2"], [0, 0]], 2)
    >>> with mpmath.workdps(40):   # e_1 - e_2 = 0.62 - 0, to ~40 digits
    ...     mpmath.nstr(mpmath.log(a[0] / a[1]), 35)
    '0.62'
    """
    _check_dps(dps)
    if score not in SCORES:
        raise ValueError(f"score: unknown score function {score!r} (the baseline 'none' has no attention)")
    query, keys = np.asarray(query, dtype=object), np.asarray(keys, dtype=object)
    if query.ndim not in (1, 2):
        raise ValueError(f"query: expected shape [H] or [Q, H], got {query.shape}")
    if query.size == 0:
        raise ValueError(f"query: expected a non-empty [H] or [Q, H] with H >= 1, got shape {query.shape}")
    if keys.ndim != 2 or keys.shape[0] < 1 or keys.shape[1] != query.shape[-1]:
        raise ValueError(f"keys: expected shape [S, H] with H = {query.shape[-1]} (query's), got {keys.shape}")
    S, H = keys.shape
    if isinstance(src_len, bool) or not isinstance(src_len, (int, np.integer)) or not 1 <= src_len <= S:
        raise ValueError(f"src_len: expected an int in [1, S = {S}], got {src_len!r}")
    W_a, v_a = check_attention_params(score, H, W_a, v_a,
                                      lambda name, value, ndim: np.asarray(value, dtype=object))
    with mpmath.workdps(dps):
        W, v = (None if x is None else _numbers(n, x) for n, x in (("W_a", W_a), ("v_a", v_a)))
        K = _numbers("keys", keys)
        queries = _numbers("query", query)
        queries = [queries] if query.ndim == 1 else queries
        out = [_attend(MPMATH, score, q, K, int(src_len), W, v) for q in queries]
        weights = np.array([_values(a) for a, _ in out], dtype=object)
        ctx = np.array([_values(x) for _, x in out], dtype=object)
    if query.ndim == 1:
        return weights[0], ctx[0]
    return weights, ctx


def finite_difference_grad(params, config: Config, src, src_len, tgt, name: str, index,
                           h="1e-15", dps: int = 50) -> mpmath.mpf:
    """Central difference (loss(p + h) - loss(p - h)) / (2h) for one coordinate, at ``dps`` digits.

    The error is the truncation h^2 |loss'''| / 6 (~1e-31 for h = 1e-15) plus
    rounding, about 10^-dps |loss| n_ops / h (~1e-31 at dps = 50 for ~10^4
    operations): both far below the 1e-20 relative agreement tests ask of
    the oracle's reverse-mode gradients.

    Parameters
    ----------
    name : str
        A parameter name of ``param_shapes(config)``.
    index : tuple of int
        The coordinate within ``params[name]`` (one int for a 1-d parameter).
    h : str or number
        Step, converted at ``dps`` digits: positive, finite, at most ~1.8e308,
        and large enough that p +- h differ at ``dps`` digits.

    Examples
    --------
    >>> cfg = Config(V_src=4, V_tgt=4, E=2, H=2)
    >>> rng = np.random.default_rng(1)
    >>> params = {n: rng.normal(0, 0.5, s) for n, s in param_shapes(cfg).items()}
    >>> fd = finite_difference_grad(params, cfg, [[3]], [1], [[1, 3]], "generator.bias", (3,))
    >>> g = evaluate(params, cfg, [[3]], [1], [[1, 3]]).grads["generator.bias"][3]
    >>> abs(fd - g) < 1e-25
    True
    """
    _check_config(config)
    _check_dps(dps)
    params = _check_oracle_params(params, config)
    if not isinstance(name, str):
        raise TypeError(f"name: expected a parameter name (str), got {type(name).__name__}")
    if name not in params:
        raise ValueError(f"name: {name!r} is not a parameter of this config; expected one of {list(params)}")
    index = _check_index(name, index, params[name].shape)
    with mpmath.workdps(dps):
        x = _mpf(params[name][index])
        step = _check_step(h, x)
        shifted = []
        for x_shifted in (x + step, x - step):
            p = dict(params)
            p[name] = params[name].astype(object)  # object arrays keep the mpf shift un-rounded
            p[name][index] = x_shifted
            shifted.append((x_shifted, _loss_mpf(p, config, src, src_len, tgt)))
        (x_plus, f_plus), (x_minus, f_minus) = shifted
        return (f_plus - f_minus) / (x_plus - x_minus)


def _loss_mpf(params, config, src, src_len, tgt):
    """The loss at the current working precision for params that may hold mpf (no checks, no graph)."""
    src, src_len, tgt = check_batch(config, src, src_len, tgt)
    P = {name: _nested(np.asarray(a, dtype=object), lambda x: x) for name, a in params.items()}
    return _forward(MPMATH, P, config, src, src_len, tgt)[0]


# -- cost measurement (python -m attnspec.spec.oracle) ---------------------------------

def _benchmark(repeats: int = 3) -> str:
    """A markdown table of the oracle's time per evaluation as the configuration grows."""
    rows = ["| B | S = T | E = H | L | params | loss only (s) | loss + grads (s) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rng = np.random.default_rng(0)
    for B, ST, EH, L in [(1, 2, 2, 1), (1, 4, 2, 1), (2, 4, 3, 1), (2, 4, 3, 2), (2, 6, 4, 1), (2, 6, 4, 2)]:
        cfg = Config(V_src=6, V_tgt=6, E=EH, H=EH, L=L)
        params = {n: rng.normal(0, 0.5, s) for n, s in param_shapes(cfg).items()}
        src = rng.integers(3, 6, (B, ST))
        tgt = np.concatenate([np.full((B, 1), cfg.bos_id), rng.integers(2, 6, (B, ST))], axis=1)
        src_len = np.full(B, ST)
        times = []
        for grads in (False, True):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                evaluate(params, cfg, src, src_len, tgt, grads=grads)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
        n_params = sum(int(np.prod(s)) for s in param_shapes(cfg).values())
        rows.append(f"| {B} | {ST} | {EH} | {L} | {n_params} | {times[0]:.3f} | {times[1]:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(_benchmark())
