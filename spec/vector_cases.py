"""The golden-vector cases (spec.vectors) and the tolerances each quantity must meet.

Every case is fixed by a seed, so the set is the same on every machine. Model
cases cover every score function and the baseline, L = 1 and 2, input feeding
on and off, ragged batches, float32, and extreme values; attention cases give
one attention step directly, including saturated softmaxes and near-ties at
|score| ~ 1e3-1e4. docs/vectors.md explains the tolerance rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import equations as eq
from .config import BASELINE, Config, param_shapes

@dataclass(frozen=True)
class ModelCase:
    """One batch of the whole model: sizes, per-row lengths, and the scales of the random parameters.

    ``src_len[b]`` valid source tokens (PAD after); ``labels[b]`` non-PAD labels
    (the last is EOS, PAD after). Parameters are N(0, scale^2), with per-name
    scales in ``scales`` (for the extreme cases).
    """

    id: str
    description: str
    config: Config
    src_len: tuple[int, ...]
    labels: tuple[int, ...]
    S: int
    T: int
    seed: int
    scale: float = 0.5
    scales: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttentionCase:
    """One attention step: ``build(rng)`` returns (query [B, H], keys [B, S, H], src_len [B], W_a, v_a)."""

    id: str
    description: str
    score: str
    dtype: str
    seed: int
    build: Callable


def _cfg(score="dot", L=1, feed=True, E=2, H=3, V_src=6, V_tgt=6, dtype="float64") -> Config:
    return Config(V_src=V_src, V_tgt=V_tgt, E=E, H=H, L=L, score=score, input_feeding=feed, dtype=dtype)


_RAGGED = dict(src_len=(3, 2), labels=(3, 2), S=3, T=3)  # row 1: shorter source, a PAD label

MODEL_CASES: tuple[ModelCase, ...] = (
    ModelCase("tiny_dot", "smallest model: one row, S = T = 2, E = H = 2", _cfg(E=2, H=2),
              (2,), (2,), 2, 2, seed=1),
    *(ModelCase(f"{s}_L1", f"score {s}, L = 1, input feeding, ragged batch" if s != BASELINE else
                "baseline without attention, L = 1 (never feeds input: docs/decisions.md), ragged batch",
                _cfg(s), seed=10 + i, **_RAGGED)
      for i, s in enumerate(("dot", "scaled_dot", "general", "concat", BASELINE))),
    *(ModelCase(f"{s}_L2_nofeed", f"score {s}, L = 2, no input feeding, ragged batch", _cfg(s, L=2, feed=False),
                seed=20 + i, **_RAGGED)
      for i, s in enumerate(("dot", "scaled_dot", "general", "concat", BASELINE))),
    ModelCase("dot_L2", "dot, L = 2, input feeding", _cfg("dot", L=2), seed=30, **_RAGGED),
    ModelCase("concat_L2", "concat, L = 2, input feeding", _cfg("concat", L=2), seed=31, **_RAGGED),
    ModelCase("dot_L1_nofeed", "dot, L = 1, no input feeding", _cfg("dot", feed=False), seed=32, **_RAGGED),
    ModelCase("general_E3_H2_nofeed", "general, E != H, no input feeding", _cfg("general", feed=False, E=3, H=2),
              seed=33, **_RAGGED),
    ModelCase("ragged_src_len_1", "a row with one source token (weight exactly 1) and one label (EOS)",
              _cfg("dot"), (1, 4), (1, 4), 4, 4, seed=40),
    ModelCase("ragged_vocab", "V_src != V_tgt, scaled_dot, the first row the shorter",
              _cfg("scaled_dot", V_src=5, V_tgt=7), (2, 4), (4, 2), 4, 4, seed=41),
    ModelCase("small_dot", "small: S = T = 5, E = H = 4", _cfg("dot", E=4, H=4), (5, 3), (5, 3), 5, 5, seed=50),
    ModelCase("small_concat_L2", "small: concat, L = 2, E = 3, H = 4", _cfg("concat", L=2, E=3, H=4),
              (4, 3), (4, 2), 4, 4, seed=51),
    ModelCase("extreme_general", "general with W_a ~ N(0, 1e8): |score| up to ~1e3, saturated softmax",
              _cfg("general", E=2, H=2), (3, 3), (3, 2), 3, 3, seed=60, scales={"attention.W_a": 1e4}),
    ModelCase("extreme_general_L2", "general, L = 2, W_a ~ N(0, 1e10): |score| up to ~1e4",
              _cfg("general", L=2, E=2, H=3), (3, 2), (3, 3), 3, 3, seed=61, scales={"attention.W_a": 1e5}),
    ModelCase("extreme_concat", "concat with v_a ~ N(0, 2.5e7) and W_a ~ N(0, 9) (saturated tanh): |score| ~ 1e3",
              _cfg("concat", E=2, H=2), (3, 2), (3, 2), 3, 3, seed=62,
              scales={"attention.v_a": 5e3, "attention.W_a": 3.0}),
    ModelCase("extreme_saturated_gates", "every parameter ~ N(0, 3^2): saturated LSTM gates (sigma', tanh' near 0)",
              _cfg("dot"), (3, 2), (3, 2), 3, 3, seed=63, scale=3.0),
    ModelCase("float32_dot", "float32 (inputs exactly representable in float32)", _cfg("dot", dtype="float32"),
              seed=70, **_RAGGED),
    ModelCase("float32_general_L2", "float32, general, L = 2", _cfg("general", L=2, dtype="float32"),
              seed=71, **_RAGGED),
)


def _random_attention(B=2, S=4, H=3, src_len=(4, 2), scale=1.0, W_scale=0.5, score="dot", v_scale=1.0,
                      padding_wins=False):
    """A builder of random query/keys (N(0, scale^2)) and W_a, v_a for ``score``.

    ``padding_wins`` (dot): the keys past src_len point along the query and are twice
    as long as the longest valid key, so they would take every weight if not masked.
    """
    def build(rng):
        q, k = rng.normal(0, scale, (B, H)), rng.normal(0, scale, (B, S, H))
        if padding_wins:
            for b, n in enumerate(src_len):
                longest = np.linalg.norm(k[b, :n], axis=1).max()
                k[b, n:] = 2 * longest * q[b] / np.linalg.norm(q[b])
        W_a = {"general": (H, H), "concat": (H, 2 * H)}.get(score)
        W_a = None if W_a is None else rng.normal(0, W_scale, W_a)
        v_a = rng.normal(0, v_scale, H) if score == "concat" else None
        return q, k, np.array(src_len), W_a, v_a
    return build


def _near_tie(rng):
    """Scores ~ 1e3 two of which differ by 25 * 2^-20 (~2.4e-5); a third 20 below (weight ~2e-9)."""
    q = np.array([[40.0, 25.0], [-40.0, -25.0]])
    k = np.array([[[20.0, 8.0], [20.0, 8.0 + 2.0 ** -20], [19.5, 8.0]],
                  [[120.0, 8.0], [120.0, 8.0 + 2.0 ** -30], [0.0, 0.0]]])
    return q, k, np.array([3, 2]), None, None


def _large_close(rng):
    """Keys c + delta_s with |c| ~ 1e2, |delta| ~ 0.05 and |query| ~ 10: |score| ~ 1e3, gaps O(1),
    so the weights are not saturated and carry the rounding of the large scores."""
    c = rng.normal(0, 100, (2, 1, 3))
    k = c + rng.normal(0, 0.05, (2, 4, 3))
    return rng.normal(0, 10, (2, 3)), k, np.array([4, 3]), None, None


def _identical_keys(rng):
    """Every valid key equal: uniform weights 1/src_len; a different key past src_len is masked."""
    k = np.repeat(rng.normal(0, 1, (2, 1, 3)), 4, axis=1)
    k[1, 3] = 5.0
    return rng.normal(0, 1, (2, 3)), k, np.array([4, 3]), None, None


ATTENTION_CASES: tuple[AttentionCase, ...] = (
    *(AttentionCase(f"attn_{s}", f"{s}, random, ragged mask", s, "float64", 100 + i, _random_attention(score=s))
      for i, s in enumerate(("dot", "scaled_dot", "general", "concat"))),
    AttentionCase("attn_single_position", "src_len = 1 in one row: weight exactly 1, ctx = k_1", "general",
                  "float64", 110, _random_attention(score="general", src_len=(1, 3))),
    AttentionCase("attn_identical_keys", "identical valid keys: uniform weights", "dot", "float64", 111,
                  _identical_keys),
    AttentionCase("attn_near_tie", "|score| ~ 1e3 with gaps of 2.4e-5 and 20", "dot", "float64", 112, _near_tie),
    AttentionCase("attn_large_close", "|score| ~ 1e3 with O(1) gaps: unsaturated weights", "dot", "float64", 118,
                  _large_close),
    AttentionCase("attn_dot_large", "query, keys ~ 1e2: |score| ~ 1e4, saturated softmax", "dot", "float64", 113,
                  _random_attention(H=2, scale=100.0, padding_wins=True)),
    AttentionCase("attn_general_large", "|W_a| ~ 1e3: |score| ~ 1e3", "general", "float64", 114,
                  _random_attention(score="general", W_scale=1e3)),
    AttentionCase("attn_concat_large", "|v_a| ~ 1e3, |W_a| ~ 30 (saturated tanh)", "concat", "float64", 115,
                  _random_attention(score="concat", W_scale=30.0, v_scale=1e3)),
    AttentionCase("attn_float32_scaled_dot", "float32 scaled_dot", "scaled_dot", "float32", 116,
                  _random_attention(score="scaled_dot")),
    AttentionCase("attn_float32_concat", "float32 concat", "concat", "float32", 117,
                  _random_attention(score="concat")),
)


def exact_in(dtype: str, a):
    """``a`` as float64 values that ``dtype`` represents exactly (rounded through float32 if needed)."""
    a = np.asarray(a, dtype=np.float64)
    return a.astype(np.float32).astype(np.float64) if dtype == "float32" else a


def model_inputs(case: ModelCase):
    """(params, src, src_len, tgt) of a model case, from its seed."""
    cfg = case.config
    rng = np.random.default_rng(case.seed)
    params = {n: exact_in(cfg.dtype, rng.normal(0.0, case.scales.get(n, case.scale), s))
              for n, s in param_shapes(cfg).items()}
    B = len(case.src_len)
    src = rng.integers(3, cfg.V_src, (B, case.S))
    tgt = np.full((B, case.T + 1), cfg.pad_id)
    tgt[:, 0] = cfg.bos_id
    for b in range(B):
        src[b, case.src_len[b]:] = cfg.pad_id
        n = case.labels[b]
        tgt[b, 1:n] = rng.integers(3, cfg.V_tgt, n - 1)
        tgt[b, n] = cfg.eos_id
    return params, src, np.array(case.src_len), tgt


# -- tolerances -------------------------------------------------------------------------------

# Base tolerances, as a fraction of each quantity's scale (docs/vectors.md, "Tolerances").
# float64: Numba's errors against the oracle are <= ~5e-15 of the scale on these cases,
# so 1e-12 (forward) and 1e-10 (gradients) leave 2-4 orders of margin and still reject
# any modelling error (>= 1e-6, usually O(1)). float32: <= ~7e-7 observed; 1e-5 / 1e-4.
# GRAD_FLOOR is relative to the case's largest gradient entry: see grad_atol.
TOLERANCES = {
    "float64": {"forward": 1e-12, "grads": 1e-10, "grad_floor": 1e-13},
    "float32": {"forward": 1e-5, "grads": 1e-4, "grad_floor": 1e-6},
}
KAPPA_SCALE = 100.0  # score magnitudes up to this are covered by the base tolerances


def rounded(x: float) -> float:
    """``x`` to 6 significant digits: a bound needs no more, and libm's last bits (np.tanh) then
    cannot make exports on two machines differ."""
    return float(f"{x:.6g}")


def kappa_of(score_bound: float) -> float:
    """How much the base tolerances grow: rounding in e = score(h, k) is ~eps * score_bound."""
    return rounded(max(1.0, score_bound / KAPPA_SCALE))


_FLOAT = eq.Ops(exp=math.exp, log=math.log, tanh=math.tanh, sqrt=math.sqrt)


def model_states(params, cfg: Config, src, src_len, tgt) -> list:
    """A float64 pass of MODEL.md (spec.equations): per row, (queries [T][H], keys [src_len][H], weights [T][src_len]).

    Only the magnitudes of the scores are taken from it (for the tolerances), so
    float64 suffices; the softmax subtracts the maximum, which changes no value.
    """
    P = {n: a.tolist() for n, a in params.items()}
    W_a, v_a = P.get("attention.W_a"), P.get("attention.v_a")

    def stack(prefix, x, h, c):
        for k in range(cfg.L):
            h[k], c[k] = eq.lstm_cell(_FLOAT, x, h[k], c[k], *(P[f"{prefix}.{w}_l{k}"] for w in
                                                                ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
            x = h[k]
        return x

    rows = []
    for b in range(len(src)):
        n = int(src_len[b])
        h, c = [[0.0] * cfg.H for _ in range(cfg.L)], [[0.0] * cfg.H for _ in range(cfg.L)]
        keys = [stack("encoder.lstm", P["encoder.embedding.weight"][src[b][s]], h, c) for s in range(n)]
        h_tilde, queries, weights = [0.0] * cfg.H, [], []
        for y in tgt[b][:-1]:
            emb = P["decoder.embedding.weight"][y]
            q = stack("decoder.lstm", emb + h_tilde if cfg.feeds_input else emb, h, c)
            e = [eq.score(_FLOAT, cfg.score, q, k, W_a, v_a) for k in keys]
            a = eq.masked_softmax(_FLOAT, [x - max(e) for x in e], n)
            h_tilde = eq.attentional_state(_FLOAT, P["attention.W_c"], eq.context(a, keys), q)
            queries.append(q)
            weights.append(a)
        rows.append((queries, keys, weights))
    return rows


def model_score_bound(params, cfg: Config, src, src_len, tgt) -> float:
    """max over every score the model computes of sum |terms| (0 for the baseline)."""
    if not cfg.attention:
        return 0.0
    worst = 0.0
    for queries, keys, _ in model_states(params, cfg, src, src_len, tgt):
        q, k = np.array(queries), np.array(keys)                      # (T, H), (n, H)
        k = np.broadcast_to(k, (len(q),) + k.shape)
        W_a, v_a = params.get("attention.W_a"), params.get("attention.v_a")
        worst = max(worst, attention_score_bound(cfg.score, q, k, np.full(len(q), k.shape[1]), W_a, v_a))
    return worst


def attention_score_bound(score, q, k, src_len, W_a, v_a) -> float:
    """max over rows b and valid s of sum |terms| in score(q_b, k_bs)."""
    worst = 0.0
    for b in range(q.shape[0]):
        qa, ka = np.abs(q[b]), np.abs(k[b, :src_len[b]])            # (H,), (n, H)
        if score in ("dot", "scaled_dot"):
            s = ka @ qa / (math.sqrt(q.shape[1]) if score == "scaled_dot" else 1.0)
        elif score == "general":
            s = ka @ np.abs(W_a).T @ qa
        else:  # e = v . tanh(u), u = W_a [q; k]: rounding in u reaches e damped by tanh'(u)
            z = np.concatenate([np.broadcast_to(q[b], ka.shape), k[b, :src_len[b]]], axis=1)  # (n, 2H)
            t = np.tanh(z @ W_a.T)                                                          # (n, H)
            s = (np.abs(t) + (1 - t ** 2) * (np.abs(z) @ np.abs(W_a).T)) @ np.abs(v_a)
        worst = max(worst, float(s.max()))
    return worst


def grad_atol(base: dict, kappa: float, g_max: float, g_case: float) -> float:
    """atol of one gradient: base * kappa * (its largest entry), plus a floor on the case's largest.

    The floor: where a softmax or a gate saturates, an exact gradient may be tiny
    (or cancel) while float64 rounds the large terms that add up to it with
    errors ~ eps * (the backpropagated magnitudes) <= eps * g_case.
    """
    return kappa * (base["grads"] * g_max + base["grad_floor"] * g_case)


def max_abs(a) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))
