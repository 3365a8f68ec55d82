"""Tests of attnspec.impl.model: forward pass, loss and hand-written gradients.

Reference values never come from the code under test: gradients are checked
against central finite differences, the forward pass against MODEL.md's
equations as written in ``spec/equations.py`` evaluated in plain float64, and
special cases against values worked out by hand.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from attnspec.impl.model import forward, init_params, loss_and_grads
from attnspec.spec import equations as eq
from attnspec.spec.config import Config, param_shapes
from attnspec.spec.compare import assert_close

SCORES = ("dot", "scaled_dot", "general", "concat", "none")
FLOAT_OPS = eq.Ops(exp=math.exp, log=math.log, tanh=math.tanh, sqrt=math.sqrt)


def make_batch(config, rng, B=3, S=5, T=4):
    """Ragged source (row 0 full length), targets ending with EOS then PAD."""
    src_len = rng.integers(1, S + 1, size=B)
    src_len[0] = S
    src = rng.integers(3, config.V_src, size=(B, S))
    for b in range(B):
        src[b, src_len[b]:] = config.pad_id
    tgt = rng.integers(3, config.V_tgt, size=(B, T + 1))
    tgt[:, 0] = config.bos_id
    for b in range(B):
        n = T if b == 0 else int(rng.integers(1, T + 1))
        tgt[b, n] = config.eos_id
        tgt[b, n + 1:] = config.pad_id
    return src, src_len, tgt


def small_config(**kw):
    return Config(**{"V_src": 7, "V_tgt": 8, "E": 3, "H": 4, **kw})


# -- parameters ---------------------------------------------------------------------

def test_init_params_follow_param_shapes_and_are_reproducible():
    cfg = small_config(score="concat", L=2, dtype="float32")
    p = init_params(cfg, 5)
    assert list(p) == list(param_shapes(cfg))
    for name, shape in param_shapes(cfg).items():
        assert p[name].shape == shape and p[name].dtype == np.float32, name
    q = init_params(cfg, 5)
    assert all(np.array_equal(p[n], q[n]) for n in p)
    assert not np.array_equal(p["generator.weight"], init_params(cfg, 6)["generator.weight"])
    bound = 1 / math.sqrt(cfg.H)
    assert np.abs(p["decoder.lstm.weight_hh_l1"]).max() <= bound


# -- forward against MODEL.md's equations ----------------------------------------------

def reference_forward(params, cfg, src, src_len, tgt):
    """MODEL.md evaluated with spec/equations.py in plain Python float64: (loss, log_probs, attention)."""
    P = {k: np.asarray(v, np.float64).tolist() for k, v in params.items()}
    H, L = cfg.H, cfg.L

    def layer(prefix, k):
        return (P[f"{prefix}.weight_ih_l{k}"], P[f"{prefix}.weight_hh_l{k}"],
                P[f"{prefix}.bias_ih_l{k}"], P[f"{prefix}.bias_hh_l{k}"])

    B, T = len(src), len(tgt[0]) - 1
    total, count = 0.0, 0
    log_probs = np.zeros((B, T, cfg.V_tgt))
    attention = np.zeros((B, T, len(src[0])))
    for b in range(B):
        h, c = [[0.0] * H for _ in range(L)], [[0.0] * H for _ in range(L)]
        keys = []
        for s in range(int(src_len[b])):
            x = P["encoder.embedding.weight"][src[b][s]]
            for k in range(L):
                h[k], c[k] = eq.lstm_cell(FLOAT_OPS, x, h[k], c[k], *layer("encoder.lstm", k))
                x = h[k]
            keys.append(h[L - 1])
        h_tilde = [0.0] * H
        for t in range(T):
            x = P["decoder.embedding.weight"][tgt[b][t]]
            if cfg.feeds_input:
                x = list(x) + list(h_tilde)
            for k in range(L):
                h[k], c[k] = eq.lstm_cell(FLOAT_OPS, x, h[k], c[k], *layer("decoder.lstm", k))
                x = h[k]
            if cfg.attention:
                e = [eq.score(FLOAT_OPS, cfg.score, h[L - 1], key, P.get("attention.W_a"), P.get("attention.v_a"))
                     for key in keys]
                m = max(e)
                a = eq.masked_softmax(FLOAT_OPS, [v - m for v in e], len(e))
                attention[b, t, :len(a)] = a
                h_tilde = eq.attentional_state(FLOAT_OPS, P["attention.W_c"], eq.context(a, keys), h[L - 1])
            else:
                h_tilde = h[L - 1]
            logits = eq.generator(P["generator.weight"], P["generator.bias"], h_tilde)
            m = max(logits)
            lp = eq.log_softmax(FLOAT_OPS, [v - m for v in logits])
            log_probs[b, t] = lp
            if tgt[b][t + 1] != cfg.pad_id:
                total += eq.token_loss(lp, tgt[b][t + 1])
                count += 1
    return total / count, log_probs, attention


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("L", [1, 2])
def test_forward_matches_model_equations(score, L):
    # Both sides are float64 evaluations of the same formulas in a different
    # order of operations: rounding differences of a few ulps per operation,
    # amplified at most ~O(10) through these shallow, well-conditioned nets, so
    # 1e-12 relative leaves a wide margin while any modelling slip is O(1e-2).
    cfg = small_config(score=score, L=L, input_feeding=(L == 1))
    rng = np.random.default_rng(11)
    p = init_params(cfg, 2)
    src, src_len, tgt = make_batch(cfg, rng)
    res = forward(p, cfg, src, src_len, tgt)
    loss, log_probs, attention = reference_forward(p, cfg, src.tolist(), src_len, tgt.tolist())
    assert_close(res.loss, loss, rtol=1e-12, atol=0, name="loss")
    assert_close(res.log_probs, log_probs, rtol=1e-12, atol=1e-13, name="log_probs")
    assert_close(res.attention, attention, rtol=1e-12, atol=1e-14, name="attention")


def test_zero_parameters_give_uniform_distributions():
    """All weights 0: log p = -log V_tgt at every step and a_{t,s} = 1/src_len (worked by hand)."""
    cfg = small_config()
    p = {k: np.zeros_like(v) for k, v in init_params(cfg, 0).items()}
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(0))
    res = forward(p, cfg, src, src_len, tgt)
    assert_close(res.loss, math.log(cfg.V_tgt), rtol=1e-15, atol=0, name="loss")
    assert_close(res.log_probs, np.full(res.log_probs.shape, -math.log(cfg.V_tgt)), rtol=1e-15, atol=0, name="log_probs")
    S = src.shape[1]
    expected = (np.arange(S)[None, None, :] < src_len[:, None, None]) / src_len[:, None, None]
    assert_close(res.attention, np.broadcast_to(expected, res.attention.shape), rtol=1e-15, atol=0, name="attention")


# -- gradients against finite differences ---------------------------------------------

@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("L,feeding", [(1, True), (2, True), (1, False), (2, False)])
def test_gradients_match_central_differences(score, L, feeding):
    # Central differences in float64 with step h = 1e-6: truncation error
    # ~h^2/6 |L'''| ~ 1e-13, rounding error ~eps |loss| / h ~ 2.2e-16 * 3 / 1e-6
    # ~ 7e-10 in absolute terms (observed ~2e-10). Hence the bound
    # |fd - g| <= 1e-8 + 1e-6 |g|: ~10x above the noise, far below any real
    # gradient error (a missing term is O(|g|)).
    cfg = small_config(score=score, L=L, input_feeding=feeding)
    rng = np.random.default_rng(hash((score, L, feeding)) % 2**32)
    p = init_params(cfg, 4)
    src, src_len, tgt = make_batch(cfg, rng)
    loss, grads = loss_and_grads(p, cfg, src, src_len, tgt)
    assert list(grads) == list(p)
    assert loss == pytest.approx(forward(p, cfg, src, src_len, tgt).loss, rel=1e-15)
    step = 1e-6
    for name, value in p.items():
        assert grads[name].shape == value.shape and grads[name].dtype == value.dtype, name
        for _ in range(3):
            idx = tuple(int(rng.integers(0, n)) for n in value.shape)
            q = dict(p)
            q[name] = value.copy()
            q[name][idx] = value[idx] + step
            up = forward(q, cfg, src, src_len, tgt).loss
            q[name][idx] = value[idx] - step
            down = forward(q, cfg, src, src_len, tgt).loss
            assert_close(grads[name][idx], (up - down) / (2 * step), rtol=1e-6, atol=1e-8, name=f"{name}{idx}")


def test_gradient_of_a_source_id_past_src_len_is_zero():
    """Embeddings read only at s > src_len (frozen steps) get no gradient."""
    cfg = small_config(V_src=9)
    p = init_params(cfg, 1)
    src = np.array([[3, 4, 8, 8], [5, 3, 4, 8]])                      # id 8 only past src_len
    loss, grads = loss_and_grads(p, cfg, src, np.array([2, 3]), np.array([[1, 4, 2], [1, 5, 2]]))
    assert np.all(grads["encoder.embedding.weight"][8] == 0.0)
    assert np.any(grads["encoder.embedding.weight"][3] != 0.0)


# -- masking, padding, independence, determinism -----------------------------------------

@pytest.mark.parametrize("score", ["dot", "concat"])
def test_masked_weights_are_exactly_zero_and_rows_sum_to_one(score):
    cfg = small_config(score=score)
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(3), B=4, S=6)
    a = forward(init_params(cfg, 0), cfg, src, src_len, tgt).attention
    for b in range(4):
        assert np.all(a[b, :, src_len[b]:] == 0.0)
    assert_close(a.sum(axis=2), np.ones(a.shape[:2]), rtol=0, atol=4e-16 * 6, name="sum_s a")


@pytest.mark.parametrize("score", ["scaled_dot", "general", "none"])
def test_extra_pad_columns_change_nothing(score):
    # Only the first src_len keys are ever read, and frozen steps copy the state,
    # so the forward pass is bit-identical; the weight gradients are GEMMs over
    # S*B rows whose added rows are exact zeros, which may change BLAS's
    # summation order: ulp-level differences only (1e-13 relative).
    cfg = small_config(score=score, L=2)
    p = init_params(cfg, 0)
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(5))
    wide = np.concatenate([src, np.zeros((3, 3), np.int64)], axis=1)
    narrow_res, wide_res = forward(p, cfg, src, src_len, tgt), forward(p, cfg, wide, src_len, tgt)
    assert wide_res.loss == narrow_res.loss
    assert np.array_equal(wide_res.log_probs, narrow_res.log_probs)
    assert np.array_equal(wide_res.attention[:, :, :5], narrow_res.attention)
    assert np.all(wide_res.attention[:, :, 5:] == 0.0)
    _, g1 = loss_and_grads(p, cfg, src, src_len, tgt)
    _, g2 = loss_and_grads(p, cfg, wide, src_len, tgt)
    for name in g1:
        assert_close(g2[name], g1[name], rtol=1e-13, atol=1e-16, name=name)


def test_batch_rows_are_independent():
    # Each row alone gives the same outputs (up to BLAS rounding of a different
    # M in the GEMMs: 1e-13); the batch gradient is the label-count-weighted
    # mean of the rows' gradients, since loss = sum of row sums / total count.
    cfg = small_config(score="general", L=2)
    p = init_params(cfg, 7)
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(8))
    res = forward(p, cfg, src, src_len, tgt)
    _, grads = loss_and_grads(p, cfg, src, src_len, tgt)
    counts = (tgt[:, 1:] != cfg.pad_id).sum(axis=1)
    combined = {n: np.zeros_like(v) for n, v in p.items()}
    for b in range(3):
        row = forward(p, cfg, src[b:b + 1], src_len[b:b + 1], tgt[b:b + 1])
        assert_close(row.log_probs[0], res.log_probs[b], rtol=1e-13, atol=1e-14, name=f"log_probs row {b}")
        assert_close(row.attention[0], res.attention[b], rtol=1e-13, atol=1e-15, name=f"attention row {b}")
        _, g = loss_and_grads(p, cfg, src[b:b + 1], src_len[b:b + 1], tgt[b:b + 1])
        for n in g:
            combined[n] += g[n] * counts[b] / counts.sum()
    for n in grads:
        assert_close(grads[n], combined[n], rtol=1e-12, atol=1e-15, name=n)


def test_results_are_deterministic():
    cfg = small_config(score="concat", L=2)
    p = init_params(cfg, 1)
    batch = make_batch(cfg, np.random.default_rng(2))
    l1, g1 = loss_and_grads(p, cfg, *batch)
    l2, g2 = loss_and_grads(p, cfg, *batch)
    assert l1 == l2 and all(np.array_equal(g1[n], g2[n]) for n in g1)


# -- float32 ----------------------------------------------------------------------

@pytest.mark.parametrize("score", ["dot", "concat"])
def test_float32_agrees_with_float64(score):
    # float32 rounding (eps = 6e-8) accumulates over ~S + T sequential steps and
    # sums of H..V terms; with O(1) activations the relative error stays ~1e-6
    # (observed max ~1e-6 on the loss, ~1e-6 absolute on log_probs and gradients).
    # Bounds: 1e-5 relative on the loss, 1e-5 absolute on log_probs and
    # 1e-5 * max|g| absolute per gradient.
    c64 = Config(V_src=20, V_tgt=30, E=16, H=16, L=2, score=score)
    c32 = c64.replace(dtype="float32")
    p64 = init_params(c64, 3)
    p32 = init_params(c32, 3)
    batch = make_batch(c64, np.random.default_rng(4), B=4, S=7, T=6)
    r64, r32 = forward(p64, c64, *batch), forward(p32, c32, *batch)
    assert r32.log_probs.dtype == np.float32 and r32.attention.dtype == np.float32
    assert_close(r32.loss, r64.loss, rtol=1e-5, atol=0, name="loss")
    assert_close(r32.log_probs, r64.log_probs, rtol=0, atol=1e-5, name="log_probs")
    assert_close(r32.attention, r64.attention, rtol=0, atol=1e-5, name="attention")
    _, g64 = loss_and_grads(p64, c64, *batch)
    _, g32 = loss_and_grads(p32, c32, *batch)
    for n in g64:
        assert g32[n].dtype == np.float32
        assert_close(g32[n], g64[n], rtol=0, atol=1e-5 * max(np.abs(g64[n]).max(), 1e-3), name=n)


# -- overflow -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("score", ["general", "concat"])
def test_huge_scores_and_logits_do_not_overflow(score, dtype):
    """Scores and logits of magnitude ~1e4 (exp would overflow) give finite results."""
    cfg = small_config(score=score, dtype=dtype)
    p = init_params(cfg, 0)
    p["attention.W_a"] = p["attention.W_a"] * 3e4
    if score == "concat":
        p["attention.v_a"] = np.full_like(p["attention.v_a"], 1e4)
    p["generator.weight"] = p["generator.weight"] * 3e4
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(1))
    res = forward(p, cfg, src, src_len, tgt)
    loss, grads = loss_and_grads(p, cfg, src, src_len, tgt)
    assert np.isfinite(res.loss) and np.isfinite(loss)
    assert np.all(np.isfinite(res.log_probs)) and np.all(res.log_probs <= 0)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert_close(res.attention.sum(axis=2), np.ones(res.attention.shape[:2]), rtol=0, atol=1e-5, name="sum_s a")
    assert res.attention.max() > 0.99                                 # the softmax really saturated


# -- bad input ------------------------------------------------------------------------

def _bad_inputs():
    cfg = small_config(score="general")
    p = init_params(cfg, 0)
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(0))
    ok = dict(params=p, config=cfg, src=src, src_len=src_len, tgt=tgt)
    wrong_shape = dict(p, **{"attention.W_a": np.zeros((4, 5))})
    missing = {k: v for k, v in p.items() if k != "attention.W_a"}
    nan = dict(p, **{"generator.bias": np.full(8, np.nan)})
    no_bos = tgt.copy()
    no_bos[1, 0] = 3
    src_oov, tgt_oov = src.copy(), tgt.copy()
    src_oov[0, 0] = cfg.V_src
    tgt_oov[0, 1] = cfg.V_tgt
    cases = [
        ("config", TypeError, dict(config="dot")),
        ("params", TypeError, dict(params=[1, 2])),
        ("params", ValueError, dict(params=missing)),
        ("attention.W_a", ValueError, dict(params=wrong_shape)),
        ("generator.bias", ValueError, dict(params=nan)),
        ("src", TypeError, dict(src=src.astype(float))),
        ("src", ValueError, dict(src=src[0])),
        ("src", ValueError, dict(src=src_oov)),
        ("src", ValueError, dict(src=-src)),
        ("src_len", ValueError, dict(src_len=np.array([5, 0, 1]))),
        ("src_len", ValueError, dict(src_len=np.array([6, 1, 1]))),
        ("src_len", ValueError, dict(src_len=src_len[:2])),
        ("tgt", ValueError, dict(tgt=no_bos)),
        ("tgt", ValueError, dict(tgt=tgt_oov)),
        ("tgt", ValueError, dict(tgt=tgt[:2])),
        ("tgt", ValueError, dict(tgt=tgt[:, :1])),
    ]
    return [pytest.param(ok, name, exc, change, id=f"{name}-{i}") for i, (name, exc, change) in enumerate(cases)]


@pytest.mark.parametrize("ok,name,exc,change", _bad_inputs())
@pytest.mark.parametrize("fn", [forward, loss_and_grads])
def test_bad_input_is_rejected_naming_the_argument(fn, ok, name, exc, change):
    with pytest.raises(exc, match=name.replace(".", r"\.")):
        fn(**{**ok, **change})


def test_an_id_beyond_int64_is_reported_as_it_is():
    """Found by fuzzing: uint64 ids above int64's range wrapped, and the error named id -9223372036854775805."""
    cfg = small_config()
    src, src_len, tgt = make_batch(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"src: 9223372036854775811 at index \(0, 0\) is beyond int64"):
        forward(init_params(cfg, 0), cfg, np.full(src.shape, 2**63 + 3, np.uint64), src_len, tgt)


def test_non_finite_results_raise_instead_of_returning_nan(monkeypatch):
    """The results' check, behind the parameters' bound (lifted here: these parameters exceed it)."""
    monkeypatch.setattr("attnspec.spec.validate.products_fit_bound", lambda config, dtype: math.inf)
    cfg = small_config()
    p = init_params(cfg, 0)
    # logits_3 = 1.7e308 + 1e308 * sum(h~) and logits_4 = 1.7e308 - 1e308 * sum(h~): one of
    # them overflows to +inf as soon as |sum(h~)| > 0.1, and the log-softmax is NaN.
    p["generator.bias"][3:5] = 1.7e308
    p["generator.weight"][3] = 1e308
    p["generator.weight"][4] = -1e308
    with pytest.raises(FloatingPointError, match="loss_and_grads"):
        loss_and_grads(p, cfg, *make_batch(cfg, np.random.default_rng(0)))


def _tiny_case(dtype):
    cfg = Config(V_src=5, V_tgt=5, E=2, H=2, score="general", dtype=dtype)
    return cfg, init_params(cfg, 0), np.array([[3, 4, 3]]), np.array([3]), np.array([[1, 4, 3, 2]])


@pytest.mark.parametrize("dtype,scale", [("float64", 1e160), ("float64", 1e300), ("float32", 1e20)])
@pytest.mark.parametrize("fn", [forward, loss_and_grads])
def test_parameters_whose_products_could_overflow_are_refused(fn, dtype, scale):
    """Found by fuzzing: at these scales an embedding times W_ih overflows to infinity, the
    gates saturate on it, and the loss came out finite and wrong (4.97e159 for the exact 8.33e159)."""
    cfg, p, src, src_len, tgt = _tiny_case(dtype)
    big = {k: (v.astype(np.float64) * scale).astype(dtype) for k, v in p.items()}
    with pytest.raises(ValueError, match=r"params\['.*'\]: too large for " + dtype):
        fn(big, cfg, src, src_len, tgt)


def test_parameters_inside_the_bound_give_the_oracles_loss():
    """At the edge of ``products_fit_bound`` the products stay finite and the loss is the exact one."""
    from attnspec.spec.oracle import evaluate
    from attnspec.spec.validate import products_fit_bound

    cfg, p, src, src_len, tgt = _tiny_case("float64")
    norm = max(float(np.linalg.norm(v)) for v in p.values())
    scale = 0.99 * products_fit_bound(cfg, np.float64) / norm                 # about 4e152
    big = {k: v * scale for k, v in p.items()}
    loss = forward(big, cfg, src, src_len, tgt).loss
    truth = float(evaluate(big, cfg, src, src_len, tgt, grads=False).loss)
    # The loss is a difference of logits of size ~1e153 computed in a handful of roundings:
    # a relative error of a few eps, not the 40% of an overflowed product.
    assert abs(loss - truth) <= 1e-13 * abs(truth), (loss, truth)


# -- without the JIT --------------------------------------------------------------------

def _jit_case_results(score: str) -> dict:
    """Loss, gradients and both decodings of one small case: the same code with and without the JIT."""
    from attnspec.impl.decode import beam_search, greedy_decode

    cfg = Config(V_src=7, V_tgt=8, E=3, H=4, L=2, score=score)
    p = init_params(cfg, 9)
    src, src_len = np.array([[3, 4, 5], [6, 3, 0]]), np.array([3, 2])
    loss, g = loss_and_grads(p, cfg, src, src_len, np.array([[1, 4, 5, 2], [1, 3, 2, 0]]))
    greedy = greedy_decode(p, cfg, src, src_len, max_len=5)
    beam = beam_search(p, cfg, src, src_len, beam_size=3, max_len=5)
    return {"loss": loss, **{k: v.tolist() for k, v in g.items()},
            **{f"{name}.{field}": getattr(r, field).tolist() for name, r in (("greedy", greedy), ("beam", beam))
               for field in ("tokens", "scores", "attention")}}


_NOJIT_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_impl_model import SCORES, _jit_case_results
print(json.dumps({score: _jit_case_results(score) for score in SCORES}))
"""


def test_kernels_run_without_the_jit():
    # Same operations and formulas in pure Python/NumPy: only BLAS vs NumPy summation
    # order differs, at the ulp level (1e-12 relative); decoded tokens are equal
    # unless two log-probabilities tie within that, which these cases do not.
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", _NOJIT_SCRIPT, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, check=True).stdout
    nojit = json.loads(out)
    for score in SCORES:
        jit = _jit_case_results(score)
        assert set(jit) == set(nojit[score])
        for name, value in jit.items():
            if name.endswith(".tokens"):
                assert nojit[score][name] == value, f"{score} {name}"
            else:
                assert_close(np.array(nojit[score][name]), np.array(value), rtol=1e-12, atol=1e-15,
                             name=f"{score} {name}")


# -- against the high-precision oracle ----------------------------------------------------

@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("L,feeding", [(1, True), (2, False)])
def test_loss_and_gradients_match_the_oracle(score, L, feeding):
    # The oracle evaluates MODEL.md in mpmath at 30 digits; our float64 result
    # differs by rounding only: a few ulps per operation, observed <= 1.3e-14
    # relative to each gradient's largest entry (docs/implementation.md, Tolerances). The bound 1e-10 (the lead's
    # target) leaves 4 orders of magnitude and still catches any modelling error.
    oracle = pytest.importorskip("attnspec.spec.oracle")
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, L=L, score=score, input_feeding=feeding)
    p = init_params(cfg, 1)
    batch = make_batch(cfg, np.random.default_rng(0), B=2, S=3, T=3)
    ref = oracle.evaluate(p, cfg, *batch, dps=30).as_float64()
    loss, grads = loss_and_grads(p, cfg, *batch)
    assert_close(loss, ref.loss, rtol=1e-12, atol=0, name="loss")
    for n in grads:
        assert_close(grads[n], ref.grads[n], rtol=0, atol=1e-10 * np.abs(ref.grads[n]).max(), name=n)


def test_init_params_refuses_a_model_bigger_than_the_machine():
    """Found by fuzzing: V_tgt = 10**12 reached NumPy's MemoryError (21.8 TiB), L = 10**9 an empty one after 39 s."""
    for cfg in (Config(V_src=5, V_tgt=10**12, E=2, H=2), Config(V_src=5, V_tgt=5, E=2, H=2, L=10**9)):
        with pytest.raises(ValueError, match="config: its parameters need about"):
            init_params(cfg, 0)
