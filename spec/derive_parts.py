"""The derivation pages of the six forward parts: definition, derivations, verdicts.

Each page shows (1) the equation of MODEL.md in ordinary notation, (2) the
SymPy expression that :mod:`attnspec.spec.symbolic` builds by running
:mod:`attnspec.spec.equations` on symbols, and (3) for every identity of
:mod:`attnspec.spec.identities` in that part: the general formula, SymPy's
derivative (``sympy.diff`` / Jacobian), the hand-written closed form on the
same symbols and SymPy's verdict on their equality. Only (1) and the general
formulas are hand-written here; everything else is printed from the
expressions, so the pages cannot describe another model than the oracle's.
"""

from __future__ import annotations

import sympy as sp

from . import identities as ids
from .config import SCORES
from .derive_md import display, equation, latex, verdict_text
from .symbolic import (
    attentional_state_def, context_def, generator_def, lstm_cell_def, lstm_gate_view, score_def,
    softmax_def,
)

# part of identities.PARTS -> (file name, title)
PAGES = {
    "scores": ("scores.md", "Attention scores"),
    "softmax": ("softmax.md", "Masked softmax"),
    "context": ("context.md", "Context vector"),
    "attentional state": ("attentional-state.md", "Attentional state"),
    "lstm": ("lstm.md", "LSTM cell"),
    "generator and loss": ("generator-and-loss.md", "Generator and loss"),
}

_DZ = r"\delta z"
_ONE = r"\mathbf{1}"

# The general formula of every identity, by name. A new identity without an
# entry here stops the generator (KeyError), so the docs cannot silently skip it.
GENERAL = {
    "worked example: dot score":
        r"(0.8,\ 0.2) \cdot (0.7,\ 0.3) = 0.8 \cdot 0.7 + 0.2 \cdot 0.3 = 0.62",
    "dot: de/dh": r"\frac{\partial (h \cdot k)}{\partial h} = k",
    "dot: de/dk": r"\frac{\partial (h \cdot k)}{\partial k} = h",
    "scaled_dot: de/dh": r"\frac{\partial}{\partial h} \frac{h \cdot k}{\sqrt{H}} = \frac{k}{\sqrt{H}}",
    "scaled_dot: de/dk": r"\frac{\partial}{\partial k} \frac{h \cdot k}{\sqrt{H}} = \frac{h}{\sqrt{H}}",
    "general: de/dh": r"\frac{\partial (h^\top W_a k)}{\partial h} = W_a k",
    "general: de/dk": r"\frac{\partial (h^\top W_a k)}{\partial k} = W_a^\top h",
    "general: de/dW_a": r"\frac{\partial (h^\top W_a k)}{\partial W_a} = h k^\top",
    "concat: de/dv_a": r"\frac{\partial e}{\partial v_a} = u, \qquad u = \tanh(W_a [h; k])",
    "concat: de/dW_a": r"\frac{\partial e}{\partial W_a} = \big(v_a \odot (1 - u^2)\big)\, [h; k]^\top",
    "concat: de/dh": r"\frac{\partial e}{\partial h} = W_a^{(h)\top} \big(v_a \odot (1 - u^2)\big)",
    "concat: de/dk": r"\frac{\partial e}{\partial k} = W_a^{(k)\top} \big(v_a \odot (1 - u^2)\big)",
    "softmax: Jacobian": r"\frac{\partial a}{\partial e} = \operatorname{diag}(a) - a a^\top",
    "softmax: VJP": r"\frac{\partial L}{\partial e} = a \odot \big(g - \langle a, g \rangle \mathbf{1}\big),"
                    r" \qquad g = \frac{\partial L}{\partial a}",
    "softmax: weights sum to one": r"\sum_s a_s = 1",
    "masked softmax (n_valid = 2 of 3): Jacobian":
        r"\frac{\partial a_s}{\partial e_j} = a_s (\delta_{sj} - a_j) \text{ for } s, j \le n,"
        r" \text{ and } 0 \text{ if } s > n \text{ or } j > n",
    "masked softmax (n_valid = 2 of 3): VJP":
        r"\frac{\partial L}{\partial e_s} = a_s \Big(g_s - \sum_{j \le n} a_j g_j\Big) \text{ for } s \le n,"
        r" \quad 0 \text{ for } s > n",
    "masked softmax (n_valid = 2 of 3): weights sum to one": r"\sum_{s \le n} a_s = 1",
    "masked softmax (n_valid = 2 of 3): masked weights are zero": r"a_s = 0 \text{ for } s > n",
    "context: dctx/da": r"\frac{\partial\, \mathrm{ctx}}{\partial a_s} = h^{enc}_s",
    "context: dctx/dkeys": r"\frac{\partial\, \mathrm{ctx}}{\partial h^{enc}_s} = a_s I",
    "context: VJP to a": r"\frac{\partial L}{\partial a_s} = \langle g, h^{enc}_s \rangle,"
                         r" \qquad g = \frac{\partial L}{\partial\, \mathrm{ctx}}",
    "context: VJP to keys": r"\frac{\partial L}{\partial h^{enc}_s} = a_s\, g",
    "dot attention: dctx/dh":
        r"\frac{\partial\, \mathrm{ctx}}{\partial h} = K^\top \big(\operatorname{diag}(a) - a a^\top\big) K,"
        r" \qquad K = [h^{enc}_1; \dots; h^{enc}_S] \text{ (keys as rows)}",
    "masked dot attention (n_valid = 2): dctx/dh":
        r"\frac{\partial\, \mathrm{ctx}}{\partial h} = K^\top \big(\operatorname{diag}(a) - a a^\top\big) K,"
        r" \qquad a_s = 0 \text{ for } s > n",
    "masked dot attention (n_valid = 2): masked keys have no effect":
        r"\frac{\partial\, \mathrm{ctx}}{\partial h^{enc}_s} = 0 \text{ for } s > n",
    "h~: dh~/dz": r"\frac{\partial \tilde h}{\partial z} = \operatorname{diag}(1 - \tilde h^2),"
                  r" \qquad z = W_c [\mathrm{ctx}; h]",
    "h~: dh~/dctx": r"\frac{\partial \tilde h}{\partial\, \mathrm{ctx}} = \operatorname{diag}(1 - \tilde h^2)\,"
                    r" W_c^{(\mathrm{ctx})}",
    "h~: dh~/dh": r"\frac{\partial \tilde h}{\partial h} = \operatorname{diag}(1 - \tilde h^2)\, W_c^{(h)}",
    "h~: dL/dW_c": r"\frac{\partial L}{\partial W_c} = \big(g \odot (1 - \tilde h^2)\big)\,"
                   r" [\mathrm{ctx}; h]^\top, \qquad g = \frac{\partial L}{\partial \tilde h}",
    "sigma'": r"\sigma'(x) = \sigma(x)\,\big(1 - \sigma(x)\big)",
    "tanh'": r"\tanh'(x) = 1 - \tanh^2(x)",
    "lstm: dc'/dc": r"\frac{\partial c'}{\partial c} = \operatorname{diag}(f)",
    "lstm: dc'/di": r"\frac{\partial c'}{\partial i} = \operatorname{diag}(g)",
    "lstm: dc'/df": r"\frac{\partial c'}{\partial f} = \operatorname{diag}(c)",
    "lstm: dc'/dg": r"\frac{\partial c'}{\partial g} = \operatorname{diag}(i)",
    "lstm: dh'/do": r"\frac{\partial h'}{\partial o} = \operatorname{diag}(\tanh c')",
    "lstm: dh'/dc'": r"\frac{\partial h'}{\partial c'} = \operatorname{diag}\big(o \odot (1 - \tanh^2 c')\big)",
    "lstm: dL/dW_ih": rf"\frac{{\partial L}}{{\partial W_{{ih}}}} = {_DZ}\, x^\top",
    "lstm: dL/dW_hh": rf"\frac{{\partial L}}{{\partial W_{{hh}}}} = {_DZ}\, h^\top",
    "lstm: dL/db_ih": rf"\frac{{\partial L}}{{\partial b_{{ih}}}} = {_DZ}",
    "lstm: dL/db_hh": rf"\frac{{\partial L}}{{\partial b_{{hh}}}} = {_DZ}",
    "lstm: dL/dx": rf"\frac{{\partial L}}{{\partial x}} = W_{{ih}}^\top {_DZ}",
    "lstm: dL/dh": rf"\frac{{\partial L}}{{\partial h}} = W_{{hh}}^\top {_DZ}",
    "lstm: dL/dc": r"\frac{\partial L}{\partial c} = \delta c' \odot f",
    "CE: dloss/dlogits": r"\frac{\partial\, (-\log \operatorname{softmax}(l)_y)}{\partial l}"
                         r" = \operatorname{softmax}(l) - \operatorname{onehot}(y)",
    "generator: dloss/dW_out": r"\frac{\partial \ell}{\partial W_{out}} = (p - \operatorname{onehot}(y))\,"
                               r" \tilde h^\top",
    "generator: dloss/db_out": r"\frac{\partial \ell}{\partial b_{out}} = p - \operatorname{onehot}(y)",
    "generator: dloss/dh~": r"\frac{\partial \ell}{\partial \tilde h} = W_{out}^\top (p - \operatorname{onehot}(y))",
}

SIZES = (f"Sizes of the symbolic checks: H = {ids.H}, S = {ids.S} source positions of which "
         f"n = {ids.N_VALID} are valid in the masked cases, E = {ids.E}, V = {ids.V}, label y = {ids.Y} "
         "(0-based, so row 2 of the generator). Every entry of every vector and matrix is its own symbol, "
         "so an identity shown at these sizes is shown entry by entry; none of the closed forms depends "
         "on the sizes.")


def _lines(lhs: str, expr) -> str:
    """``lhs = expr``, a long sum set one term per line (MathJax does not break lines by itself)."""
    terms = sp.Add.make_args(expr)
    if len(latex(expr)) <= 150 or len(terms) < 2:
        return f"{lhs} = {latex(expr)}"
    rows = [rf"{lhs} = {{}} & {latex(terms[0])}"] + [rf"& + {latex(t)}" for t in terms[1:]]
    return r"\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}"


def _intro(part: str) -> list[str]:
    """MODEL.md's equation in ordinary notation, then SymPy's expression built from spec/equations.py."""
    if part == "scores":
        blocks = ["MODEL.md: the decoder's query $h$ (the top-layer $h_t$) is scored against every key "
                  r"$k = h^{enc}_s$. Parameters: $W_a$ is $H \times H$ (general) or $H \times 2H$ (concat), "
                  "$v_a$ has $H$ entries.",
                  display(r"\text{dot: } h \cdot k \qquad \text{scaled_dot: } \frac{h \cdot k}{\sqrt{H}} \qquad"
                          r" \text{general: } h^\top W_a k \qquad \text{concat: } v_a^\top \tanh(W_a [h; k])"),
                  f"SymPy's expressions (`score_def(name, H={ids.H})`):"]
        blocks += [display(_lines(rf"e_{{\text{{{name}}}}}", score_def(name, ids.H).e)) for name in SCORES]
        return blocks
    if part == "softmax":
        return ["MODEL.md: scores past the source length get $-\\infty$, whose exponential is exactly 0, "
                "so the weights of masked positions are exactly 0 and never enter the sum.",
                display(r"a_s = \frac{\exp(e_s)}{\sum_{j \le n} \exp(e_j)} \ (s \le n), \qquad a_s = 0 \ (s > n),"
                        r" \qquad n = \mathrm{src\_len}"),
                f"SymPy's expressions (`softmax_def(S={ids.S})` and the masked `softmax_def(S={ids.S}, "
                f"n_valid={ids.N_VALID})`):",
                display(f"a = {latex(softmax_def(ids.S).a)}"),
                display(f"a_{{n={ids.N_VALID}}} = {latex(softmax_def(ids.S, ids.N_VALID).a)}")]
    if part == "context":
        return ["MODEL.md: the context is the attention-weighted sum of the encoder outputs (the keys).",
                display(r"\mathrm{ctx} = \sum_s a_s\, h^{enc}_s"),
                f"SymPy's expression with free weights (`context_def(S={ids.S}, H={ids.H})`, key $s$ is "
                "$k_{s,\\cdot}$):",
                display(rf"\mathrm{{ctx}} = {latex(context_def(ids.S, ids.H).ctx)}")]
    if part == "attentional state":
        return ["MODEL.md: the context and the decoder state are combined, with no bias, into the attentional "
                "state that feeds the generator (and, with input feeding, the next step's input).",
                display(r"\tilde h = \tanh\big(W_c [\mathrm{ctx}; h]\big), \qquad W_c \in \mathbb{R}^{H \times 2H}"),
                f"SymPy's expression (`attentional_state_def(H={ids.H})`):",
                display(rf"\tilde h = {latex(attentional_state_def(ids.H).h_tilde)}")]
    if part == "lstm":
        cell, gv = lstm_cell_def(ids.E, ids.H), lstm_gate_view(ids.H)
        return ["MODEL.md (gate order i, f, g, o as in PyTorch):",
                display(r"z = W_{ih} x + b_{ih} + W_{hh} h + b_{hh}, \quad i = \sigma(z_{[0:H]}), \ "
                        r"f = \sigma(z_{[H:2H]}), \ g = \tanh(z_{[2H:3H]}), \ o = \sigma(z_{[3H:4H]})"),
                display(r"c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')"),
                f"SymPy's expressions (`lstm_cell_def(E={ids.E}, H={ids.H})`), first entry of each gate:",
                display(rf"i_1 = {latex(cell.i[0])}"),
                display(rf"f_1 = {latex(cell.f[0])}"),
                display(rf"g_1 = {latex(cell.g[0])}"),
                display(rf"o_1 = {latex(cell.o[0])}"),
                "and the update with the gates as symbols (`lstm_gate_view`, read off the same "
                "`equations.lstm_cell`):",
                display(rf"c' = {latex(gv.c_new_expr)}, \qquad h' = {latex(gv.h_new_expr)}"),
                "The gradients below take a cell inside any loss: $L = \\langle \\bar h', h' \\rangle + "
                "\\langle \\bar c', c' \\rangle$, where $\\bar h'$, $\\bar c'$ are whatever the rest of the "
                "network sends back. By hand, with $\\delta c'$ collecting both paths into $c'$:",
                display(r"\delta c' = \bar c' + \bar h' \odot o \odot (1 - \tanh^2 c'), \qquad "
                        r"\delta z = \begin{bmatrix} \delta c' \odot g \odot i \odot (1 - i) \\"
                        r" \delta c' \odot c \odot f \odot (1 - f) \\ \delta c' \odot i \odot (1 - g^2) \\"
                        r" \bar h' \odot \tanh(c') \odot o \odot (1 - o) \end{bmatrix}")]
    if part == "generator and loss":
        gd = generator_def(ids.V, ids.H, ids.Y)
        return ["MODEL.md: the generator maps the attentional state to logits over the target vocabulary; the "
                "token loss is the negative log-probability of the label.",
                display(r"l = W_{out} \tilde h + b_{out}, \qquad p = \operatorname{softmax}(l), \qquad"
                        r" \ell = -\log p_y"),
                f"SymPy's expressions (`generator_def(V={ids.V}, H={ids.H}, y={ids.Y})`):",
                display(rf"l = {latex(gd.logits)}"),
                display(rf"\ell = {latex(gd.loss)}"),
                "The batch loss is the mean over non-PAD labels, so each step's gradient is scaled by "
                r"$m_{b,t} / \sum m$; see [the backward pass](bptt.md)."]
    raise ValueError(f"part: expected one of {ids.PARTS}, got {part!r}")


def _identity_section(verdict: ids.Verdict) -> str:
    ident = verdict.identity
    try:
        general = GENERAL[ident.name]
    except KeyError:
        raise KeyError(f"identity {ident.name!r} has no general formula in derive_parts.GENERAL") from None
    derived_what = "by evaluating the equations" if ident.name.startswith("worked") else "by sympy.diff"
    return "\n\n".join([
        f"### {ident.name}",
        f"Claim: `{ident.statement}`",
        display(general),
        f"SymPy's derivative of the definition ({derived_what}):",
        equation(r"\text{derived}", ident.derived, "SymPy's derivative"),
        "The closed form written by hand, on the same symbols:",
        equation(r"\text{closed}", ident.closed, "The closed form"),
        verdict_text(verdict.holds, verdict.how),
    ])


def part_page(part: str, verdicts: list[ids.Verdict]) -> tuple[str, str, str]:
    """(file name, title, markdown body without the page title) of one part."""
    name, title = PAGES[part]
    blocks = ["## Definition", *_intro(part), "## Derivations", SIZES]
    blocks += [_identity_section(v) for v in verdicts]
    return name, title, "\n\n".join(blocks)
