"""The high-precision oracle (spec.autodiff, spec.oracle): checked against finite differences and hand cases.

Tolerances. Reverse-mode gradients are computed at dps = 40 (relative error
~1e-37). Central differences at dps = 50 with h = 1e-15 have a truncation
error h^2 |loss'''| / 6 ~ 1e-30 (|loss'''| = O(1..100) for these tiny nets
with weights ~ N(0, 0.5^2)) and a rounding error of about
n_ops * 10^-50 * |loss| / h ~ 10^4 * 1e-50 / 1e-15 ~ 1e-31. So the two agree
to ~1e-29 absolute, and the FD_RTOL = 1e-20 / FD_ATOL = 1e-25 checks below
leave 4 orders of margin while still rejecting any gradient error above
one part in 10^20 (a wrong gradient off by 1e-12 relative fails: see
test_fd_comparison_rejects_a_gradient_off_by_1e_12).
"""

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from attnspec.spec.autodiff import AUTODIFF, MPMATH, PRIMITIVES, Var
from attnspec.spec.cases import random_case, sample_coords
from attnspec.spec.config import SCORES, Config, param_shapes
from attnspec.spec.oracle import OracleResult, attention, evaluate, finite_difference_grad

FD_RTOL, FD_ATOL = mpmath.mpf("1e-20"), mpmath.mpf("1e-25")
DPS = 40


# -- helpers -----------------------------------------------------------------------

def fd_disagreements(params, config, batch, grads, coords, rtol=FD_RTOL, atol=FD_ATOL):
    """Every coordinate where |grad - FD| > atol + rtol |FD|, described with both values."""
    bad = []
    for name, index in coords:
        fd = finite_difference_grad(params, config, *batch, name, index, h="1e-15", dps=50)
        g = grads[name][index]
        with mpmath.workdps(50):
            err = abs(g - fd)
            if err > atol + rtol * abs(fd):
                bad.append(f"{name}{index}: oracle {mpmath.nstr(g, 30)} fd {mpmath.nstr(fd, 30)} "
                           f"|diff| {mpmath.nstr(err, 3)}")
    return bad


def rel_close(x, y, digits):
    """|x - y| <= 10^-digits max(|x|, |y|, 1), evaluated at more than ``digits`` digits."""
    with mpmath.workdps(digits + 20):  # mpf arithmetic rounds to the *current* precision (15 by default)
        return abs(x - y) <= mpmath.mpf(10) ** -digits * max(abs(x), abs(y), 1)


# -- the autodiff engine on small scalar functions ------------------------------------

def test_autodiff_arithmetic_matches_hand_derivatives():
    with mpmath.workdps(DPS):
        x0, y0 = mpmath.mpf("0.3"), mpmath.mpf("-1.7")
        x, y = Var(x0), Var(y0)
        f = x * y + x / y - y / x + 3 - x - (2 - y) * (-x) + 5 * x / 2 + 3 / y
        f.backward()
        # df/dx = y + 1/y + y/x^2 - 1 + (2 - y) + 5/2;  df/dy = x - x/y^2 - 1/x - x - 3/y^2
        assert rel_close(x.grad, y0 + 1 / y0 + y0 / x0**2 - 1 + (2 - y0) + mpmath.mpf(5) / 2, DPS - 2)
        assert rel_close(y.grad, x0 - x0 / y0**2 - 1 / x0 - x0 - 3 / y0**2, DPS - 2)
        assert rel_close(f.value, x0 * y0 + x0 / y0 - y0 / x0 + 3 - x0 + (2 - y0) * x0 + 5 * x0 / 2 + 3 / y0, DPS - 2)


def test_autodiff_shared_subexpressions_accumulate():
    with mpmath.workdps(DPS):
        x = Var(mpmath.mpf("1.25"))
        u = x * x + 1
        f = u * u / u + u  # = 2u, d/dx = 4x
        f.backward()
        assert rel_close(x.grad, 4 * mpmath.mpf("1.25"), DPS - 2)


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_primitive_derivatives_match_mpmath_diff(name):
    reference = {"exp": mpmath.exp, "log": mpmath.log, "tanh": mpmath.tanh, "sqrt": mpmath.sqrt,
                 "sigmoid": lambda z: 1 / (1 + mpmath.exp(-z))}[name]
    with mpmath.workdps(DPS):
        for x0 in ("0.37", "1.9", "4.2"):
            x = Var(mpmath.mpf(x0))
            y = PRIMITIVES[name](x)
            y.backward()
            assert rel_close(y.value, reference(mpmath.mpf(x0)), DPS - 2), name
            assert rel_close(x.grad, mpmath.diff(reference, mpmath.mpf(x0)), DPS - 5), name


def test_autodiff_composite_matches_mpmath_diff():
    f = lambda ops, z: ops.tanh(z) * ops.exp(-z / 3) + ops.log(1 + z * z) / ops.sqrt(z) - ops.sigmoid(2 * z)
    with mpmath.workdps(DPS):
        x = Var(mpmath.mpf("0.8"))
        y = f(AUTODIFF, x)
        y.backward()
        assert rel_close(y.value, f(MPMATH, mpmath.mpf("0.8")), DPS - 2)
        assert rel_close(x.grad, mpmath.diff(lambda z: f(MPMATH, z), mpmath.mpf("0.8")), DPS - 5)


def test_autodiff_handles_deep_graphs_without_recursion():
    with mpmath.workdps(20):
        x = Var(mpmath.mpf("0.5"))
        y = x
        for _ in range(50_000):
            y = y + x  # y = 50001 x
        y.backward()
        assert x.grad == 50_001


def test_autodiff_check_catches_a_wrong_derivative():
    """The comparison used above is not vacuous: a derivative off by 1e-30 relative fails it."""
    with mpmath.workdps(DPS):
        x = Var(mpmath.mpf("0.37"))
        PRIMITIVES["tanh"](x).backward()
        assert not rel_close(x.grad * (1 + mpmath.mpf("1e-30")), 1 - mpmath.tanh(mpmath.mpf("0.37")) ** 2, DPS - 2)


# -- gradients against finite differences of the oracle's own loss -----------------------

CONFIGS = [
    Config(V_src=5, V_tgt=6, E=2, H=2, L=L, score=score, input_feeding=feed)
    for score in SCORES for L in (1, 2) for feed in (True, False)
] + [Config(V_src=5, V_tgt=6, E=2, H=2, L=L, score="none") for L in (1, 2)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.score}-L{c.L}-feed{int(c.feeds_input)}")
def test_every_gradient_matches_central_differences(config):
    params, *batch = random_case(config, seed=CONFIGS.index(config))
    res = evaluate(params, config, *batch, dps=DPS)
    assert set(res.grads) == set(param_shapes(config))
    coords = sample_coords(res.grads, np.random.default_rng(1))
    bad = fd_disagreements(params, config, batch, res.grads, coords)
    assert not bad, "\n".join(bad)


def test_fd_comparison_rejects_a_gradient_off_by_1e_12():
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="general")
    params, *batch = random_case(config)
    res = evaluate(params, config, *batch)
    name, index = "attention.W_a", np.unravel_index(int(np.argmax(np.abs(res.grads["attention.W_a"].astype(float)))), (2, 2))
    assert not fd_disagreements(params, config, batch, res.grads, [(name, index)])
    wrong = {n: g.copy() for n, g in res.grads.items()}
    with mpmath.workdps(DPS):
        wrong[name][index] = wrong[name][index] * (1 + mpmath.mpf("1e-12"))
    assert fd_disagreements(params, config, batch, wrong, [(name, index)])


def test_values_and_gradient_paths_agree():
    """The Var path (grads=True) and the plain mpf path (grads=False) compute the same numbers."""
    config = Config(V_src=5, V_tgt=6, E=2, H=3, L=2, score="concat")
    params, *batch = random_case(config)
    with_grads, without = evaluate(params, config, *batch), evaluate(params, config, *batch, grads=False)
    assert without.grads is None
    assert rel_close(with_grads.loss, without.loss, DPS - 3)
    for x, y in zip(with_grads.log_probs.ravel(), without.log_probs.ravel()):
        assert rel_close(x, y, DPS - 3)
    for x, y in zip(with_grads.attention.ravel(), without.attention.ravel()):
        assert rel_close(x, y, DPS - 3)


def test_digits_are_real_across_precisions():
    """Raising dps from 40 to 60 changes the loss and gradients only beyond the 37th digit."""
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="scaled_dot")
    params, *batch = random_case(config)
    lo, hi = evaluate(params, config, *batch, dps=40), evaluate(params, config, *batch, dps=60)
    with mpmath.workdps(60):
        assert rel_close(lo.loss, hi.loss, 37)
        for name in lo.grads:
            for x, y in zip(lo.grads[name].ravel(), hi.grads[name].ravel()):
                assert abs(x - y) <= mpmath.mpf("1e-37") * max(abs(y), mpmath.mpf("1e-3")), name


# -- hand-computable attention cases ------------------------------------------------------

def test_one_valid_source_position_gets_weight_exactly_one():
    keys = [[0.3, -1.2], [5.0, 4.0], [-2.0, 0.1]]
    a, ctx = attention("concat", [0.4, 0.9], keys, 1, W_a=np.ones((2, 4)) * 0.3, v_a=[0.5, -0.2])
    assert list(a) == [1, 0, 0] and all(isinstance(x, mpmath.mpf) for x in a)
    assert list(ctx) == [mpmath.mpf(0.3), mpmath.mpf(-1.2)]  # exactly the first key


def test_identical_keys_give_uniform_weights():
    key = [0.25, -0.5, 1.5]
    for score in SCORES:
        W_a = {"general": np.eye(3) * 0.7, "concat": np.full((3, 6), 0.2)}.get(score)
        v_a = [0.1, 0.2, 0.3] if score == "concat" else None
        a, ctx = attention(score, [1.0, 2.0, -0.5], [key] * 4, 3, W_a=W_a, v_a=v_a)
        with mpmath.workdps(DPS):
            assert all(rel_close(x, mpmath.mpf(1) / 3, DPS - 2) for x in a[:3]) and a[3] == 0, score
            assert all(rel_close(c, mpmath.mpf(k), DPS - 2) for c, k in zip(ctx, key)), score


def test_model_md_worked_example_dot_score_is_0_62():
    """Query (0.7, 0.3), key (0.8, 0.2): score 0.62, read back as e_1 - e_2 = log(a_1 / a_2) with e_2 = 0.

    0.7 etc. are not binary fractions: as decimal strings they are rounded once
    to 40 digits, so the score is 0.62 to ~40 digits. As float64 literals they
    are other numbers, and the exact score of those floats (computed with
    Fractions) is 0.62 - 3.3e-18, which the oracle reproduces to 40 digits too.
    """
    keys_str, query_str = [["0.8", "0.2"], [0, 0]], ["0.7", "0.3"]
    a, _ = attention("dot", query_str, keys_str, 2)
    with mpmath.workdps(DPS):
        assert abs(mpmath.log(a[0] / a[1]) - mpmath.mpf("0.62")) < mpmath.mpf("1e-38")
    a, _ = attention("dot", [0.7, 0.3], [[0.8, 0.2], [0.0, 0.0]], 2)
    exact = Fraction(0.7) * Fraction(0.8) + Fraction(0.3) * Fraction(0.2)
    with mpmath.workdps(DPS):
        e = mpmath.log(a[0] / a[1])
        exact_mpf = mpmath.mpf(exact.numerator) / exact.denominator
        assert abs(e - exact_mpf) < mpmath.mpf("1e-38")
        assert mpmath.mpf("1e-18") < abs(e - mpmath.mpf("0.62")) < mpmath.mpf("1e-16")
    # integers are exact: 7*8 + 3*2 = 62, and weight_1 = 1 / (1 + e^-62)
    a, _ = attention("dot", [7, 3], [[8, 2], [0, 0]], 2)
    with mpmath.workdps(DPS):
        assert rel_close(a[0], 1 / (1 + mpmath.exp(-62)), DPS - 2)


def test_batched_queries_match_single_queries():
    keys = [[0.3, -1.2], [0.5, 0.4], [-2.0, 0.1]]
    queries = [[0.4, 0.9], [-1.0, 0.2]]
    a, ctx = attention("scaled_dot", queries, keys, 2)
    assert a.shape == (2, 3) and ctx.shape == (2, 2)
    for q, a_q, ctx_q in zip(queries, a, ctx):
        a1, ctx1 = attention("scaled_dot", q, keys, 2)
        assert list(a1) == list(a_q) and list(ctx1) == list(ctx_q)


# -- model-level properties: masking, the loss mean, frozen encoder, baseline -------------------

def test_masked_positions_have_weight_exactly_zero_and_zero_gradient():
    config = Config(V_src=7, V_tgt=6, E=2, H=2, score="general")
    params, src, src_len, tgt = random_case(config, S=4)
    src_len = np.array([4, 2])
    src[1, 2:] = 6  # id 6 appears only past src_len
    src[0, :] = [3, 4, 5, 3]
    res = evaluate(params, config, src, src_len, tgt)
    assert all(x == 0 for x in res.attention[1, :, 2:].ravel())
    for b in range(2):
        for t in range(res.attention.shape[1]):
            with mpmath.workdps(DPS):
                assert rel_close(sum(res.attention[b, t]), 1, DPS - 2)
    assert all(g == 0 for g in res.grads["encoder.embedding.weight"][6])
    assert any(g != 0 for g in res.grads["encoder.embedding.weight"][3])


def test_loss_is_the_mean_over_non_pad_labels():
    config = Config(V_src=5, V_tgt=6, E=2, H=2)
    params, src, src_len, tgt = random_case(config, T=4)
    res = evaluate(params, config, src, src_len, tgt)
    y_out = tgt[:, 1:]
    with mpmath.workdps(DPS):  # arithmetic on mpf outside it would round to 15 digits
        terms = [-res.log_probs[b, t, y_out[b, t]] for b in range(2) for t in range(4) if y_out[b, t] != config.pad_id]
        assert len(terms) == 7  # 4 + 3: one PAD label in row 1
        assert rel_close(res.loss, sum(terms) / len(terms), DPS - 2)


def test_extra_pad_columns_in_the_target_change_nothing():
    config = Config(V_src=5, V_tgt=6, E=2, H=2, L=2, score="concat")
    params, src, src_len, tgt = random_case(config)
    longer = np.concatenate([tgt, np.full((2, 2), config.pad_id)], axis=1)
    a, b = evaluate(params, config, src, src_len, tgt), evaluate(params, config, src, src_len, longer)
    assert a.loss == b.loss
    for name in a.grads:
        assert list(a.grads[name].ravel()) == list(b.grads[name].ravel()), name
    assert (a.log_probs == b.log_probs[:, :3]).all() and (a.attention == b.attention[:, :3]).all()


def test_source_past_src_len_changes_nothing():
    """Frozen encoder state: extra source columns with arbitrary ids change no value or gradient."""
    config = Config(V_src=5, V_tgt=6, E=2, H=2, L=2, score="dot")
    params, src, src_len, tgt = random_case(config)
    rng = np.random.default_rng(5)
    longer = np.concatenate([src, rng.integers(0, 5, (2, 3))], axis=1)
    longer[1, src_len[1]:] = rng.integers(0, 5, longer.shape[1] - src_len[1])
    a, b = evaluate(params, config, src, src_len, tgt), evaluate(params, config, longer, src_len, tgt)
    assert a.loss == b.loss
    for name in a.grads:
        assert list(a.grads[name].ravel()) == list(b.grads[name].ravel()), name
    assert (a.attention == b.attention[:, :, :3]).all() and all(x == 0 for x in b.attention[:, :, 3:].ravel())


def test_baseline_has_no_attention_and_no_attention_params():
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="none")
    params, *batch = random_case(config)
    res = evaluate(params, config, *batch)
    assert res.attention is None
    assert not any(n.startswith("attention.") for n in res.grads)
    assert res.as_float64().attention is None


def test_as_float64_rounds_every_value():
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="dot")
    params, *batch = random_case(config)
    res = evaluate(params, config, *batch)
    f = res.as_float64()
    assert isinstance(f, OracleResult) and isinstance(f.loss, float) and f.loss == float(res.loss)
    assert f.log_probs.dtype == np.float64 and f.log_probs.shape == res.log_probs.shape
    assert f.attention.dtype == np.float64 and f.attention.shape == (2, 3, 3)
    for name, g in f.grads.items():
        assert g.dtype == np.float64 and g.shape == param_shapes(config)[name]
        assert g.ravel()[0] == float(res.grads[name].ravel()[0])


def numpy_loss(params, config, src, src_len, tgt):
    """MODEL.md's loss in plain float64 NumPy, written from the document without spec.equations.

    FD checks only that the oracle differentiates its own loss; this checks
    that the loss is MODEL.md's composition (state hand-over, concatenation
    orders, masking, the mean) through an independent re-derivation.
    """
    P, H, L = params, config.H, config.L
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731

    def cell(prefix, k, x, h, c):
        z = P[f"{prefix}.weight_ih_l{k}"] @ x + P[f"{prefix}.bias_ih_l{k}"] + P[f"{prefix}.weight_hh_l{k}"] @ h + P[f"{prefix}.bias_hh_l{k}"]
        c = sig(z[H:2 * H]) * c + sig(z[:H]) * np.tanh(z[2 * H:3 * H])
        return sig(z[3 * H:]) * np.tanh(c), c

    total, count = 0.0, 0
    for b in range(src.shape[0]):
        h, c, keys = np.zeros((L, H)), np.zeros((L, H)), []
        for s in range(src_len[b]):
            x = P["encoder.embedding.weight"][src[b, s]]
            for k in range(L):
                h[k], c[k] = cell("encoder.lstm", k, x, h[k], c[k])
                x = h[k]
            keys.append(h[-1].copy())
        keys, h_tilde = np.array(keys), np.zeros(H)
        for t in range(tgt.shape[1] - 1):
            emb = P["decoder.embedding.weight"][tgt[b, t]]
            x = np.concatenate([emb, h_tilde]) if config.feeds_input else emb
            for k in range(L):
                h[k], c[k] = cell("decoder.lstm", k, x, h[k], c[k])
                x = h[k]
            if config.attention:
                if config.score == "concat":
                    e = np.array([P["attention.v_a"] @ np.tanh(P["attention.W_a"] @ np.concatenate([x, k_s]))
                                  for k_s in keys])
                elif config.score == "general":
                    e = keys @ P["attention.W_a"].T @ x  # e_s = h^T W_a k_s
                else:
                    e = keys @ x / (np.sqrt(H) if config.score == "scaled_dot" else 1)
                a = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
                h_tilde = np.tanh(P["attention.W_c"] @ np.concatenate([a @ keys, x]))
            else:
                h_tilde = x
            logits = P["generator.weight"] @ h_tilde + P["generator.bias"]
            y = tgt[b, t + 1]
            if y != config.pad_id:
                total += -(logits[y] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
                count += 1
    return total / count


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.score}-L{c.L}-feed{int(c.feeds_input)}")
def test_loss_matches_an_independent_float64_transcription_of_model_md(config):
    """float64 with ~10^3 operations on O(1) values: agreement to 1e-12 relative, not better."""
    params, *batch = random_case(config, S=4, T=4, seed=3)
    oracle = float(evaluate(params, config, *batch, grads=False).loss)
    assert np.isclose(oracle, numpy_loss(params, config, *batch), rtol=1e-12, atol=0), config


def test_input_feeding_puts_the_embedding_first():
    """With the h~ columns of W_ih_l0 zeroed, input feeding is the same model as no input feeding."""
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="dot")
    params, *batch = random_case(config)
    params["decoder.lstm.weight_ih_l0"][:, config.E:] = 0
    plain = {**params, "decoder.lstm.weight_ih_l0": params["decoder.lstm.weight_ih_l0"][:, :config.E]}
    a = evaluate(params, config, *batch, grads=False)
    b = evaluate(plain, config.replace(input_feeding=False), *batch, grads=False)
    assert a.loss == b.loss


# -- bad arguments ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_case():
    config = Config(V_src=5, V_tgt=6, E=2, H=2, score="general")
    return (config, *random_case(config))


@pytest.mark.parametrize("change, error, message", [
    (lambda p, c, s, l, t: (p, c, s, [3], t), ValueError, "src_len"),
    (lambda p, c, s, l, t: (p, c, s, [3, 4], t), ValueError, "src_len"),
    (lambda p, c, s, l, t: (p, c, s, [0, 2], t), ValueError, "src_len"),
    (lambda p, c, s, l, t: (p, c, s[:1], l[:1], t), ValueError, "tgt"),
    (lambda p, c, s, l, t: (p, c, s, l, t[:, :1]), ValueError, "tgt"),
    (lambda p, c, s, l, t: (p, c, s + 10, l, t), ValueError, "src"),
    (lambda p, c, s, l, t: (p, c, s.astype(float), l, t), TypeError, "src"),
    (lambda p, c, s, l, t: ({k: v for k, v in p.items() if k != "attention.W_a"}, c, s, l, t), ValueError, "params"),
    (lambda p, c, s, l, t: ({**p, "attention.v_a": np.zeros(2)}, c, s, l, t), ValueError, "params"),
    (lambda p, c, s, l, t: ({**p, "generator.bias": np.zeros(5)}, c, s, l, t), ValueError, "generator.bias"),
    (lambda p, c, s, l, t: (p, c.replace(score="dot"), s, l, t), ValueError, "params"),
    (lambda p, c, s, l, t: (p, "general", s, l, t), TypeError, "config"),
])
def test_evaluate_rejects_bad_arguments(small_case, change, error, message):
    config, params, src, src_len, tgt = small_case
    with pytest.raises(error, match=message):
        evaluate(*change(params, config, src, src_len, tgt), grads=False)


def test_other_entry_points_reject_bad_arguments(small_case):
    config, params, *batch = small_case
    with pytest.raises(ValueError, match="score"):
        Config(V_src=5, V_tgt=6, E=2, H=2, score="additive")
    with pytest.raises(ValueError, match="score"):
        attention("additive", [1, 2], [[1, 2]], 1)
    with pytest.raises(ValueError, match="score"):
        attention("none", [1, 2], [[1, 2]], 1)
    with pytest.raises(ValueError, match="keys"):
        attention("dot", [1, 2], [[1, 2, 3]], 1)
    with pytest.raises(ValueError, match="src_len"):
        attention("dot", [1, 2], [[1, 2]], 2)
    with pytest.raises(ValueError, match="W_a"):
        attention("general", [1, 2], [[1, 2]], 1)
    with pytest.raises(ValueError, match="W_a"):
        attention("concat", [1, 2], [[1, 2]], 1, W_a=np.eye(2), v_a=[1, 1])
    with pytest.raises(ValueError, match="v_a"):
        attention("dot", [1, 2], [[1, 2]], 1, v_a=[1, 1])
    with pytest.raises(TypeError, match="query"):
        attention("dot", ["x", 2], [[1, 2]], 1)
    with pytest.raises(ValueError, match="keys"):
        attention("dot", [1, 2], [[1, float("nan")]], 1)
    with pytest.raises(ValueError, match="dps"):
        evaluate(params, config, *batch, dps=10)
    with pytest.raises(ValueError, match="name"):
        finite_difference_grad(params, config, *batch, "attention.v_a", (0,))
    with pytest.raises(ValueError, match="index"):
        finite_difference_grad(params, config, *batch, "attention.W_a", (2, 0))


# -- magnitudes, steps and number types at the boundary ------------------------------------------------

HUGE = ["1e400", "-1e1000000000", "1e" + "9" * 4000, "1e-" + "9" * 4000, mpmath.mpf("1e400"), 10**400]


@pytest.mark.parametrize("huge", HUGE, ids=["1e400", "-1e1e9", "1e(4000 nines)", "1e-(4000 nines)", "mpf", "int"])
@pytest.mark.parametrize("where", ["query", "keys", "W_a", "v_a"])
def test_attention_rejects_magnitudes_beyond_float64_at_once(where, huge):
    """Such a decimal string made mpmath run for seconds ('1e100000') to forever ('1e1000000000'):
    it is refused before any arithmetic (or the parsing of a thousand-digit exponent), naming the argument."""
    args = {"query": ["0.5", "1"], "keys": [["0.5", "0"], ["1", "0"]],
            "W_a": [["1", "0", "0", "1"], ["0", "1", "1", "0"]], "v_a": ["1", "1"]}
    row = args[where][0] if where in ("keys", "W_a") else args[where]
    row[0] = huge
    with pytest.raises(ValueError, match=rf"^{where}\[0(, 0)?\]: .*float64"):
        attention("concat", args["query"], args["keys"], 2, W_a=args["W_a"], v_a=args["v_a"])


def test_attention_still_takes_every_documented_number_type():
    """ints, floats (float16 too), mpf, decimal strings (numpy's too) and p/q strings, up to float64's largest."""
    big = str(np.finfo(np.float64).max)
    for query in (["0.7", "0.3"], [0.7, 0.3], [mpmath.mpf("0.7"), 3], np.array(["0.7", "0.3"]),
                  [np.float16(0.5), "3/10"], [big, "-" + big], ["1e-400", "0"]):
        weights, _ = attention("dot", query, [["0.8", "0.2"], [0, 0]], 2)
        assert all(mpmath.isfinite(w) and 0 <= w <= 1 for w in weights), query


@pytest.mark.parametrize("query, keys", [(np.zeros(0), np.zeros((1, 0))), (np.zeros((0, 2)), np.zeros((1, 2)))])
def test_attention_rejects_an_empty_query(query, keys):
    """H = 0 was NumPy's "cannot reshape array of size 0"; Q = 0 returned arrays of the wrong shape."""
    with pytest.raises(ValueError, match=r"^query: .*H >= 1"):
        attention("dot", query, keys, 1)


@pytest.mark.parametrize("h, error", [
    (0, ValueError), ("0", ValueError), (-1e-15, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("1e1000000000", ValueError), ("abc", TypeError), (None, TypeError), (True, TypeError),
    ("1e-100", ValueError),   # x + h rounds to x at dps = 50: the step is not represented
])
def test_finite_difference_step_must_be_a_positive_representable_number(small_case, h, error):
    """h = 0 was a bare ZeroDivisionError, h = nan returned mpf('nan'), h = 'abc' a ValueError not naming h."""
    config, params, *batch = small_case
    with pytest.raises(error, match=r"^h: "):
        finite_difference_grad(params, config, *batch, "generator.bias", (0,), h=h)


@pytest.mark.parametrize("name, index, error", [
    ("generator.bias", (0.0,), TypeError), ("generator.bias", (True,), TypeError), ("generator.bias", "0", TypeError),
    ("generator.bias", None, TypeError), ("generator.bias", (0, 0), ValueError), ("generator.bias", (-1,), ValueError),
    ("attention.W_a", (0,), ValueError), (["generator.bias"], (0,), TypeError),
])
def test_finite_difference_index_and_name_are_validated(small_case, name, index, error):
    """index = (0.0,) was NumPy's IndexError; an unhashable name a bare TypeError."""
    config, params, *batch = small_case
    with pytest.raises(error, match=rf"^{'index' if name != ['generator.bias'] else 'name'}: "):
        finite_difference_grad(params, config, *batch, name, index)


def test_finite_difference_keeps_its_accepted_index_forms(small_case):
    config, params, *batch = small_case
    a = finite_difference_grad(params, config, *batch, "generator.bias", (np.int64(3),), dps=20, h="1e-8")
    b = finite_difference_grad(params, config, *batch, "generator.bias", 3, dps=20, h=1e-8)
    c = finite_difference_grad(params, config, *batch, "attention.W_a", np.array([1, 0]), dps=20, h=mpmath.mpf("1e-8"))
    assert mpmath.isfinite(a) and mpmath.isfinite(b) and mpmath.isfinite(c)


def test_long_double_inputs_convert_exactly(small_case):
    """np.longdouble used to be a TypeError from mpmath; its value is now taken exactly, as floats are."""
    config, params, *batch = small_case
    long_params = {n: p.astype(np.longdouble) for n, p in params.items()}
    assert evaluate(long_params, config, *batch, grads=False).loss == evaluate(params, config, *batch, grads=False).loss
    third = np.longdouble(1) / 3                       # more bits than a float64 where longdouble is wider
    a, _ = attention("dot", np.array([third, 0]), [[1, 0], [0, 0]], 2)
    p, q = third.as_integer_ratio()
    with mpmath.workdps(40):
        assert abs(mpmath.log(a[0] / a[1]) - mpmath.mpf(p) / q) < mpmath.mpf("1e-35")


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="longdouble is float64 here")
def test_long_double_params_beyond_float64_are_rejected(small_case):
    config, params, *batch = small_case
    big = {**params, "generator.bias": params["generator.bias"].astype(np.longdouble)}
    big["generator.bias"][1] = np.longdouble("1e400")
    with pytest.raises(ValueError, match=r"^params\['generator\.bias'\]: .*float64"):
        evaluate(big, config, *batch, grads=False)
