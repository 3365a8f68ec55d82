"""NumpyReference (spec.reference) against the oracle and the Numba model; every mutant is live.

Tolerances. The reference computes each gradient entry with O(10^3) float64
operations on values of order 1 (tiny nets, weights ~ N(0, 0.5^2)); against
the oracle's correctly rounded values its largest error, relative to each
array's largest entry, is ~3e-14 (concat's v_a; 1e-15 elsewhere). RTOL64 =
1e-10 leaves a margin of over 10^3 for other seeds and shapes, and is still
10^4 below LIVE = 1e-6, the smallest difference a mutant must show, so no
mutant can pass for rounding. float32 has eps 6e-8 and shows ~4e-6 (the
Numba model likewise): RTOL32 = 1e-4 keeps a margin of 25.
"""

import re
from functools import lru_cache

import mpmath
import numpy as np
import pytest

from attnspec.impl.adapter import NumbaImplementation
from attnspec.spec import equations, oracle
from attnspec.spec.autodiff import MPMATH
from attnspec.spec.cases import random_case
from attnspec.spec.compare import assert_close
from attnspec.spec.config import BASELINE, SCORES, Config, param_shapes
from attnspec.spec.mutants import CORRECT, MUTANTS, WHERE, mutant
from attnspec.spec.reference import NumpyReference

RTOL64, RTOL32, LIVE = 1e-10, 1e-4, 1e-6
RTOL = {"float64": RTOL64, "float32": RTOL32}
NUMBA = NumbaImplementation()


@lru_cache(maxsize=None)
def case(score="dot", L=2, feed=True, dtype="float64", seed=3):
    """A ragged batch (B = 2, S = T = 3, E = 2, H = 3) and the oracle's result on it (params in ``dtype``)."""
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, L=L, score=score, input_feeding=feed, dtype=dtype)
    params, src, src_len, tgt = random_case(cfg, seed=seed)
    params = {n: v.astype(dtype) for n, v in params.items()}             # float32 values are exact in float64
    exact = oracle.evaluate({n: v.astype(np.float64) for n, v in params.items()},
                            cfg.replace(dtype="float64"), src, src_len, tgt).as_float64()
    return cfg, params, (src, src_len, tgt), exact


def scaled_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: the measure the tolerances above bound."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def assert_matches_oracle(impl, cfg, params, batch, exact):
    """Loss, log-probs, attention and every gradient within RTOL of the oracle; outputs in cfg.dtype."""
    rtol = RTOL[cfg.dtype]
    out = impl.forward(params, cfg, *batch)
    loss, grads = impl.loss_and_grads(params, cfg, *batch)
    assert out.log_probs.dtype == np.dtype(cfg.dtype)
    assert_close(out.loss, exact.loss, rtol=rtol, name="forward loss")
    assert_close(loss, exact.loss, rtol=rtol, name="loss_and_grads loss")
    assert_close(out.log_probs, exact.log_probs, rtol=rtol, name="log_probs")
    if exact.attention is None:                                           # the baseline has none: zeros
        assert not np.any(out.attention)
    else:
        assert_close(out.attention, exact.attention, rtol=rtol, name="attention")
    assert list(grads) == list(param_shapes(cfg))
    for name, g in grads.items():
        assert g.dtype == np.dtype(cfg.dtype), name
        assert_close(g, exact.grads[name], rtol=rtol, name=f"grad {name}")


# -- the correct reference agrees with the oracle and with the Numba model ----------------------

@pytest.mark.parametrize("feed", [True, False], ids=["feed", "nofeed"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("score", SCORES + (BASELINE,))
def test_reference_matches_oracle(score, L, feed):
    assert_matches_oracle(CORRECT, *case(score, L, feed))


@pytest.mark.parametrize("score", ["dot", "concat", BASELINE])
def test_reference_float32_matches_oracle(score):
    assert_matches_oracle(CORRECT, *case(score, 2, True, "float32"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("score", SCORES + (BASELINE,))
def test_reference_matches_numba(score, dtype):
    cfg = Config(V_src=7, V_tgt=8, E=3, H=4, L=2, score=score, dtype=dtype)
    params, src, src_len, tgt = random_case(cfg, S=4, T=4, seed=11)
    batch = (src, src_len, tgt)
    rtol = 2 * RTOL[dtype]                                                # both sides round
    ours, theirs = CORRECT.forward(params, cfg, *batch), NUMBA.forward(params, cfg, *batch)
    for field in ("loss", "log_probs", "attention"):
        assert_close(getattr(ours, field), getattr(theirs, field), rtol=rtol, name=field)
    (_, g_ours), (_, g_theirs) = CORRECT.loss_and_grads(params, cfg, *batch), NUMBA.loss_and_grads(params, cfg, *batch)
    for name in param_shapes(cfg):
        assert_close(g_ours[name], g_theirs[name], rtol=rtol, name=f"grad {name}")


# -- attention, its backward, and the LSTM cell on their own -------------------------------------

def attention_case(score, scale=1.0, seed=5):
    """query [2, 3], keys [2, 4, 3], row 1 ragged (src_len 2), and score parameters."""
    rng = np.random.default_rng(seed)
    H = 3
    query, keys = scale * rng.normal(size=(2, H)), scale * rng.normal(size=(2, 4, H))
    mask = np.array([[True] * 4, [True, True, False, False]])
    extra = {"general": {"W_a": rng.normal(size=(H, H))},
             "concat": {"W_a": rng.normal(size=(H, 2 * H)), "v_a": rng.normal(size=H)}}.get(score, {})
    return query, keys, mask, extra


def oracle_attention(score, query, keys, mask, extra):
    rows = [oracle.attention(score, query[b], keys[b], int(mask[b].sum()), **extra) for b in range(len(query))]
    return (np.array([w for w, _ in rows]).astype(np.float64), np.array([c for _, c in rows]).astype(np.float64))


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["ordinary", "scores_past_exp_overflow"])
@pytest.mark.parametrize("score", SCORES)
def test_attention_matches_oracle(score, scale):
    query, keys, mask, extra = attention_case(score, scale)
    weights, ctx = CORRECT.attention(score, query, keys, mask, **extra)
    exact_w, exact_ctx = oracle_attention(score, query, keys, mask, extra)
    assert np.all(weights[~mask] == 0)
    assert_close(weights, exact_w, rtol=RTOL64, name="weights")
    assert_close(ctx, exact_ctx, rtol=RTOL64, name="ctx")


def test_attention_worked_example_of_model_md():
    weights, ctx = CORRECT.attention("dot", np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [0.0, 0.0]]]),
                                     np.array([[True, True]]))
    assert_close(np.log(weights[0, 0] / weights[0, 1]), 0.62, rtol=1e-15, name="e_1 - e_2")


def _ctx_loss(score, query, keys, n, g_ctx, extra, which, index, shift):
    """sum_j g_ctx[j] ctx[j] at mpmath precision, with one input coordinate shifted by ``shift``."""
    args = {"query": query.astype(object), "keys": keys.astype(object),
            **{k: v.astype(object) for k, v in extra.items()}}
    args[which][index] += shift
    W = {k: args[k] for k in extra}
    _, ctx = oracle.attention(score, args["query"], args["keys"], n, dps=50, **W)
    return sum(g * c for g, c in zip(g_ctx, ctx))


@pytest.mark.parametrize("score", SCORES)
def test_attention_vjp_matches_oracle_finite_differences(score):
    """Every input's gradient of L = g_ctx . ctx, per row, against central differences at 50 digits."""
    query, keys, mask, extra = attention_case(score)
    g_ctx = np.random.default_rng(9).normal(size=query.shape)
    grads = CORRECT.attention_vjp(score, query, keys, mask, g_ctx, **extra)
    theirs = NUMBA.attention_vjp(score, query, keys, mask, g_ctx, **extra)
    for name in theirs:
        assert_close(grads[name], theirs[name], rtol=2 * RTOL64, name=f"{name} vs Numba")
    assert np.all(grads["scores"][~mask] == 0)
    h = mpmath.mpf("1e-20")
    fd = {"query": np.zeros(query.shape), "keys": np.zeros(keys.shape),
          **{name: np.zeros(v.shape) for name, v in extra.items()}}     # W_a, v_a: summed over the rows
    with mpmath.workdps(50):
        for b in range(len(query)):
            n = int(mask[b].sum())
            inputs = {"query": (query[b], fd["query"][b]), "keys": (keys[b], fd["keys"][b]),
                      **{name: (v, fd[name]) for name, v in extra.items()}}
            for which, (value, out) in inputs.items():
                for index in np.ndindex(value.shape):
                    plus, minus = (_ctx_loss(score, query[b], keys[b], n, g_ctx[b], extra, which, index, d)
                                   for d in (h, -h))
                    out[index] += float((plus - minus) / (2 * h))
    for name, expected in fd.items():
        assert_close(grads[name], expected, rtol=RTOL64, name=f"d/d{name}")


def test_lstm_cell_matches_oracle_and_numba():
    rng = np.random.default_rng(2)
    B, D, H = 2, 3, 2
    x, h, c = rng.normal(size=(B, D)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    W_ih, W_hh, b_ih, b_hh = (rng.normal(size=s) for s in [(4 * H, D), (4 * H, H), (4 * H,), (4 * H,)])
    h_new, c_new, gates = CORRECT.lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)
    with mpmath.workdps(40):
        for b in range(B):
            lists = [np.vectorize(mpmath.mpf, otypes=[object])(v).tolist()     # exact, then 40 digits
                     for v in (x[b], h[b], c[b], W_ih, W_hh, b_ih, b_hh)]
            exact_h, exact_c = equations.lstm_cell(MPMATH, *lists)
            exact_gates = sum(equations.lstm_gates(MPMATH, lists[0], lists[1], *lists[3:]), [])
            assert_close(h_new[b], np.array(exact_h, float), rtol=RTOL64, name="h'")
            assert_close(c_new[b], np.array(exact_c, float), rtol=RTOL64, name="c'")
            assert_close(gates[b], np.array(exact_gates, float), rtol=RTOL64, name="gates")
    for ours, theirs, name in zip((h_new, c_new, gates), NUMBA.lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh),
                                  ("h'", "c'", "gates")):
        assert_close(ours, theirs, rtol=2 * RTOL64, name=name)


# -- decoding -----------------------------------------------------------------------------------------

def assert_decode_matches_oracle(impl, cfg, params, src, src_len, max_len=4):
    """Each emitted token is the argmax of the oracle's log-probabilities given the tokens before it,
    and the reported score is their sum (teacher forcing on the decoded output reproduces it)."""
    out = impl.greedy_decode(params, cfg, src, src_len, max_len)
    tgt = np.concatenate([np.full((len(src), 1), cfg.bos_id), out.tokens], axis=1)
    log_probs = oracle.evaluate(params, cfg, src, src_len, tgt, grads=False).as_float64().log_probs
    for b, n in enumerate(out.lengths):
        t = np.arange(n)
        assert np.array_equal(out.tokens[b, :n], log_probs[b, t].argmax(axis=1)), f"row {b}: not the argmax"
        assert_close(out.scores[b], log_probs[b, t, out.tokens[b, :n]].sum(), rtol=RTOL64, name=f"score row {b}")


@pytest.mark.parametrize("score", ["dot", "general", BASELINE])
def test_greedy_decode_matches_oracle_teacher_forcing(score):
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, score=score)
    params, src, src_len, _ = random_case(cfg, seed=4, scale=1.0)
    assert_decode_matches_oracle(CORRECT, cfg, params, src, src_len)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("score", ["dot", "concat", BASELINE])
def test_decoding_matches_numba(score, dtype):
    """Greedy and beam search (K = 1..3, with and without length normalisation) give Numba's hypotheses."""
    cfg = Config(V_src=7, V_tgt=7, E=3, H=4, L=2, score=score, dtype=dtype)
    for seed in range(3):
        params, src, src_len, _ = random_case(cfg, seed=seed, scale=1.0)
        runs = [("greedy_decode", (6,))] + [("beam_search", (K, 6, norm)) for K in (1, 2, 3) for norm in (False, True)]
        for method, args in runs:
            ours = getattr(CORRECT, method)(params, cfg, src, src_len, *args)
            theirs = getattr(NUMBA, method)(params, cfg, src, src_len, *args)
            assert np.array_equal(ours.tokens, theirs.tokens), (method, args, ours.tokens, theirs.tokens)
            assert np.array_equal(ours.lengths, theirs.lengths), (method, args)
            assert ours.scores.dtype == np.dtype(dtype)
            assert_close(ours.scores, theirs.scores, rtol=2 * RTOL[dtype], name=f"{method}{args} scores")
            assert_close(ours.attention, theirs.attention, rtol=2 * RTOL[dtype], name=f"{method}{args} attention")


# -- bad input ------------------------------------------------------------------------------------------

def _bad_calls():
    cfg, params, (src, src_len, tgt), _ = case("general", 1)
    q, k, m, extra = attention_case("general")
    nan = {**params, "generator.bias": np.full(6, np.nan)}
    return [
        ("config", TypeError, lambda: CORRECT.forward(params, {"H": 3}, src, src_len, tgt)),
        ("params", ValueError, lambda: CORRECT.forward({**params, "extra": 0}, cfg, src, src_len, tgt)),
        ("params['generator.bias']", ValueError, lambda: CORRECT.loss_and_grads(nan, cfg, src, src_len, tgt)),
        ("src_len", ValueError, lambda: CORRECT.forward(params, cfg, src, [4, 1], tgt)),
        ("tgt", ValueError, lambda: CORRECT.loss_and_grads(params, cfg, src, src_len, tgt[:, 1:])),
        ("src", ValueError, lambda: CORRECT.greedy_decode(params, cfg, src + 10, src_len, 3)),
        ("max_len", ValueError, lambda: CORRECT.greedy_decode(params, cfg, src, src_len, 0)),
        ("beam_size", TypeError, lambda: CORRECT.beam_search(params, cfg, src, src_len, True, 3)),
        ("score", ValueError, lambda: CORRECT.attention("additive", q, k, m, **extra)),
        ("mask", ValueError, lambda: CORRECT.attention("general", q, k, m[:, ::-1].copy(), **extra)),
        ("mask", TypeError, lambda: CORRECT.attention("general", q, k, m.astype(int), **extra)),
        ("keys", TypeError, lambda: CORRECT.attention("general", q, k.astype(np.float32), m, **extra)),
        ("W_a", ValueError, lambda: CORRECT.attention("general", q, k, m)),
        ("v_a", ValueError, lambda: CORRECT.attention("general", q, k, m, v_a=np.ones(3), **extra)),
        ("g_ctx", ValueError, lambda: CORRECT.attention_vjp("general", q, k, m, q[:1], **extra)),
        ("W_ih", ValueError, lambda: CORRECT.lstm_cell(q, q, q, np.ones((12, 2)), np.ones((12, 3)),
                                                       np.ones(12), np.ones(12))),
        ("bugs", ValueError, lambda: NumpyReference(bugs=("off_by_one",))),
        ("name", ValueError, lambda: mutant("off_by_one")),
    ]


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize("argument, error, call", BAD_CALLS,
                         ids=[f"{a}-{e.__name__}" for a, e, _ in BAD_CALLS])
def test_bad_input_raises_an_error_naming_the_argument(argument, error, call):
    with pytest.raises(error, match="^" + re.escape(argument)):
        call()


# -- the catalogue of mutants ---------------------------------------------------------------------------

def test_catalogue_is_complete_and_stable():
    assert len(MUTANTS) >= 12
    assert set(WHERE) == set(MUTANTS) == set(WITNESS)
    for name, description in MUTANTS.items():
        assert description and "\n" not in description, name
        impl = mutant(name)
        assert impl.name == f"mutant:{name}" and impl.bugs == {name}
    assert CORRECT.name == "numpy reference" and not CORRECT.bugs
    assert all(CORRECT.supports(m) for m in ("attention", "attention_vjp", "lstm_cell", "forward",
                                               "loss_and_grads", "greedy_decode", "beam_search"))


def model_errors(impl, score, L):
    """scaled_error of the loss, attention and worst gradient against the oracle (dot.. cases, feed on)."""
    cfg, params, batch, exact = case(score, L)
    out = impl.forward(params, cfg, *batch)
    _, grads = impl.loss_and_grads(params, cfg, *batch)
    return {"loss": scaled_error(out.loss, exact.loss),
            "attention": scaled_error(out.attention, exact.attention),
            "grads": max(scaled_error(grads[n], exact.grads[n]) for n in grads)}


def _overflow(impl):
    """Attention at scores near 1e3, past exp's float64 range: weights against the oracle's."""
    query, keys, mask, extra = attention_case("dot", scale=30.0)
    weights, _ = impl.attention("dot", query, keys, mask, **extra)
    with np.errstate(invalid="ignore"):
        return scaled_error(weights, oracle_attention("dot", query, keys, mask, extra)[0])


def _decode(impl):
    """Greedy decoding against the oracle's teacher-forced log-probabilities of its own output."""
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3)
    params, src, src_len, _ = random_case(cfg, seed=4, scale=1.0)
    try:
        assert_decode_matches_oracle(impl, cfg, params, src, src_len)
    except AssertionError:
        return np.inf
    return 0.0


# name -> (which quantity the defect shows in, the score and L of the oracle case that shows it).
# "grads" marks defects of the backward only: their forward must agree with the oracle.
WITNESS = {
    "mask_ignored": ("attention", "dot", 2),
    "softmax_wrong_axis": ("attention", "dot", 2),
    "softmax_no_max_subtraction": ("overflow", "dot", None),
    "scaled_dot_by_H": ("attention", "scaled_dot", 2),
    "general_W_a_transposed": ("attention", "general", 2),
    "concat_order_swapped": ("attention", "concat", 2),
    "query_from_bottom_layer": ("attention", "dot", 2),
    "W_c_order_swapped": ("loss", "dot", 2),
    "softmax_vjp_mean_dropped": ("grads", "dot", 2),
    "attention_keys_grad_dropped": ("grads", "dot", 2),
    "tanh_grad_one_minus_tanh": ("grads", "dot", 2),
    "lstm_gate_order_figo": ("loss", "dot", 2),
    "bias_hh_grad_missing": ("grads", "dot", 2),
    "encoder_not_frozen": ("loss", "dot", 2),
    "decoder_init_zeros": ("loss", "dot", 2),
    "input_feeding_missing": ("loss", "dot", 2),
    "input_feeding_raw_h": ("loss", "dot", 2),
    "loss_over_all_positions": ("loss", "dot", 2),
    "greedy_feeds_wrong_token": ("decode", None, None),
}


def test_witnesses_pass_the_correct_reference():
    for score, L in {(s, L) for kind, s, L in WITNESS.values() if kind not in ("overflow", "decode")}:
        assert max(model_errors(CORRECT, score, L).values()) <= RTOL64, (score, L)
    assert _overflow(CORRECT) <= RTOL64
    assert _decode(CORRECT) == 0.0


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_live(name):
    """The defect changes a quantity the oracle fixes by far more than rounding (LIVE = 1e-6)."""
    kind, score, L = WITNESS[name]
    impl = mutant(name)
    if kind == "overflow":
        error = _overflow(impl)
    elif kind == "decode":
        error = _decode(impl)
    else:
        errors = model_errors(impl, score, L)
        if kind == "grads":                                               # a defect of the backward alone
            assert errors["loss"] <= RTOL64 and errors["attention"] <= RTOL64, errors
        error = errors[kind]
    assert not error <= LIVE, f"{name} ({MUTANTS[name]}): {kind} within {error:.2g} of the oracle"


@pytest.mark.parametrize("name", [n for n, (kind, _, _) in WITNESS.items() if kind in ("attention", "loss")])
def test_forward_defects_keep_their_own_gradient_exact(name):
    """A forward defect is a different model, differentiated correctly: its gradient matches central
    differences of its own loss, so only checks against MODEL.md (never a gradient check) can catch it.

    Directional differences with step 1e-6: truncation ~1e-12 |loss'''| plus rounding
    ~1e-16 |loss| / 1e-6, about 1e-10 in all; 1e-7 + 1e-6 |grad . d| leaves a wide margin.
    """
    _, score, L = WITNESS[name]
    cfg, params, batch, _ = case(score, L)
    impl = mutant(name)
    _, grads = impl.loss_and_grads(params, cfg, *batch)
    rng, step = np.random.default_rng(0), 1e-6
    for n, g in grads.items():
        d = rng.normal(size=g.shape)
        loss_at = [impl.forward({**params, n: params[n] + s * step * d}, cfg, *batch).loss for s in (1, -1)]
        fd, analytic = (loss_at[0] - loss_at[1]) / (2 * step), float(np.sum(g * d))
        assert abs(fd - analytic) <= 1e-7 + 1e-6 * abs(analytic), (n, fd, analytic)
