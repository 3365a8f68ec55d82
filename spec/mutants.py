"""The catalogue of deliberately broken implementations: proof that the conformance kit catches bugs.

Each mutant is ``NumpyReference`` (spec.reference) with exactly one defect
switched on at the line where a person writing attention seq2seq would make
that mistake (search ``reference_ops.py`` / ``reference_model.py`` for the
name). ``attnspec check`` must fail every one of them and pass ``CORRECT``.

Public API
----------
MUTANTS : dict name -> one-line description of the mistake
WHERE : dict name -> the function the defect lives in
mutant(name) -> Implementation named ``"mutant:<name>"``
CORRECT : the correct ``NumpyReference``

Examples
--------
>>> mutant("mask_ignored").name
'mutant:mask_ignored'
>>> len(MUTANTS) >= 12
True
"""

from __future__ import annotations

from .protocol import Implementation

__all__ = ["MUTANTS", "WHERE", "mutant", "CORRECT"]

# name: (description, where it lives)
_CATALOGUE: dict[str, tuple[str, str]] = {
    # attention
    "mask_ignored": (
        "the source mask is ignored: PAD positions past src_len get attention weight",
        "reference_ops.masked_softmax"),
    "softmax_wrong_axis": (
        "the attention softmax normalises over the batch axis instead of the source positions",
        "reference_ops.masked_softmax (and its backward)"),
    "softmax_no_max_subtraction": (
        "the attention softmax skips the max-subtraction, so exp overflows to NaN at large scores",
        "reference_ops.masked_softmax"),
    "scaled_dot_by_H": (
        "scaled_dot divides the scores by H instead of sqrt(H)",
        "reference_ops.scores (and its backward)"),
    "general_W_a_transposed": (
        "general scores with W_a transposed: k^T W_a h instead of h^T W_a k",
        "reference_ops.scores (and its backward)"),
    "concat_order_swapped": (
        "concat scores apply W_a to [k; h] instead of [h; k]",
        "reference_ops.scores (and its backward)"),
    "query_from_bottom_layer": (
        "the attention query is the bottom decoder layer's h instead of the top layer's",
        "reference_model.decoder_step (and its backward)"),
    "W_c_order_swapped": (
        "the attentional state applies W_c to [h; ctx] instead of [ctx; h]",
        "reference_ops.attentional_state (and its backward)"),
    # attention backward
    "softmax_vjp_mean_dropped": (
        "the softmax backward drops the -<a, g> term: dL/de = a * g instead of a * (g - <a, g>)",
        "reference_ops.masked_softmax_backward"),
    "attention_keys_grad_dropped": (
        "the attention backward forgets the keys' gradient through the scores (keeps only ctx's)",
        "reference_ops.scores_backward"),
    "tanh_grad_one_minus_tanh": (
        "the backward of h~ = tanh(.) uses 1 - tanh instead of 1 - tanh^2",
        "reference_ops.attentional_state_backward"),
    # LSTM and recurrence
    "lstm_gate_order_figo": (
        "the LSTM reads its gates in the order f, i, g, o instead of PyTorch's i, f, g, o",
        "reference_ops.gate_blocks"),
    "bias_hh_grad_missing": (
        "the LSTM backward returns a zero gradient for bias_hh (only bias_ih gets dz)",
        "reference_ops.lstm_cell_backward"),
    "encoder_not_frozen": (
        "the encoder keeps running over PAD past src_len instead of freezing its state",
        "reference_model.encode"),
    "decoder_init_zeros": (
        "the decoder starts from zeros instead of the encoder's final (h, c)",
        "reference_model.decoder_init"),
    "input_feeding_missing": (
        "input feeding is missing: every decoder input carries h~_0 = 0 instead of h~_{t-1}",
        "reference_model.next_feed"),
    "input_feeding_raw_h": (
        "input feeding carries the previous raw decoder h_{t-1} instead of h~_{t-1}",
        "reference_model.next_feed"),
    # loss and decoding
    "loss_over_all_positions": (
        "the loss is averaged over all positions, PAD labels included, instead of the non-PAD ones",
        "reference_model.run"),
    "greedy_feeds_wrong_token": (
        "greedy decoding feeds BOS again at every step instead of the token it just emitted",
        "reference_model.greedy"),
}

MUTANTS: dict[str, str] = {name: description for name, (description, _) in _CATALOGUE.items()}
"""Every deliberate defect: name -> the mistake a real person makes, in one line."""

WHERE: dict[str, str] = {name: where for name, (_, where) in _CATALOGUE.items()}
"""Every deliberate defect: name -> the function of spec.reference_ops / reference_model it lives in."""


def mutant(name: str) -> Implementation:
    """``NumpyReference`` with the one defect ``name`` switched on, named ``"mutant:<name>"``."""
    from .reference import NumpyReference

    if name not in MUTANTS:
        raise ValueError(f"name: unknown mutant {name!r}; expected one of {sorted(MUTANTS)}")
    return NumpyReference(bugs=(name,))


def _correct() -> Implementation:
    from .reference import NumpyReference

    return NumpyReference()


CORRECT = _correct()
"""The correct reference, for ``attnspec check`` to pass."""
