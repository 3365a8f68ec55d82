"""Check your own attention code with attnspec's properties, inside your own pytest suite.

A tiny NumPy implementation of MODEL.md's attention step (``dot`` and
``scaled_dot`` scores), wrapped in the protocol of ``attnspec.spec.protocol``,
then checked three ways:

1. one property as an ordinary Hypothesis test, with attnspec's strategies;
2. a check function called on an example you build yourself (a pinned case);
3. every registered property that applies, through the same runner as
   ``attnspec check`` (unsupported methods and scores are skipped, not passed).

Run it with ``pytest docs/examples/test_my_attention.py``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

from attnspec.spec.conformance import runner
from attnspec.spec.properties import REGISTRY
from attnspec.spec.properties.attention import masked_weights_are_exactly_zero
from attnspec.spec.protocol import Implementation
from attnspec.spec.strategies import AttentionCase, attention_examples


def my_attention(query, keys, mask, scale=1.0):
    """e = K h / scale, a = softmax over the valid positions, ctx = a K.  (B, H), (B, S, H), (B, S)."""
    e = np.einsum("bh,bsh->bs", query, keys) / scale
    e = np.where(mask, e, -np.inf)                  # masked positions get exp(-inf) = 0
    w = np.exp(e - e.max(axis=1, keepdims=True))    # subtract the row max: no overflow
    w = w / w.sum(axis=1, keepdims=True)
    return w, np.einsum("bs,bsh->bh", w, keys)


class MyAttention(Implementation):
    """The adapter: what the properties call. Only ``attention`` is provided."""

    name = "my NumPy attention"
    scores = ("dot", "scaled_dot")          # the properties draw only these
    dtypes = ("float64", "float32")

    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        scale = np.sqrt(query.shape[1]) if score == "scaled_dot" else 1.0
        w, ctx = my_attention(query, keys, mask, scale)
        return w.astype(query.dtype), ctx.astype(query.dtype)


IMPL = MyAttention()


# 1. One property, as a Hypothesis test: its own strategy, restricted to what IMPL supports.
SUM_TO_ONE = REGISTRY["weights_are_nonnegative_and_sum_to_one"]


@settings(max_examples=50, deadline=None)
@given(SUM_TO_ONE.strategy(IMPL))
def test_weights_are_nonnegative_and_sum_to_one(example):
    SUM_TO_ONE.check(IMPL, example)


# Or the strategies alone, with your own assertion.
@settings(max_examples=50, deadline=None)
@given(attention_examples(IMPL, kinds=("random", "single")))
def test_context_has_the_query_shape(case):
    _, ctx = IMPL.attention(case.score, case.query, case.keys, case.mask)
    assert ctx.shape == case.query.shape and ctx.dtype == case.query.dtype


# 2. A check function on a case you pin (for example one ``attnspec check`` printed).
def test_masked_weights_are_exactly_zero_on_a_pinned_case():
    case = AttentionCase(score="dot", query=np.array([[0.7, 0.3]]),
                         keys=np.array([[[0.8, 0.2], [5.0, 5.0]]]), mask=np.array([[True, False]]))
    masked_weights_are_exactly_zero(IMPL, case)


# 3. Every property that applies, with the runner of ``attnspec check``.
def test_every_applicable_property_holds():
    results = runner.run_suite(IMPL, max_examples=20, progress=None)
    failures = [f"{r.name}: {r.message}\n{r.snippet}" for r in results if r.failed]
    assert not failures, "\n\n".join(failures)
    assert any(r.status == runner.PASS for r in results)
