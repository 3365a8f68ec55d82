"""The symbolic specification (spec.symbolic) and its checked identities (spec.identities)."""

import dataclasses

import pytest
import sympy as sp

from attnspec.spec import equations as eq
from attnspec.spec.config import SCORES
from attnspec.spec.equations import SYMPY
from attnspec.spec.identities import H, PARTS, S, V, Y, Identity, decide, identities
from attnspec.spec.symbolic import (
    attention_def, context_def, diag, generator_def, gradient, lstm_cell_def, lstm_gate_view,
    matrix, score_def, softmax_def, to_matrix, vector, vjp,
)

IDENTITIES = identities()
BY_NAME = {ident.name: ident for ident in IDENTITIES}


# -- every identity holds -------------------------------------------------------------


@pytest.mark.parametrize("ident", IDENTITIES, ids=[i.name for i in IDENTITIES])
def test_identity_holds(ident):
    verdict = ident.verify()
    assert verdict.holds, f"{ident.name}: {ident.statement}: {verdict.how}"
    assert verdict.how.startswith("proved")


def test_identities_are_named_uniquely_and_cover_every_part():
    assert len(BY_NAME) == len(IDENTITIES)
    assert {i.part for i in IDENTITIES} == set(PARTS)
    assert [i.name for i in identities("lstm")] == [i.name for i in IDENTITIES if i.part == "lstm"]


# -- the worked example and hand-computable cases -----------------------------------------


def test_worked_example_dot_score_is_exactly_62_hundredths():
    R = sp.Rational
    query, key = [R(7, 10), R(3, 10)], [R(8, 10), R(2, 10)]
    e = eq.score(SYMPY, "dot", query, key)
    assert isinstance(e, sp.Rational) and e == R(62, 100)
    assert BY_NAME["worked example: dot score"].check()


@pytest.mark.parametrize("score", SCORES)
def test_a_single_unmasked_position_gets_weight_exactly_one(score):
    ad = attention_def(score, H=2, S=3, n_valid=1)
    # exp(e_1) / exp(e_1) is left unevaluated by SymPy for a compound e_1, hence simplify.
    assert [sp.simplify(a) for a in ad.a] == [1, 0, 0]
    assert [sp.simplify(c) for c in ad.ctx] == list(ad.keys[0])


@pytest.mark.parametrize("score", SCORES)
def test_equal_keys_give_uniform_weights_exactly(score):
    ad = attention_def(score, H=2, S=3)
    same = {k_sj: ad.keys[0][j] for s in range(1, 3) for j, k_sj in enumerate(ad.keys[s])}
    assert [sp.simplify(a.xreplace(same)) for a in ad.a] == [sp.Rational(1, 3)] * 3


def test_equal_scores_give_uniform_weights_over_the_unmasked_positions():
    x = sp.Symbol("x", real=True)
    assert eq.masked_softmax(SYMPY, [x, x, x], 3) == [sp.Rational(1, 3)] * 3
    assert eq.masked_softmax(SYMPY, [x, x, x, x], 2) == [sp.Rational(1, 2)] * 2 + [0, 0]


def test_masked_softmax_weights_and_derivatives_at_masked_positions_are_zero():
    sm = softmax_def(S=4, n_valid=2)
    assert sm.a[2:] == [0, 0]
    J = to_matrix(sm.a).jacobian(sm.e)
    assert J[2:, :].is_zero_matrix and J[:, 2:].is_zero_matrix


def test_gate_view_is_the_cell_update_of_model_md():
    gv = lstm_gate_view(2)
    assert gv.c_new_expr == [f * c + i * g for f, c, i, g in zip(gv.f, gv.c, gv.i, gv.g)]
    assert gv.h_of_c_new == [o * sp.tanh(c) for o, c in zip(gv.o, gv.c_new)]


def test_symbols_are_real_and_one_based():
    assert vector("h", 2) == [sp.Symbol("h_{1}", real=True), sp.Symbol("h_{2}", real=True)]
    assert matrix("W_c", 2, 4)[1][3] == sp.Symbol("{W_{c}}_{2,4}", real=True)
    assert lstm_cell_def(1, 2).W_ih[7][0].name == "{W_{ih}}_{8,1}"


# -- wrong closed forms are rejected by the same checking code ----------------------------


def _wrong(name, closed):
    return dataclasses.replace(BY_NAME[name], closed=closed)


def _wrong_forms():
    a = to_matrix(softmax_def(S).a)
    a_masked = to_matrix(softmax_def(S, 2).a)
    g = to_matrix(vector("g", S))
    x = sp.Symbol("x", real=True)
    sigma, tanh = SYMPY.sigmoid(x), SYMPY.tanh(x)
    k_scaled = to_matrix(score_def("scaled_dot", H).k)
    general = score_def("general", H)
    lp = generator_def(V, H, Y)
    ad = attention_def("dot", H, S)
    K, a_att = to_matrix(ad.keys), to_matrix(ad.a)
    gv = lstm_gate_view(H)
    dz_rows = BY_NAME["lstm: dL/db_ih"].closed
    i_g_f_o = sp.Matrix.vstack(dz_rows[0:H, :], dz_rows[2 * H:3 * H, :], dz_rows[H:2 * H, :], dz_rows[3 * H:, :])
    logits = vector("l", V)
    p = to_matrix(eq.masked_softmax(SYMPY, logits, V))
    onehot = sp.Matrix([int(v == Y) for v in range(V)])
    return {
        "softmax Jacobian diag(a) + a a^T": _wrong("softmax: Jacobian", diag(a) + a * a.T),
        "softmax Jacobian without the outer product": _wrong("softmax: Jacobian", diag(a)),
        "softmax VJP a * (g + <a, g>)": _wrong("softmax: VJP", a.multiply_elementwise(g + (a.T * g)[0] * sp.ones(S, 1))),
        "masked softmax Jacobian that ignores the mask": _wrong(
            "masked softmax (n_valid = 2 of 3): Jacobian", diag(a) - a * a.T),
        "masked weights sum over all positions": _wrong(
            "masked softmax (n_valid = 2 of 3): weights sum to one", sum(a_masked) + a[2]),
        "tanh' = 1 - tanh": _wrong("tanh'", 1 - tanh),
        "sigma' = sigma": _wrong("sigma'", sigma),
        "sigma' = 1 - sigma^2": _wrong("sigma'", 1 - sigma**2),
        "scaled_dot gradient divided by H": _wrong("scaled_dot: de/dh", k_scaled / H),
        "scaled_dot gradient not scaled": _wrong("scaled_dot: de/dh", k_scaled),
        "general de/dk = W_a h (no transpose)": _wrong(
            "general: de/dk", to_matrix(general.W_a) * to_matrix(general.h)),
        "general de/dW_a = k h^T": _wrong(
            "general: de/dW_a", to_matrix(general.k) * to_matrix(general.h).T),
        "dot attention dctx/dh without - a a^T": _wrong(
            "dot attention: dctx/dh", K.T * diag(a_att) * K),
        "CE grad = onehot - p": _wrong("CE: dloss/dlogits", onehot - p),
        "CE grad = p": _wrong("CE: dloss/dlogits", p),
        "generator grad transposed": _wrong(
            "generator: dloss/dW_out", to_matrix(lp.h_tilde) * BY_NAME["generator: dloss/db_out"].closed.T),
        "dc'/di = diag(i)": _wrong("lstm: dc'/di", diag(gv.i)),
        "dh'/dc' = diag(o)": _wrong("lstm: dh'/dc'", diag(gv.o)),
        "LSTM gates in order i, g, f, o": _wrong("lstm: dL/db_ih", i_g_f_o),
        "h~ with [h; ctx] instead of [ctx; h]": _wrong(
            "h~: dh~/dctx", BY_NAME["h~: dh~/dh"].closed),
        "worked example 0.63": _wrong("worked example: dot score", sp.Rational(63, 100)),
    }


WRONG = _wrong_forms()


@pytest.mark.parametrize("label", list(WRONG))
def test_wrong_closed_form_is_refuted(label):
    verdict = WRONG[label].verify()
    assert not verdict.holds and not WRONG[label].check()
    assert verdict.how.startswith("refuted"), verdict.how


def test_a_float_closed_form_is_rejected_even_when_it_rounds_to_the_value():
    verdict = _wrong("worked example: dot score", sp.Float(0.62)).verify()
    assert not verdict.holds and verdict.how.startswith("rejected: the closed form holds the float")


def test_decide_proves_only_what_is_true():
    x, y = sp.symbols("x y", real=True)
    assert decide(sp.exp(x + y), sp.exp(x) * sp.exp(y))[0]
    assert decide(sp.diff(sp.tanh(x), x), 1 - sp.tanh(x) ** 2)[0]
    assert not decide(sp.exp(x + y), sp.exp(x) + sp.exp(y))[0]
    assert decide(sp.Matrix([x]), sp.Matrix([x, y])) == (
        False, "refuted: shape (1, 1) of the derived form != shape (2, 1) of the closed form")


# -- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: score_def("cosine"), lambda: attention_def("cosine")])
def test_unknown_score_is_rejected(make):
    with pytest.raises(ValueError, match="^score: unknown score function 'cosine'"):
        make()


@pytest.mark.parametrize("make", [
    lambda: softmax_def(3, 0), lambda: softmax_def(3, 4), lambda: attention_def("dot", 2, 3, n_valid=4),
])
def test_n_valid_out_of_range_is_rejected(make):
    with pytest.raises(ValueError, match="^n_valid: "):
        make()


@pytest.mark.parametrize("make, name, error", [
    (lambda: score_def("dot", H=0), "H", ValueError),
    (lambda: score_def("dot", H=2.0), "H", TypeError),
    (lambda: context_def(S=0), "S", ValueError),
    (lambda: lstm_cell_def(E=True), "E", TypeError),
    (lambda: generator_def(V=3, y=3), "y", ValueError),
    (lambda: generator_def(V=3, y=-1), "y", ValueError),
    (lambda: vector("h", 0), "n", ValueError),
])
def test_bad_sizes_are_rejected_naming_the_argument(make, name, error):
    with pytest.raises(error, match=f"^{name}: "):
        make()


def test_mismatched_shapes_are_rejected():
    sm = softmax_def(3)
    with pytest.raises(ValueError, match="^cotangent: expected 3 entries"):
        vjp(sm.a, sm.e, vector("g", 2))
    with pytest.raises(ValueError, match="^scalar: "):
        gradient(sm.a, sm.e)


def test_unknown_part_is_rejected():
    with pytest.raises(ValueError, match="^part: "):
        identities("decoder")
    with pytest.raises(ValueError, match="^part: "):
        Identity("x", "decoder", "x = x", sp.Integer(0), sp.Integer(0))

