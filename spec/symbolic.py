"""The symbolic specification: MODEL.md's equations over small explicit symbols.

Every forward quantity here comes from calling :mod:`attnspec.spec.equations`
with ``SYMPY`` ops, so the expressions that are differentiated, printed in the
derivation docs and checked in :mod:`attnspec.spec.identities` are the very
equations the oracle evaluates: nothing is typed twice.

Sizes are kept tiny (H = 2, S = 3 and the like) because every entry of every
vector and matrix is its own symbol; an identity shown for explicit small
sizes is shown entrywise, and none of the closed forms depends on the size.

Vectors are lists of symbols, matrices lists of rows (the convention of
``equations``); :func:`to_matrix` turns either into a ``sympy.Matrix``
(vectors become columns) for the Jacobians.

Examples
--------
>>> d = score_def("dot", H=2)
>>> d.e
h_{1}*k_{1} + h_{2}*k_{2}
>>> gradient(d.e, d.h).T
Matrix([[k_{1}, k_{2}]])
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from . import equations as eq
from .config import SCORES
from .equations import SYMPY

# -- symbols -----------------------------------------------------------------------


def _check_size(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _base(name: str) -> str:
    # "W_ih" -> "{W_{ih}}" so that LaTeX subscripts the whole "ih" and the
    # entry index can follow as a second subscript.
    if "_" in name:
        stem, sub = name.split("_", 1)
        return f"{{{stem}_{{{sub}}}}}"
    return name


def vector(name: str, n: int) -> list[sp.Symbol]:
    """Real symbols ``name_1 .. name_n`` (1-based, as in the paper).

    >>> vector("h", 2)
    [h_{1}, h_{2}]
    """
    _check_size("n", n)
    return [sp.Symbol(f"{_base(name)}_{{{j + 1}}}", real=True) for j in range(n)]


def matrix(name: str, rows: int, cols: int) -> list[list[sp.Symbol]]:
    """Real symbols ``name_{r,c}`` as a list of rows.

    >>> matrix("W_a", 1, 2)
    [[{W_{a}}_{1,1}, {W_{a}}_{1,2}]]
    """
    _check_size("rows", rows)
    _check_size("cols", cols)
    return [[sp.Symbol(f"{_base(name)}_{{{r + 1},{c + 1}}}", real=True) for c in range(cols)]
            for r in range(rows)]


def to_matrix(x) -> sp.Matrix:
    """A list (vector) as a column ``Matrix``, a list of rows as a ``Matrix``; a Matrix as is."""
    if isinstance(x, sp.MatrixBase):
        return sp.Matrix(x)
    x = list(x)
    if x and isinstance(x[0], (list, tuple)):
        return sp.Matrix([list(row) for row in x])
    return sp.Matrix(x)


def _flat(x) -> list:
    return list(to_matrix(x))


# -- derivatives ------------------------------------------------------------------


def jacobian(outputs, inputs) -> sp.Matrix:
    """d outputs / d inputs: entry (m, n) is d outputs_m / d inputs_n.

    Matrices on either side are flattened row by row.
    """
    return to_matrix(_flat(outputs)).jacobian(_flat(inputs))


def gradient(scalar, wrt) -> sp.Matrix:
    """d scalar / d wrt, shaped like ``wrt`` (a column for a vector, a matrix for a matrix).

    >>> W = matrix("W", 1, 2); x = vector("x", 2)
    >>> gradient(eq.matvec(W, x)[0], W)
    Matrix([[x_{1}, x_{2}]])
    """
    if isinstance(scalar, (list, tuple, sp.MatrixBase)):
        raise ValueError("scalar: expected a single expression, got a vector or matrix")
    W = to_matrix(wrt)
    return W.applyfunc(lambda w: sp.diff(scalar, w))


def vjp(outputs, inputs, cotangent) -> sp.Matrix:
    """Vector-Jacobian product (d outputs / d inputs)^T cotangent, as a column.

    ``cotangent`` is dL/d outputs (same length as ``outputs``); the result is
    dL/d inputs by the chain rule.
    """
    out, g = _flat(outputs), _flat(cotangent)
    if len(g) != len(out):
        raise ValueError(f"cotangent: expected {len(out)} entries to match outputs, got {len(g)}")
    return jacobian(out, inputs).T * sp.Matrix(g)


def diag(v) -> sp.Matrix:
    """The diagonal matrix with ``v`` on its diagonal."""
    return sp.diag(*_flat(v))


# -- definitions: the pieces of MODEL.md as symbolic expressions ------------------------


class ScoreDef(NamedTuple):
    """e = score(h, k) for a query ``h[H]`` and key ``k[H]`` (``W_a``, ``v_a`` None when unused)."""

    name: str
    h: list
    k: list
    W_a: list | None
    v_a: list | None
    e: sp.Expr


def score_def(name: str, H: int = 2) -> ScoreDef:
    """One score function of MODEL.md over fresh symbols.

    Parameters
    ----------
    name : {"dot", "scaled_dot", "general", "concat"}
    H : int
        Hidden size; ``W_a`` is [H, H] for general and [H, 2H] for concat, ``v_a`` [H].
    """
    if name not in SCORES:
        raise ValueError(f"score: unknown score function {name!r}; expected one of {SCORES}")
    _check_size("H", H)
    h, k = vector("h", H), vector("k", H)
    W_a = None
    if name == "general":
        W_a = matrix("W_a", H, H)
    elif name == "concat":
        W_a = matrix("W_a", H, 2 * H)
    v_a = vector("v_a", H) if name == "concat" else None
    return ScoreDef(name, h, k, W_a, v_a, eq.score(SYMPY, name, h, k, W_a, v_a))


class SoftmaxDef(NamedTuple):
    """a = masked_softmax(e, n_valid) for scores ``e[S]``; a_s = 0 for s > n_valid."""

    e: list
    a: list
    n_valid: int


def softmax_def(S: int = 3, n_valid: int | None = None) -> SoftmaxDef:
    """Attention weights over ``S`` source positions, the first ``n_valid`` (default all) unmasked.

    a_s = exp(e_s) / sum_{j <= n_valid} exp(e_j) for s <= n_valid, else 0.

    >>> softmax_def(2, 1).a
    [1, 0]
    """
    _check_size("S", S)
    n_valid = S if n_valid is None else n_valid
    _check_size("n_valid", n_valid)
    if n_valid > S:
        raise ValueError(f"n_valid: expected 1 <= n_valid <= S = {S}, got {n_valid}")
    e = vector("e", S)
    return SoftmaxDef(e, eq.masked_softmax(SYMPY, e, n_valid), n_valid)


class ContextDef(NamedTuple):
    """ctx = sum_s a_s k_s for free weights ``a[S]`` and keys ``keys[S][H]``."""

    a: list
    keys: list
    ctx: list


def context_def(S: int = 3, H: int = 2) -> ContextDef:
    """The context vector with the weights as free symbols (so d ctx / d a exists)."""
    _check_size("S", S)
    _check_size("H", H)
    a, keys = vector("a", S), matrix("k", S, H)
    return ContextDef(a, keys, eq.context(a, keys))


class AttentionDef(NamedTuple):
    """One decoder step's attention: query ``h[H]``, keys ``[S][H]`` -> e, a, ctx."""

    score: ScoreDef
    h: list
    keys: list
    e: list
    a: list
    ctx: list
    n_valid: int


def attention_def(score: str = "dot", H: int = 2, S: int = 3, n_valid: int | None = None) -> AttentionDef:
    """e_s = score(h, k_s), a = masked_softmax(e, n_valid), ctx = sum_s a_s k_s, composed.

    The score parameters (``W_a``, ``v_a``) are those of ``score_def(score, H)``.
    """
    d = score_def(score, H)
    _check_size("S", S)
    n_valid = S if n_valid is None else n_valid
    _check_size("n_valid", n_valid)
    if n_valid > S:
        raise ValueError(f"n_valid: expected 1 <= n_valid <= S = {S}, got {n_valid}")
    keys = matrix("k", S, H)
    e = [eq.score(SYMPY, score, d.h, k, d.W_a, d.v_a) for k in keys]
    a = eq.masked_softmax(SYMPY, e, n_valid)
    return AttentionDef(d, d.h, keys, e, a, eq.context(a, keys), n_valid)


class AttentionalStateDef(NamedTuple):
    """h~ = tanh(W_c [ctx; h]) for ``W_c[H, 2H]``, ``ctx[H]``, ``h[H]``."""

    W_c: list
    ctx: list
    h: list
    h_tilde: list


def attentional_state_def(H: int = 2) -> AttentionalStateDef:
    """The attentional state over fresh symbols."""
    _check_size("H", H)
    W_c, ctx, h = matrix("W_c", H, 2 * H), vector("ctx", H), vector("h", H)
    return AttentionalStateDef(W_c, ctx, h, eq.attentional_state(SYMPY, W_c, ctx, h))


class LSTMCellDef(NamedTuple):
    """One LSTM step of MODEL.md: inputs, parameters, gates (i, f, g, o) and (h', c')."""

    x: list
    h: list
    c: list
    W_ih: list
    W_hh: list
    b_ih: list
    b_hh: list
    i: list
    f: list
    g: list
    o: list
    h_new: list
    c_new: list


def lstm_cell_def(E: int = 1, H: int = 2) -> LSTMCellDef:
    """An LSTM cell with input size ``E`` and hidden size ``H`` over fresh symbols."""
    _check_size("E", E)
    _check_size("H", H)
    x, h, c = vector("x", E), vector("h", H), vector("c", H)
    W_ih, W_hh = matrix("W_ih", 4 * H, E), matrix("W_hh", 4 * H, H)
    b_ih, b_hh = vector("b_ih", 4 * H), vector("b_hh", 4 * H)
    gates = eq.lstm_gates(SYMPY, x, h, W_ih, W_hh, b_ih, b_hh)
    h_new, c_new = eq.lstm_cell(SYMPY, x, h, c, W_ih, W_hh, b_ih, b_hh)
    return LSTMCellDef(x, h, c, W_ih, W_hh, b_ih, b_hh, *gates, h_new, c_new)


class GateViewDef(NamedTuple):
    """The cell's update with the gates as free symbols: c' = f * c + i * g, h' = o * tanh(c').

    ``h_of_c_new`` is h' with c' itself a free symbol ``c_new`` (for dh'/dc').
    """

    i: list
    f: list
    g: list
    o: list
    c: list
    c_new_expr: list
    h_new_expr: list
    c_new: list
    h_of_c_new: list


def lstm_gate_view(H: int = 2) -> GateViewDef:
    """The LSTM update of ``equations.lstm_cell`` re-expressed in terms of its gates.

    The cell is evaluated with pre-activations z = b_ih as free symbols (empty
    input, zero weights), then every gate expression sigma(z_j) / tanh(z_j) is
    replaced by a gate symbol. What remains is exactly how ``lstm_cell``
    combines the gates, so dc'/di etc. are read off the shared equation.
    """
    _check_size("H", H)
    z = vector("z", 4 * H)
    zero = [[0] * H for _ in range(4 * H)]
    c = vector("c", H)
    h_new, c_new = eq.lstm_cell(SYMPY, [], [0] * H, c, [[] for _ in range(4 * H)], zero, z, [0] * (4 * H))
    i, f, g, o = (vector(name, H) for name in "ifgo")
    act = [SYMPY.sigmoid, SYMPY.sigmoid, SYMPY.tanh, SYMPY.sigmoid]
    to_gate = {act[q](z[q * H + j]): gate[j]
               for q, gate in enumerate((i, f, g, o)) for j in range(H)}
    c_new_expr = [v.xreplace(to_gate) for v in c_new]
    h_new_expr = [v.xreplace(to_gate) for v in h_new]
    c_sym = vector("c'", H)
    h_of_c_new = [v.xreplace(dict(zip(c_new_expr, c_sym))) for v in h_new_expr]
    left = set().union(*(v.free_symbols for v in c_new_expr + h_new_expr)) & set(z)
    left |= set().union(*(v.free_symbols for v in h_of_c_new)) - set(o + c_sym)
    if left:  # equations.lstm_cell changed shape: the gate view would silently be wrong
        raise RuntimeError(f"lstm_gate_view: could not express the cell in its gates ({sorted(map(str, left))})")
    return GateViewDef(i, f, g, o, c, c_new_expr, h_new_expr, c_sym, h_of_c_new)


class GeneratorDef(NamedTuple):
    """logits = W_out h~ + b_out, log p = log_softmax(logits), loss = -log p[y]."""

    W_out: list
    b_out: list
    h_tilde: list
    logits: list
    log_probs: list
    y: int
    loss: sp.Expr


def generator_def(V: int = 3, H: int = 2, y: int = 0) -> GeneratorDef:
    """The generator and token cross-entropy for target vocabulary ``V`` and label ``y``.

    ``W_out`` is MODEL.md's ``generator.weight`` [V, H], ``b_out`` its ``generator.bias`` [V].
    """
    _check_size("V", V)
    _check_size("H", H)
    _check_size("y", y, minimum=0)
    if y >= V:
        raise ValueError(f"y: label {y} is outside the vocabulary [0, {V})")
    W_out, b_out, h_tilde = matrix("W_out", V, H), vector("b_out", V), vector(r"\tilde{h}", H)
    logits = eq.generator(W_out, b_out, h_tilde)
    log_probs = eq.log_softmax(SYMPY, logits)
    return GeneratorDef(W_out, b_out, h_tilde, logits, log_probs, y, eq.token_loss(log_probs, y))


def logits_loss_def(V: int = 3, y: int = 0) -> tuple[list, list, sp.Expr]:
    """(logits, log_probs, loss) with the logits as free symbols ``l_1 .. l_V``."""
    _check_size("V", V)
    _check_size("y", y, minimum=0)
    if y >= V:
        raise ValueError(f"y: label {y} is outside the vocabulary [0, {V})")
    logits = vector("l", V)
    log_probs = eq.log_softmax(SYMPY, logits)
    return logits, log_probs, eq.token_loss(log_probs, y)
