"""Every property can fail: each one rejects a deliberately wrong implementation.

A property that holds on a broken implementation checks nothing. Each case
below pairs a small NumPy ``Implementation`` with one bug (a softmax without
the mask, a context from the wrong row, a VJP with a term dropped, ...) and a
property that must find it within a capped, derandomized search
(``find_failure`` in conftest.py). The strict, minimal, correct NumPy
implementation passes every property: they are tied to MODEL.md, not to Numba.

Top half: attention-level mutants. Bottom half: model-level mutants.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnspec.spec.config import DTYPES, SCORES
from attnspec.spec.properties import REGISTRY, attention_vjp
from attnspec.spec.properties import attention as attention_properties
from attnspec.spec.protocol import Implementation

# -- attention-level mutants ------------------------------------------------------------

ATTENTION_PROPERTIES = attention_properties.PROPERTIES + attention_vjp.PROPERTIES


class NumpyAttention(Implementation):
    """A strict, minimal, correct NumPy attention step (MODEL.md), computed in the query's dtype.

    Each stage is a method, so that a mutant overrides exactly one of them.
    """

    name = "numpy reference"
    scores = SCORES
    dtypes = DTYPES

    def score_matrix(self, score, q, k, W_a, v_a):
        """e [B, S] = score(h, k_s)."""
        H = q.shape[1]
        if score == "dot":
            return np.einsum("bh,bsh->bs", q, k)
        if score == "scaled_dot":
            return np.einsum("bh,bsh->bs", q, k) / q.dtype.type(math.sqrt(H))
        if score == "general":
            return np.einsum("bsj,bj->bs", k, q @ W_a)                # h^T W_a k = (W_a^T h) . k
        return np.tanh(self.concat_z(q, k, W_a)) @ v_a                 # v_a . tanh(W_q h + W_k k)

    @staticmethod
    def concat_z(q, k, W_a):
        H = q.shape[1]
        return (q @ W_a[:, :H].T)[:, None, :] + k @ W_a[:, H:].T      # [B, S, H]

    def softmax(self, e, mask):
        """a = softmax over the valid positions, max subtracted; exactly 0 elsewhere."""
        e = np.where(mask, e, -np.inf)
        w = np.exp(e - e.max(axis=1, keepdims=True))                   # exp(-inf) = 0 exactly
        return w / w.sum(axis=1, keepdims=True)

    def context(self, a, k, e, mask):
        """ctx [B, H] = sum_s a_s k_s."""
        return np.einsum("bs,bsh->bh", a, k)

    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        e = self.score_matrix(score, query, keys, W_a, v_a)
        a = self.softmax(e, mask)
        return a, self.context(a, keys, e, mask)

    def score_backward(self, a, g):
        """dL/de_s = a_s (g_s - <a, g>)."""
        return a * (g - np.sum(a * g, axis=1, keepdims=True))

    def attention_vjp(self, score, query, keys, mask, g_ctx, W_a=None, v_a=None):
        q, k = query, keys
        B, S, H = k.shape
        a, _ = self.attention(score, q, k, mask, W_a, v_a)
        g = np.einsum("bsh,bh->bs", k, g_ctx)                           # dL/da_s = k_s . g_ctx
        de = self.score_backward(a, g)
        dk = self.keys_direct(a, g_ctx)                                 # ctx = sum_s a_s k_s
        grads = {"scores": de}
        if score in ("dot", "scaled_dot"):
            c = 1.0 if score == "dot" else 1 / math.sqrt(H)
            grads["query"] = c * np.einsum("bs,bsh->bh", de, k)
            grads["keys"] = dk + c * de[:, :, None] * q[:, None, :]
        elif score == "general":
            grads["query"] = np.einsum("bs,bsj->bj", de, k) @ W_a.T
            grads["keys"] = dk + de[:, :, None] * (q @ W_a)[:, None, :]
            grads["W_a"] = np.einsum("bs,bi,bsj->ij", de, q, k)
        else:
            u = np.tanh(self.concat_z(q, k, W_a))
            dz = de[:, :, None] * v_a * (1 - u * u)                     # [B, S, H]
            grads["query"] = dz.sum(axis=1) @ W_a[:, :H]
            grads["keys"] = dk + dz @ W_a[:, H:]
            grads["W_a"] = np.concatenate([np.einsum("bsi,bj->ij", dz, q), np.einsum("bsi,bsj->ij", dz, k)], 1)
            grads["v_a"] = np.einsum("bs,bsi->i", de, u)
        return grads

    def keys_direct(self, a, g_ctx):
        return a[:, :, None] * g_ctx[:, None, :]


class NotNormalised(NumpyAttention):
    name = "mutant: weights not normalised (exp(e - max) without the division)"

    def softmax(self, e, mask):
        e = np.where(mask, e, -np.inf)
        return np.exp(e - e.max(axis=1, keepdims=True))


class SoftmaxOverBatchAxis(NumpyAttention):
    name = "mutant: softmax over the batch axis"

    def softmax(self, e, mask):
        e = np.where(mask, e, -np.inf)
        with np.errstate(invalid="ignore"):  # a column masked in every row: -inf - -inf
            w = np.exp(e - e.max(axis=0, keepdims=True))
            return np.nan_to_num(w / w.sum(axis=0, keepdims=True))


class NoMask(NumpyAttention):
    name = "mutant: softmax without the mask"

    def softmax(self, e, mask):
        w = np.exp(e - e.max(axis=1, keepdims=True))
        return w / w.sum(axis=1, keepdims=True)


class EpsilonInDenominator(NumpyAttention):
    name = "mutant: a / (sum + 1e-10), a 'safety' epsilon"

    def softmax(self, e, mask):
        e = np.where(mask, e, -np.inf)
        w = np.exp(e - e.max(axis=1, keepdims=True))
        return w / (w.sum(axis=1, keepdims=True) + e.dtype.type(1e-10))


class NoMaxSubtraction(NumpyAttention):
    name = "mutant: softmax without subtracting the maximum"

    def softmax(self, e, mask):
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.where(mask, np.exp(e), 0)
            return w / w.sum(axis=1, keepdims=True)


class GeneralTransposed(NumpyAttention):
    name = "mutant: general score h^T W_a^T k"

    def score_matrix(self, score, q, k, W_a, v_a):
        if score == "general":
            return np.einsum("bsj,bj->bs", k, q @ W_a.T)
        return super().score_matrix(score, q, k, W_a, v_a)


class ScaledDotOverH(NumpyAttention):
    name = "mutant: scaled_dot divided by H instead of sqrt(H)"

    def score_matrix(self, score, q, k, W_a, v_a):
        if score == "scaled_dot":
            return np.einsum("bh,bsh->bs", q, k) / q.dtype.type(q.shape[1])
        return super().score_matrix(score, q, k, W_a, v_a)


class PositionBias(NumpyAttention):
    name = "mutant: scores biased by position (e_s + 0.1 s)"

    def score_matrix(self, score, q, k, W_a, v_a):
        e = super().score_matrix(score, q, k, W_a, v_a)
        return e + q.dtype.type(0.1) * np.arange(e.shape[1], dtype=q.dtype)


class DistanceScore(NumpyAttention):
    name = "mutant: dot score as -|h - k|^2 / 2"

    def score_matrix(self, score, q, k, W_a, v_a):
        if score == "dot":
            return -0.5 * np.sum((q[:, None, :] - k) ** 2, axis=2)
        return super().score_matrix(score, q, k, W_a, v_a)


class ContextOverPaddedKeys(NumpyAttention):
    name = "mutant: ctx from a softmax over every key, padded ones included"

    def context(self, a, k, e, mask):
        return np.einsum("bs,bsh->bh", NoMask.softmax(self, e, mask), k)


class ContextFromNextRow(NumpyAttention):
    name = "mutant: ctx from the keys of the next batch row"

    def context(self, a, k, e, mask):
        return np.einsum("bs,bsh->bh", a, np.roll(k, 1, axis=0))


class HardAttention(NumpyAttention):
    name = "mutant: one-hot argmax instead of softmax"

    def softmax(self, e, mask):
        e = np.where(mask, e, -np.inf)
        a = np.zeros_like(e)
        a[np.arange(e.shape[0]), e.argmax(axis=1)] = 1
        return a


class QueryBias(NumpyAttention):
    name = "mutant: a bias on the query, (h + 0.5) . k"

    def score_matrix(self, score, q, k, W_a, v_a):
        if score in ("dot", "scaled_dot", "general"):
            q = q + q.dtype.type(0.5)
        return super().score_matrix(score, q, k, W_a, v_a)


class VjpWithoutMeanTerm(NumpyAttention):
    name = "mutant: dL/de = a * g, the <a, g> term dropped"

    def score_backward(self, a, g):
        return a * g


class VjpKeysWithoutContextPath(NumpyAttention):
    name = "mutant: dL/dkeys without a_s g_ctx (only the path through the scores)"

    def keys_direct(self, a, g_ctx):
        return np.zeros(a.shape + g_ctx.shape[1:], g_ctx.dtype)


MUTANTS = [
    (NotNormalised, "weights_are_nonnegative_and_sum_to_one"),
    (SoftmaxOverBatchAxis, "weights_are_nonnegative_and_sum_to_one"),
    (NoMask, "masked_weights_are_exactly_zero"),
    (EpsilonInDenominator, "single_valid_position_gets_all_weight"),
    (NoMaxSubtraction, "attention_outputs_are_finite"),
    (GeneralTransposed, "weights_and_context_match_oracle"),
    (ScaledDotOverH, "weights_and_context_match_oracle"),
    (PositionBias, "weights_are_permutation_equivariant"),
    (DistanceScore, "softmax_is_shift_invariant"),
    (ContextOverPaddedKeys, "context_lies_in_convex_hull"),
    (ContextFromNextRow, "context_lies_in_convex_hull"),
    (ScaledDotOverH, "dominant_score_gives_one_hot_weights"),
    (HardAttention, "equal_scores_give_uniform_weights"),
    (QueryBias, "zero_query_gives_uniform_weights"),
    (VjpWithoutMeanTerm, "score_gradient_sums_to_zero"),
    (VjpKeysWithoutContextPath, "attention_vjp_matches_oracle"),
]


@pytest.mark.parametrize("mutant, name", MUTANTS, ids=[f"{n}-{m.__name__}" for m, n in MUTANTS])
def test_attention_property_fails_on_mutant(find_failure, mutant, name):
    find_failure(REGISTRY[name], mutant(), max_examples=100)


def test_every_attention_property_has_a_mutant():
    covered = {name for _, name in MUTANTS}
    missing = [p.name for p in ATTENTION_PROPERTIES if p.name not in covered]
    assert not missing, f"attention properties that no mutant shows failing: {missing}"


@pytest.mark.parametrize("name", [p.name for p in ATTENTION_PROPERTIES])
def test_numpy_reference_passes_attention_property(run_property, name):
    run_property(REGISTRY[name], NumpyAttention(), scale=0.5)


# -- model-level mutants (the other helper) --
# Each mutant is attnspec's correct Numba model (NumbaImplementation) with one
# method wrapped to make one mistake; the property next to it must find it.

import dataclasses  # noqa: E402

from attnspec.impl.adapter import NumbaImplementation  # noqa: E402
from attnspec.spec.properties import decoding, lstm, numerics  # noqa: E402
from attnspec.spec.properties import model as model_properties  # noqa: E402
from attnspec.spec.protocol import DecodeOutput, ForwardOutput  # noqa: E402


def _labels(tgt):
    return np.asarray(tgt)[:, 1:]


class LossOverAllPositions(NumbaImplementation):
    name = "mutant: loss averaged over every label position, PAD included"

    def _loss(self, log_probs, tgt):
        y = _labels(tgt)
        picked = np.take_along_axis(np.asarray(log_probs, np.float64), y[:, :, None], axis=2)
        return float(-picked.mean())

    def forward(self, params, config, src, src_len, tgt):
        f = super().forward(params, config, src, src_len, tgt)
        return f._replace(loss=self._loss(f.log_probs, tgt))

    def loss_and_grads(self, params, config, src, src_len, tgt):
        _, grads = super().loss_and_grads(params, config, src, src_len, tgt)
        return self._loss(super().forward(params, config, src, src_len, tgt).log_probs, tgt), grads


class SrcLenOfRowZero(NumbaImplementation):
    name = "mutant: every row masked with row 0's src_len"

    @staticmethod
    def _first(src_len):
        src_len = np.asarray(src_len)
        return np.full_like(src_len, src_len[0])

    def forward(self, params, config, src, src_len, tgt):
        return super().forward(params, config, src, self._first(src_len), tgt)

    def loss_and_grads(self, params, config, src, src_len, tgt):
        return super().loss_and_grads(params, config, src, self._first(src_len), tgt)


class OneGradientScaled(NumbaImplementation):
    name = "mutant: d loss / d decoder.lstm.weight_hh_l0 scaled by 1 + 1e-6"

    def loss_and_grads(self, params, config, src, src_len, tgt):
        loss, grads = super().loss_and_grads(params, config, src, src_len, tgt)
        grads["decoder.lstm.weight_hh_l0"] = grads["decoder.lstm.weight_hh_l0"] * (1 + 1e-6)
        return loss, grads


class HiddenBiasGradientDropped(NumbaImplementation):
    name = "mutant: d loss / d bias_hh returned as zero (the term through b_hh dropped)"

    def loss_and_grads(self, params, config, src, src_len, tgt):
        loss, grads = super().loss_and_grads(params, config, src, src_len, tgt)
        return loss, {n: np.zeros_like(g) if ".bias_hh_" in n else g for n, g in grads.items()}


class GreedySecondBestOnce(NumbaImplementation):
    name = "mutant: greedy takes the second-best token at the first step"

    def greedy_decode(self, params, config, src, src_len, max_len):
        # Greedy decoding written out over forward: one more input token per step.
        B = np.asarray(src).shape[0]
        tokens = np.full((B, max_len), config.pad_id)
        lengths = np.full(B, max_len)
        done = np.zeros(B, bool)
        for t in range(max_len):
            tgt = np.concatenate([np.full((B, 1), config.bos_id), tokens[:, :t], np.full((B, 1), config.eos_id)], 1)
            lp = self.forward(params, config, src, src_len, tgt).log_probs[:, t]
            choice = np.argsort(lp, axis=1, kind="stable")[:, -2 if t == 0 else -1]
            for b in np.flatnonzero(~done):
                tokens[b, t] = choice[b]
                if choice[b] == config.eos_id:
                    done[b], lengths[b] = True, t + 1
        tgt = np.concatenate([np.full((B, 1), config.bos_id), tokens, np.full((B, 1), config.eos_id)], 1)
        f = self.forward(params, config, src, src_len, tgt)
        emitted = np.arange(max_len)[None, :] < lengths[:, None]
        picked = np.take_along_axis(f.log_probs[:, :max_len], tokens[:, :, None], axis=2)[:, :, 0]
        return DecodeOutput(tokens, lengths, (picked * emitted).sum(axis=1),
                            f.attention[:, :max_len] * emitted[:, :, None])


class BeamRanksTheOtherWay(NumbaImplementation):
    name = "mutant: beam search ranks by score / length when asked for the summed score (and back)"

    def beam_search(self, params, config, src, src_len, beam_size, max_len, length_normalize=False):
        return super().beam_search(params, config, src, src_len, beam_size, max_len, not length_normalize)


class BeamReportsNormalisedScores(NumbaImplementation):
    name = "mutant: beam search reports score / length as the score"

    def beam_search(self, params, config, src, src_len, beam_size, max_len, length_normalize=False):
        out = super().beam_search(params, config, src, src_len, beam_size, max_len, length_normalize)
        return out._replace(scores=out.scores / out.lengths)


class Float16Path(NumbaImplementation):
    name = "mutant: the float32 path stores parameters and results in float16"

    @staticmethod
    def _half(x, config):
        return np.asarray(x).astype(np.float16).astype(np.float32) if config.dtype == "float32" else x

    def _params(self, params, config):
        return {n: self._half(v, config) for n, v in params.items()}

    def forward(self, params, config, src, src_len, tgt):
        f = super().forward(self._params(params, config), config, src, src_len, tgt)
        return ForwardOutput(float(self._half(f.loss, config)), self._half(f.log_probs, config),
                             self._half(f.attention, config))

    def loss_and_grads(self, params, config, src, src_len, tgt):
        loss, grads = super().loss_and_grads(self._params(params, config), config, src, src_len, tgt)
        return float(self._half(loss, config)), {n: self._half(g, config) for n, g in grads.items()}


class NoisyResults(NumbaImplementation):
    name = "mutant: log-probabilities carry a relative noise of 1e-15 that changes with every call"

    def forward(self, params, config, src, src_len, tgt):
        f = super().forward(params, config, src, src_len, tgt)
        noise = np.random.default_rng().normal(0, 1e-15, f.log_probs.shape)
        return f._replace(log_probs=(f.log_probs * (1 + noise)).astype(f.log_probs.dtype))


class LogSoftmaxWithoutMax(NumbaImplementation):
    name = "mutant: the generator's log-softmax without max-subtraction (exp overflows)"

    def forward(self, params, config, src, src_len, tgt):
        f = super().forward(params, config, src, src_len, tgt)
        # log_probs - min are the logits up to a shift (softmax cannot see it) and reach
        # the logits' range; the naive formula log(exp(l) / sum exp(l)) overflows there.
        logits = f.log_probs - f.log_probs.min(axis=2, keepdims=True)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            w = np.exp(logits)
            log_probs = np.log(w / w.sum(axis=2, keepdims=True))
        picked = np.take_along_axis(log_probs, _labels(tgt)[:, :, None], axis=2)[:, :, 0]
        mask = _labels(tgt) != config.pad_id
        return ForwardOutput(float(-picked[mask].sum() / mask.sum()), log_probs, f.attention)


class NumpyCell(NumbaImplementation):
    """The cell in NumPy, one activation per gate (correct as written here)."""

    name = "numpy cell"

    activations = ("sigmoid", "sigmoid", "tanh", "sigmoid")
    order = (0, 1, 2, 3)          # which quarter of z each of i, f, g, o reads

    def lstm_cell(self, x, h, c, W_ih, W_hh, b_ih, b_hh):
        z = x @ W_ih.T + h @ W_hh.T + b_ih + b_hh
        H = h.shape[1]
        act = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}
        with np.errstate(over="ignore"):
            i, f, g, o = (act[a](z[:, q * H:(q + 1) * H]) for a, q in zip(self.activations, self.order))
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new, np.concatenate([i, f, g, o], axis=1)


class InputGateTanh(NumpyCell):
    name = "mutant: the input gate uses tanh instead of the sigmoid"
    activations = ("tanh", "sigmoid", "tanh", "sigmoid")


class GatesIFSwapped(NumpyCell):
    name = "mutant: gates read in the order f, i, g, o (Keras/TensorFlow's order is i, f, c, o)"
    order = (1, 0, 2, 3)


MODEL_MUTANTS = [
    (LossOverAllPositions, "extra_pad_changes_no_real_value", 50),
    (SrcLenOfRowZero, "rows_do_not_depend_on_other_rows", 50),
    (OneGradientScaled, "gradients_match_the_oracle", 10),
    (HiddenBiasGradientDropped, "gradients_match_finite_differences", 40),
    (GreedySecondBestOnce, "greedy_emits_the_argmax_of_forward", 30),
    (GreedySecondBestOnce, "beam_of_width_one_is_greedy", 30),
    (BeamReportsNormalisedScores, "decoded_scores_and_attention_match_forward", 50),
    (BeamRanksTheOtherWay, "wide_beam_returns_the_best_sequence", 100),
    (Float16Path, "float32_agrees_with_float64", 50),
    (NoisyResults, "results_are_bit_identical", 20),
    (LogSoftmaxWithoutMax, "large_values_give_finite_results", 100),
    (InputGateTanh, "lstm_gates_and_state_are_bounded", 50),
    (GatesIFSwapped, "lstm_cell_matches_the_equations", 50),
]


@pytest.mark.parametrize("mutant, name, max_examples", MODEL_MUTANTS,
                         ids=[f"{n}-{m.__name__}" for m, n, _ in MODEL_MUTANTS])
def test_model_property_fails_on_mutant(find_failure, mutant, name, max_examples):
    # Without the pinned examples: the property's own search must find the mistake.
    find_failure(dataclasses.replace(REGISTRY[name], examples=()), mutant(), max_examples=max_examples)


def test_every_model_property_has_a_mutant():
    covered = {name for _, name, _ in MODEL_MUTANTS}
    missing = [p.name for module in (model_properties, decoding, numerics, lstm) for p in module.PROPERTIES
               if p.name not in covered]
    assert not missing, f"model properties that no mutant shows failing: {missing}"


@pytest.mark.parametrize("name", ["lstm_gates_and_state_are_bounded", "lstm_cell_matches_the_equations"])
def test_numpy_cell_passes_the_cell_properties(run_property, name):
    # The mutants' base cell is right: each cell mutant fails for its one change alone.
    run_property(REGISTRY[name], NumpyCell(), scale=0.5)
