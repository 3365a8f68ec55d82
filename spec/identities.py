"""Hand-written gradient formulas, each checked equal to the one SymPy derives.

Every :class:`Identity` pairs a ``derived`` expression (``sympy.diff`` or a
Jacobian of the shared equations, see :mod:`attnspec.spec.symbolic`) with the
``closed`` form a person writes by hand in terms of forward quantities
(``a``, ``u``, ``h_tilde``, the gates ...). :meth:`Identity.verify` decides
whether the two are equal; the derivation docs print both with
``sympy.latex`` and ``attnspec verify`` prints the verdicts.

How equality is decided (see :func:`decide`), entry by entry of
``derived - closed``: the transcendental calls are replaced by new variables
so that the difference becomes a polynomial (each ``exp(w)`` as (1 - s)/s,
which turns the sigmoid 1/(1 + exp(-z)) into s) or a rational function (each
exponential split into one variable per term of its exponent); a difference
that expands to 0 after such a substitution is 0, because substituting back
maps 0 to 0. A difference that does not is evaluated at exact rational
points with 30 digits, and a value clearly away from 0 refutes the identity.
``sympy.simplify`` is the last resort, on small expressions only. An identity
is never accepted on numerical evidence: "holds" means proved.

Examples
--------
>>> ok = [r.holds for r in verify_identities("softmax")]
>>> all(ok)
True
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from typing import NamedTuple

import sympy as sp

from . import equations as eq
from .equations import SYMPY
from .symbolic import (
    attention_def, attentional_state_def, context_def, diag, generator_def, gradient,
    jacobian, logits_loss_def, lstm_cell_def, lstm_gate_view, score_def, softmax_def,
    to_matrix, vector, vjp,
)

PARTS = ("scores", "softmax", "context", "attentional state", "lstm", "generator and loss")
"""The model parts, in MODEL.md order; every identity belongs to one."""

# Sizes of the symbolic checks: the smallest that exercise every off-diagonal
# term (H = 2 has cross terms, S = 3 with N_VALID = 2 has a masked position and
# two live ones) while keeping the whole verification to a few seconds.
H, S, N_VALID, E, V, Y = 2, 3, 2, 1, 3, 1


# -- deciding equality ------------------------------------------------------------------


def _as_matrix(x) -> sp.ImmutableMatrix:
    if isinstance(x, (sp.MatrixBase, list, tuple)):
        return sp.ImmutableMatrix(to_matrix(x))
    return sp.ImmutableMatrix([[sp.sympify(x)]])


def _as_polynomial(d: sp.Expr) -> sp.Expr:
    """``d`` with sigma(z) = 1/(1 + exp(-z)) and tanh(..)/log(..) calls as new variables.

    Each ``exp(w)`` is written as (1 - s)/s for a fresh s, so ``1 + exp(w)`` is
    1/s: a change of variables under which the LSTM's sigmoids and their
    derivatives exp(-z)/(1 + exp(-z))^2 = s (1 - s) become polynomials. Other
    calls become fresh symbols; xreplace works from the top, so a call nested
    in a replaced one (exp inside tanh(c')) disappears with it.
    """
    mapping = {}
    for call in d.atoms(sp.Function):
        if isinstance(call, sp.exp):
            s = sp.Dummy("s")
            mapping[1 + call] = 1 / s
            mapping[call] = (1 - s) / s
        else:
            mapping[call] = sp.Dummy()
    return d.xreplace(mapping)


def _as_rational(d: sp.Expr) -> sp.Expr:
    """``d`` with exp(sum_j n_j t_j) = prod_j X_j^n_j (integer n_j) and other calls as new variables.

    SymPy merges exp(a) exp(b) into exp(a + b), so the softmax's derivatives
    hold exp(e_1 + e_2) and exp(2 e_1) beside exp(e_1); splitting every
    exponent into its terms restores the relations between them.
    """
    mapping, X = {}, {}
    for call in d.atoms(sp.Function):
        if not isinstance(call, sp.exp):
            mapping[call] = sp.Dummy()
            continue
        value = sp.Integer(1)
        for term in sp.Add.make_args(sp.expand(call.args[0])):
            n, t = term.as_coeff_Mul()
            if not n.is_Integer:
                n, t = sp.Integer(1), term
            value *= X.setdefault(t, sp.Dummy("X")) ** n
        mapping[call] = value
    return d.xreplace(mapping)


def _is_zero_polynomial(d: sp.Expr) -> bool:
    return sp.expand(_as_polynomial(d)) == 0


def _is_zero_rational(d: sp.Expr) -> bool:
    # together + expand of the numerator is exact and, unlike cancel, computes no gcd.
    return sp.expand(sp.numer(sp.together(_as_rational(d)))) == 0


def _witness(d: sp.Expr, tries: int = 3) -> sp.Float | None:
    """A clearly non-zero value of ``d`` at an exact rational point, or None.

    Points lie in (-1, 1) so that no exponential is large enough for 30-digit
    cancellation errors to approach the 1e-20 threshold.
    """
    rng = random.Random(20240917)
    names = sorted(d.free_symbols, key=str)
    for _ in range(tries):
        point = {s: sp.Rational(rng.randint(-12, 12), 13) for s in names}
        value = d.xreplace(point).evalf(30)
        if value.is_number and abs(value) > sp.Float("1e-20", 30):
            return value
    return None


_SIMPLIFY_MAX_OPS = 200  # simplify on bigger differences can take minutes


def decide(derived, closed) -> tuple[bool, str]:
    """Whether ``derived == closed`` (scalars or matrices), with how it was decided.

    Returns ``(True, "proved ...")`` only on a symbolic proof of every entry;
    ``(False, "refuted ...")`` when the shapes differ or an entry is non-zero
    at a rational point, ``(False, "rejected ...")`` when a side holds a float,
    and ``(False, "unproven ...")`` when no proof was found.
    """
    D, C = _as_matrix(derived), _as_matrix(closed)
    if D.shape != C.shape:
        return False, f"refuted: shape {D.shape} of the derived form != shape {C.shape} of the closed form"
    for side, M in (("derived", D), ("closed", C)):
        floats = M.atoms(sp.Float)
        if floats:  # 31/50 - 0.62 evaluates to 0 at 15 digits; that proves nothing exact
            return False, f"rejected: the {side} form holds the float {min(floats)}; identities are exact"
    ways = set()
    for index, (d_entry, c_entry) in enumerate(zip(D, C)):
        d = d_entry - c_entry
        if _is_zero_polynomial(d):
            ways.add("polynomial")
            continue
        r, c = divmod(index, D.shape[1])
        value = _witness(d)
        if value is not None:  # cheap, and spares wrong forms the slower proofs below
            return False, f"refuted: entry ({r}, {c}) of derived - closed = {sp.N(value, 6)} at a rational point"
        if _is_zero_rational(d):
            ways.add("rational")
        elif sp.count_ops(d) <= _SIMPLIFY_MAX_OPS and sp.simplify(d) == 0:
            ways.add("simplify")
        else:
            return False, f"unproven: entry ({r}, {c}) of derived - closed did not reduce to 0"
    return True, f"proved ({', '.join(sorted(ways)) or 'no entries'})"


# -- identities -------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A derived gradient and its hand-written closed form, claimed equal.

    Attributes
    ----------
    name : str
        Unique, short, e.g. ``"softmax: Jacobian"``.
    part : str
        One of ``PARTS``.
    statement : str
        The identity in one line of words / ASCII maths.
    derived : sympy.ImmutableMatrix
        Obtained by differentiating the shared equations (for the worked
        example, by evaluating them); scalars are stored as 1 x 1.
    closed : sympy.ImmutableMatrix
        The formula written by hand, same shape.
    """

    name: str
    part: str
    statement: str
    derived: sp.ImmutableMatrix
    closed: sp.ImmutableMatrix

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")
        object.__setattr__(self, "derived", _as_matrix(self.derived))
        object.__setattr__(self, "closed", _as_matrix(self.closed))

    def verify(self) -> "Verdict":
        """Decide the identity and time it."""
        start = time.perf_counter()
        holds, how = decide(self.derived, self.closed)
        return Verdict(self, holds, how, time.perf_counter() - start)

    def check(self) -> bool:
        """True iff ``derived == closed`` was proved symbolically."""
        return self.verify().holds

    def latex(self) -> tuple[str, str]:
        """``sympy.latex`` of (derived, closed), a 1 x 1 matrix printed as its scalar."""
        def one(M):
            return sp.latex(M[0, 0] if M.shape == (1, 1) else M)
        return one(self.derived), one(self.closed)


class Verdict(NamedTuple):
    """The outcome of :meth:`Identity.verify`."""

    identity: Identity
    holds: bool
    how: str
    seconds: float


def _col(v) -> sp.Matrix:
    return to_matrix(v)


def _sq(v: sp.Matrix) -> sp.Matrix:
    return v.applyfunc(lambda x: x**2)


def _ones(n: int) -> sp.Matrix:
    return sp.ones(n, 1)


def _times(*vectors: sp.Matrix) -> sp.Matrix:
    """Elementwise product, MODEL.md's ``*``."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.multiply_elementwise(v)
    return out


def _score_identities() -> list[Identity]:
    R = sp.Rational
    query, key = [R(7, 10), R(3, 10)], [R(8, 10), R(2, 10)]
    out = [Identity(
        "worked example: dot score", "scores",
        "key (0.8, 0.2), query (0.7, 0.3): score = 0.8*0.7 + 0.2*0.3 = 0.62 exactly",
        eq.score(SYMPY, "dot", query, key), R(62, 100))]

    d = score_def("dot", H)
    h, k = _col(d.h), _col(d.k)
    out += [Identity("dot: de/dh", "scores", "d(h . k)/dh = k", gradient(d.e, d.h), k),
            Identity("dot: de/dk", "scores", "d(h . k)/dk = h", gradient(d.e, d.k), h)]

    d = score_def("scaled_dot", H)
    out += [Identity("scaled_dot: de/dh", "scores", "d(h . k / sqrt(H))/dh = k / sqrt(H)",
                     gradient(d.e, d.h), k / sp.sqrt(H)),
            Identity("scaled_dot: de/dk", "scores", "d(h . k / sqrt(H))/dk = h / sqrt(H)",
                     gradient(d.e, d.k), h / sp.sqrt(H))]

    d = score_def("general", H)
    W_a = to_matrix(d.W_a)
    out += [
        Identity("general: de/dh", "scores", "d(h^T W_a k)/dh = W_a k", gradient(d.e, d.h), W_a * k),
        Identity("general: de/dk", "scores", "d(h^T W_a k)/dk = W_a^T h", gradient(d.e, d.k), W_a.T * h),
        Identity("general: de/dW_a", "scores", "d(h^T W_a k)/dW_a = h k^T", gradient(d.e, d.W_a), h * k.T),
    ]

    d = score_def("concat", H)
    W_a, v_a, hk = to_matrix(d.W_a), _col(d.v_a), _col(d.h + d.k)
    u = (W_a * hk).applyfunc(SYMPY.tanh)          # u = tanh(W_a [h; k])  (H,)
    r = _times(v_a, _ones(H) - _sq(u))            # de/d(W_a [h; k])   (H,)
    out += [
        Identity("concat: de/dv_a", "scores", "d(v_a^T u)/dv_a = u, u = tanh(W_a [h; k])",
                 gradient(d.e, d.v_a), u),
        Identity("concat: de/dW_a", "scores", "de/dW_a = (v_a * (1 - u^2)) [h; k]^T",
                 gradient(d.e, d.W_a), r * hk.T),
        Identity("concat: de/dh", "scores", "de/dh = W_a[:, :H]^T (v_a * (1 - u^2))",
                 gradient(d.e, d.h), W_a[:, :H].T * r),
        Identity("concat: de/dk", "scores", "de/dk = W_a[:, H:]^T (v_a * (1 - u^2))",
                 gradient(d.e, d.k), W_a[:, H:].T * r),
    ]
    return out


def _softmax_identities() -> list[Identity]:
    out = []
    for n in (S, N_VALID):
        sm = softmax_def(S, n)
        a, g = _col(sm.a), _col(vector("g", S))
        tag = "softmax" if n == S else f"masked softmax (n_valid = {n} of {S})"
        # Written out on the live block so that the zero rows and columns of
        # masked positions are part of the claim, not a consequence of a_s = 0.
        J = sp.Matrix(S, S, lambda s, j: a[s] * (int(s == j) - a[j]) if max(s, j) < n else 0)
        a_dot_g = sum(a[j] * g[j] for j in range(n))
        vjp_closed = sp.Matrix(S, 1, lambda s, _: a[s] * (g[s] - a_dot_g) if s < n else 0)
        masked_note = "" if n == S else ", rows and columns s > n_valid zero"
        out += [
            Identity(f"{tag}: Jacobian", "softmax", "da/de = diag(a) - a a^T" + masked_note,
                     jacobian(sm.a, sm.e), J),
            Identity(f"{tag}: VJP", "softmax",
                     "dL/de = a * (g - <a, g>), g = dL/da" + ("" if n == S else ", 0 for s > n_valid"),
                     vjp(sm.a, sm.e, g), vjp_closed),
            Identity(f"{tag}: weights sum to one", "softmax", "sum_s a_s = 1", sum(sm.a), 1),
        ]
        if n < S:
            out.append(Identity(f"{tag}: masked weights are zero", "softmax", "a_s = 0 for s > n_valid",
                                _col(sm.a[n:]), sp.zeros(S - n, 1)))
    return out


def _context_identities() -> list[Identity]:
    cd = context_def(S, H)
    K, a, g = to_matrix(cd.keys), _col(cd.a), _col(vector("g", H))  # K: (S, H), key s in row s
    L = eq.vdot(list(g), cd.ctx)
    out = [
        Identity("context: dctx/da", "context", "d ctx / d a_s = h_s (column s is key s)",
                 jacobian(cd.ctx, cd.a), K.T),
        Identity("context: dctx/dkeys", "context", "d ctx / d h_s = a_s I",
                 jacobian(cd.ctx, cd.keys), sp.Matrix.hstack(*(a[s] * sp.eye(H) for s in range(S)))),
        Identity("context: VJP to a", "context", "dL/da_s = <g, h_s>, g = dL/dctx", gradient(L, cd.a), K * g),
        Identity("context: VJP to keys", "context", "dL/dh_s = a_s g (row s)", gradient(L, cd.keys), a * g.T),
    ]
    # The pieces composed for the dot score: the query moves ctx only through a.
    for n in (S, N_VALID):
        ad = attention_def("dot", H, S, n)
        K, a = to_matrix(ad.keys), _col(ad.a)
        tag = "dot attention" if n == S else f"masked dot attention (n_valid = {n})"
        out.append(Identity(f"{tag}: dctx/dh", "context",
                            "d ctx / d h = K^T (diag(a) - a a^T) K, K the keys as rows",
                            jacobian(ad.ctx, ad.h), K.T * (diag(a) - a * a.T) * K))
        if n < S:
            out.append(Identity(f"{tag}: masked keys have no effect", "context",
                                "d ctx / d h_s = 0 for s > n_valid",
                                jacobian(ad.ctx, ad.keys[n:]), sp.zeros(H, (S - n) * H)))
    return out


def _attentional_state_identities() -> list[Identity]:
    # z = W_c [ctx; h] becomes the free vector z when W_c = [I | 0] and ctx = z.
    z = vector("z", H)
    I_0 = [[int(r == c) for c in range(2 * H)] for r in range(H)]
    h_tilde_of_z = eq.attentional_state(SYMPY, I_0, z, [0] * H)
    out = [Identity("h~: dh~/dz", "attentional state", "d h~ / d z = diag(1 - h~^2), z = W_c [ctx; h]",
                    jacobian(h_tilde_of_z, z), diag(_ones(H) - _sq(_col(h_tilde_of_z))))]

    st = attentional_state_def(H)
    W_c, ht, g = to_matrix(st.W_c), _col(st.h_tilde), _col(vector("g", H))
    dz = diag(_ones(H) - _sq(ht))
    L = eq.vdot(list(g), st.h_tilde)
    out += [
        Identity("h~: dh~/dctx", "attentional state", "d h~ / d ctx = diag(1 - h~^2) W_c[:, :H]",
                 jacobian(st.h_tilde, st.ctx), dz * W_c[:, :H]),
        Identity("h~: dh~/dh", "attentional state", "d h~ / d h = diag(1 - h~^2) W_c[:, H:]",
                 jacobian(st.h_tilde, st.h), dz * W_c[:, H:]),
        Identity("h~: dL/dW_c", "attentional state", "dL/dW_c = (g * (1 - h~^2)) [ctx; h]^T, g = dL/dh~",
                 gradient(L, st.W_c), _times(g, _ones(H) - _sq(ht)) * _col(st.ctx + st.h).T),
    ]
    return out


def _lstm_identities() -> list[Identity]:
    x = sp.Symbol("x", real=True)
    sigma, tanh = SYMPY.sigmoid(x), SYMPY.tanh(x)
    out = [
        Identity("sigma'", "lstm", "sigma'(x) = sigma(x) (1 - sigma(x))", sp.diff(sigma, x), sigma * (1 - sigma)),
        Identity("tanh'", "lstm", "tanh'(x) = 1 - tanh(x)^2", sp.diff(tanh, x), 1 - tanh**2),
    ]

    gv = lstm_gate_view(H)
    tanh_c = _col(gv.c_new_expr).applyfunc(SYMPY.tanh)
    tanh_c_sym = _col(gv.c_new).applyfunc(SYMPY.tanh)
    out += [
        Identity("lstm: dc'/dc", "lstm", "dc'/dc = diag(f)", jacobian(gv.c_new_expr, gv.c), diag(gv.f)),
        Identity("lstm: dc'/di", "lstm", "dc'/di = diag(g)", jacobian(gv.c_new_expr, gv.i), diag(gv.g)),
        Identity("lstm: dc'/df", "lstm", "dc'/df = diag(c)", jacobian(gv.c_new_expr, gv.f), diag(gv.c)),
        Identity("lstm: dc'/dg", "lstm", "dc'/dg = diag(i)", jacobian(gv.c_new_expr, gv.g), diag(gv.i)),
        Identity("lstm: dh'/do", "lstm", "dh'/do = diag(tanh(c'))", jacobian(gv.h_new_expr, gv.o), diag(tanh_c)),
        Identity("lstm: dh'/dc'", "lstm", "dh'/dc' = diag(o * (1 - tanh(c')^2))",
                 jacobian(gv.h_of_c_new, gv.c_new),
                 diag(_times(_col(gv.o), _ones(H) - _sq(tanh_c_sym)))),
    ]

    cell = lstm_cell_def(E, H)
    h_bar, c_bar = _col(vector(r"\bar{h}'", H)), _col(vector(r"\bar{c}'", H))
    L = eq.vdot(list(h_bar), cell.h_new) + eq.vdot(list(c_bar), cell.c_new)
    i, f, g, o = (_col(v) for v in (cell.i, cell.f, cell.g, cell.o))
    tc = _col(cell.c_new).applyfunc(SYMPY.tanh)
    one = _ones(H)
    # Backward through the cell by hand: dL/dc' collects both paths into c'.
    c_total = c_bar + _times(h_bar, o, one - _sq(tc))
    d_i, d_f, d_g, d_o = _times(c_total, g), _times(c_total, _col(cell.c)), _times(c_total, i), _times(h_bar, tc)
    dz = sp.Matrix.vstack(                        # dL/dz  (4H,), gate order i, f, g, o
        _times(d_i, i, one - i),
        _times(d_f, f, one - f),
        _times(d_g, one - _sq(g)),
        _times(d_o, o, one - o),
    )
    W_ih, W_hh = to_matrix(cell.W_ih), to_matrix(cell.W_hh)
    about = "L = <h'bar, h'> + <c'bar, c'>, dz = dL/dz by the local derivatives above"
    out += [
        Identity("lstm: dL/dW_ih", "lstm", f"dL/dW_ih = dz x^T; {about}",
                 gradient(L, cell.W_ih), dz * _col(cell.x).T),
        Identity("lstm: dL/dW_hh", "lstm", "dL/dW_hh = dz h^T", gradient(L, cell.W_hh), dz * _col(cell.h).T),
        Identity("lstm: dL/db_ih", "lstm", "dL/db_ih = dz", gradient(L, cell.b_ih), dz),
        Identity("lstm: dL/db_hh", "lstm", "dL/db_hh = dz", gradient(L, cell.b_hh), dz),
        Identity("lstm: dL/dx", "lstm", "dL/dx = W_ih^T dz", gradient(L, cell.x), W_ih.T * dz),
        Identity("lstm: dL/dh", "lstm", "dL/dh = W_hh^T dz", gradient(L, cell.h), W_hh.T * dz),
        Identity("lstm: dL/dc", "lstm", "dL/dc = (c'bar + h'bar * o * (1 - tanh(c')^2)) * f",
                 gradient(L, cell.c), _times(c_total, f)),
    ]
    return out


def _generator_identities() -> list[Identity]:
    logits, _, loss = logits_loss_def(V, Y)
    p = _col(eq.masked_softmax(SYMPY, logits, V))
    onehot = sp.Matrix(V, 1, lambda v, _: int(v == Y))
    out = [Identity("CE: dloss/dlogits", "generator and loss",
                    "d(-log softmax(l)[y]) / dl = softmax(l) - onehot(y)", gradient(loss, logits), p - onehot)]

    gd = generator_def(V, H, Y)
    delta = _col(eq.masked_softmax(SYMPY, gd.logits, V)) - onehot  # dloss/dlogits
    out += [
        Identity("generator: dloss/dW_out", "generator and loss", "dloss/dW_out = (p - onehot(y)) h~^T",
                 gradient(gd.loss, gd.W_out), delta * _col(gd.h_tilde).T),
        Identity("generator: dloss/db_out", "generator and loss", "dloss/db_out = p - onehot(y)",
                 gradient(gd.loss, gd.b_out), delta),
        Identity("generator: dloss/dh~", "generator and loss", "dloss/dh~ = W_out^T (p - onehot(y))",
                 gradient(gd.loss, gd.h_tilde), to_matrix(gd.W_out).T * delta),
    ]
    return out


_BUILDERS = {
    "scores": _score_identities,
    "softmax": _softmax_identities,
    "context": _context_identities,
    "attentional state": _attentional_state_identities,
    "lstm": _lstm_identities,
    "generator and loss": _generator_identities,
}


@functools.cache
def _identities_of(part: str) -> tuple[Identity, ...]:
    return tuple(_BUILDERS[part]())


def identities(part: str | None = None) -> list[Identity]:
    """Every identity (or those of one ``part``), in MODEL.md order.

    Built once per process (the derivatives are computed on first use).
    """
    if part is not None and part not in PARTS:
        raise ValueError(f"part: expected one of {PARTS}, got {part!r}")
    return [ident for p in (PARTS if part is None else (part,)) for ident in _identities_of(p)]


def verify_identities(part: str | None = None) -> list[Verdict]:
    """Verify every identity (or those of one ``part``); one :class:`Verdict` each."""
    return [ident.verify() for ident in identities(part)]
