"""A scalar reverse-mode autodiff engine over mpmath numbers (micrograd style).

Each ``Var`` holds an ``mpmath.mpf`` value, its parents in the expression graph
and the local partial derivative with respect to each parent, computed in the
forward pass. ``Var.backward`` walks the graph once in reverse topological
order and applies the chain rule ``parent.grad += partial * node.grad``.

The arithmetic operators carry their (textbook) partials next to their
forward rule. The transcendental primitives (exp, log, tanh, sqrt, sigmoid)
are not hand-differentiated at all: each is a SymPy expression in ``x``, its
derivative is ``sympy.diff`` of that expression, and both are lambdified to
mpmath. So the local derivatives the oracle multiplies are derived by
machine from the same definitions that give the values.

``AUTODIFF`` is an ``Ops`` (spec/equations.py) whose functions build ``Var``
nodes, so the model equations written once in ``spec.equations`` run
unchanged on it. Precision is whatever mpmath's working precision is when the
numbers are made: run under ``mpmath.workdps(dps)``.

Examples
--------
>>> import mpmath
>>> with mpmath.workdps(30):
...     x = Var(mpmath.mpf(2))
...     y = x * AUTODIFF.exp(x) + 3 / x
...     y.backward()
...     mpmath.nstr(x.grad, 12)   # (1 + x) e^x - 3 / x^2 at x = 2
'21.4171682968'
"""

from __future__ import annotations

import numbers

import mpmath
import sympy as sp

from .equations import Ops

__all__ = ["Var", "AUTODIFF", "MPMATH", "PRIMITIVES", "value_of"]


def _lift(x):
    """A constant operand as an mpf (floats convert exactly), or None if it is not a number."""
    if isinstance(x, mpmath.mpf):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return mpmath.mpf(x)
    return None


class Var:
    """A scalar node of the expression graph: value, gradient, parents and local partials.

    Parameters
    ----------
    value : mpmath.mpf (or int / float, converted exactly)
    parents : tuple of Var
        The operands this node was computed from (empty for a leaf).
    partials : tuple
        d(self) / d(parent) for each parent, evaluated at the forward values.
    """

    __slots__ = ("value", "grad", "_parents", "_partials")

    def __init__(self, value, parents=(), partials=()):
        self.value = value if isinstance(value, mpmath.mpf) else mpmath.mpf(value)
        self.grad = 0
        self._parents = parents
        self._partials = partials

    def __repr__(self):
        return f"Var({mpmath.nstr(self.value, 10)}, grad={mpmath.nstr(self.grad, 10)})"

    # -- arithmetic: forward value and local partials side by side -------------

    def __add__(self, other):
        if isinstance(other, Var):
            return Var(self.value + other.value, (self, other), (1, 1))
        k = _lift(other)
        return NotImplemented if k is None else Var(self.value + k, (self,), (1,))

    __radd__ = __add__

    def __neg__(self):
        return Var(-self.value, (self,), (-1,))

    def __sub__(self, other):
        if isinstance(other, Var):
            return Var(self.value - other.value, (self, other), (1, -1))
        k = _lift(other)
        return NotImplemented if k is None else Var(self.value - k, (self,), (1,))

    def __rsub__(self, other):
        k = _lift(other)
        return NotImplemented if k is None else Var(k - self.value, (self,), (-1,))

    def __mul__(self, other):
        # d(uv) = v du + u dv
        if isinstance(other, Var):
            return Var(self.value * other.value, (self, other), (other.value, self.value))
        k = _lift(other)
        return NotImplemented if k is None else Var(self.value * k, (self,), (k,))

    __rmul__ = __mul__

    def __truediv__(self, other):
        # d(u/v) = du / v - u dv / v^2
        if isinstance(other, Var):
            q = self.value / other.value
            return Var(q, (self, other), (1 / other.value, -q / other.value))
        k = _lift(other)
        return NotImplemented if k is None else Var(self.value / k, (self,), (1 / k,))

    def __rtruediv__(self, other):
        # d(k/v) = -k dv / v^2
        k = _lift(other)
        if k is None:
            return NotImplemented
        q = k / self.value
        return Var(q, (self,), (-q / self.value,))

    # -- reverse pass -------------------------------------------------------------

    def backward(self):
        """Accumulate d(self)/d(node) into ``node.grad`` for every node self depends on.

        Gradients accumulate (as in micrograd): make fresh leaves for every
        evaluation. The topological order is built iteratively, so graphs of
        any depth (10^5 nodes and more) are fine.
        """
        order, seen = [], set()
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)  # after all of its parents: a topological order
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p not in seen)
        self.grad = self.grad + 1
        for node in reversed(order):
            g = node.grad
            for parent, partial in zip(node._parents, node._partials):
                parent.grad = parent.grad + partial * g


def value_of(x) -> mpmath.mpf:
    """The mpf value of a Var, or of a plain number (exact zeros of masked positions included)."""
    return x.value if isinstance(x, Var) else mpmath.mpf(x)


# -- primitives with machine-derived derivatives ------------------------------------

_x = sp.Symbol("x", real=True)

PRIMITIVE_EXPRESSIONS = {
    "exp": sp.exp(_x),
    "log": sp.log(_x),
    "tanh": sp.tanh(_x),
    "sqrt": sp.sqrt(_x),
    "sigmoid": 1 / (1 + sp.exp(-_x)),
}
"""Each primitive as a SymPy expression in x; its derivative is ``sympy.diff`` of it."""


def _primitive(name: str, expr):
    f = sp.lambdify(_x, expr, modules="mpmath")
    df_expr = sp.diff(expr, _x)
    df = sp.lambdify(_x, df_expr, modules="mpmath")

    def apply(x):
        if isinstance(x, Var):
            return Var(f(x.value), (x,), (df(x.value),))
        return f(_lift(x))  # a constant, e.g. sqrt(H) in scaled_dot

    apply.__name__ = name
    apply.__doc__ = f"{expr} on a Var, with local derivative d/dx = {df_expr} (derived by SymPy)."
    apply.derivative = df_expr
    return apply


PRIMITIVES = {name: _primitive(name, expr) for name, expr in PRIMITIVE_EXPRESSIONS.items()}


class _AutodiffOps(Ops):
    """Ops on Var whose sigmoid is one primitive node instead of four (exp, +, /, neg)."""

    def sigmoid(self, x):
        return PRIMITIVES["sigmoid"](x)


AUTODIFF = _AutodiffOps(
    exp=PRIMITIVES["exp"], log=PRIMITIVES["log"], tanh=PRIMITIVES["tanh"], sqrt=PRIMITIVES["sqrt"]
)
"""Ops whose functions build Var nodes (for values and gradients)."""

MPMATH = Ops(exp=mpmath.exp, log=mpmath.log, tanh=mpmath.tanh, sqrt=mpmath.sqrt)
"""Plain mpmath ops (values only, no graph): the oracle's loss-only path and its finite differences."""
