"""Hypothesis strategies for attention seq2seq: configurations, parameters, batches, attention inputs.

The one module of strategies that the properties (``spec.properties``), the
tests and anyone's own test file draw their examples from. Every strategy
makes inputs of MODEL.md's form (parameter names of ``spec.config``, PAD/BOS/EOS
layout, prefix masks), small by default so that an example costs
milliseconds; the sizes are keyword arguments.

Model level
-----------
configs(scores=None, dtypes=None, *, max_L=3, max_E=4, max_H=4, max_V=8, input_feeding=None)
params_for(config, *, scale=0.5)
batches(config, *, max_B=3, max_S=5, max_T=5)
model_cases(scores=None, dtypes=None, *, max_L=3, max_E=4, max_H=4, max_V=8, input_feeding=None,
            max_B=3, max_S=5, max_T=5, scale=0.5)  -> ModelCase(config, params, src, src_len, tgt)
model_cases_for(impl, **kwargs)                    -> model_cases restricted to what impl supports

Attention level
---------------
attention_cases(scores=None, dtypes=None, *, max_B=3, max_S=6, max_H=4, kinds=KINDS, max_long_S=512)
    -> AttentionCase(score, query, keys, mask, W_a, v_a)
attention_examples(impl, **kwargs)                 -> attention_cases restricted to what impl supports
prefix_masks(B, S, *, single=False)                -> bool [B, S], a non-empty prefix per row

Examples
--------
>>> from hypothesis import given, settings
>>> @settings(max_examples=5, deadline=None)
... @given(model_cases(scores=("dot",), dtypes=("float64",)))
... def test(case):
...     config, params, src, src_len, tgt = case
...     assert (tgt[:, 0] == config.bos_id).all() and (src_len >= 1).all()
>>> test()
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .config import BASELINE, DTYPES, SCORES, Config, param_shapes

__all__ = [
    "KINDS", "MAX_ABS_SCORE", "AttentionCase", "ModelCase",
    "configs", "params_for", "batches", "model_cases", "model_cases_for",
    "prefix_masks", "integer_arrays", "attention_cases", "attention_examples",
]

MAX_ABS_SCORE = 1e4
"""The largest |score| the adversarial attention inputs reach (issue 4: |score| up to 1e4)."""

KINDS = ("random", "large", "ties", "near_ties", "single", "long")
"""Kinds of attention inputs; Hypothesis shrinks towards the first.

random     grid values in [-4, 4] (multiples of 2^-6: exact in float32, so sums of a
           few of them are exact too, which the shift property relies on)
large      the query (concat: v_a) rescaled so that max |score| is between 10 and 1e4
ties       several valid keys are the same vector, so their scores tie exactly
near_ties  as ties, then one coordinate of each copy moved by one ulp
single     at least one row with a single valid position (src_len = 1)
long       S between 64 and ``max_long_S`` (512 by default), one or two rows
"""

_GRID = 64  # values are integers / 64: exact in float32 and float64


class ModelCase(NamedTuple):
    """One model-level example: unpack as ``config, params, src, src_len, tgt``."""

    config: Config
    params: dict
    src: np.ndarray
    src_len: np.ndarray
    tgt: np.ndarray


class AttentionCase(NamedTuple):
    """One attention-level example, in the argument order of ``Implementation.attention``.

    Attributes
    ----------
    score : str
    query : [B, H];  keys : [B, S, H], both of one float dtype
    mask : bool [B, S], a non-empty prefix per row
    W_a : [H, H] (general), [H, 2H] (concat) or None;  v_a : [H] (concat) or None
    """

    score: str
    query: np.ndarray
    keys: np.ndarray
    mask: np.ndarray
    W_a: np.ndarray | None = None
    v_a: np.ndarray | None = None

    @property
    def src_len(self) -> np.ndarray:
        """Valid positions per row, [B]."""
        return self.mask.sum(axis=1)

    @property
    def dtype(self) -> np.dtype:
        return self.query.dtype

    def replace(self, **changes) -> "AttentionCase":
        return self._replace(**changes)

    def __repr__(self) -> str:  # Hypothesis prints falsifying examples with this: make it runnable
        def arr(a):
            return "None" if a is None else f"np.array({a.tolist()!r}, dtype=np.{a.dtype})"
        return (f"AttentionCase(score={self.score!r}, query={arr(self.query)}, keys={arr(self.keys)}, "
                f"mask={arr(self.mask)}, W_a={arr(self.W_a)}, v_a={arr(self.v_a)})")


# -- argument checks --------------------------------------------------------------

def _subset(name: str, given, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if given is None:
        return allowed
    if isinstance(given, str):
        given = (given,)
    given = tuple(given)
    bad = [x for x in given if x not in allowed]
    if bad or not given:
        raise ValueError(f"{name}: expected a non-empty subset of {allowed}, got {given!r}")
    return given


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


# -- model level ------------------------------------------------------------------

def configs(scores=None, dtypes=None, *, max_L: int = 3, max_E: int = 4, max_H: int = 4, max_V: int = 8,
            input_feeding=None) -> st.SearchStrategy[Config]:
    """Configurations of MODEL.md, small by default.

    Parameters
    ----------
    scores : iterable of str, optional
        Score functions to draw from; default every one of ``SCORES`` and the
        baseline ``"none"``.
    dtypes : iterable of str, optional
        Default ``("float64", "float32")``.
    max_L, max_E, max_H : int
        L in 1..max_L (default 1..3), E and H in 1..max_E / 1..max_H.
    max_V : int
        V_src and V_tgt in 4..max_V (>= 4: PAD, BOS, EOS and one ordinary token).
    input_feeding : bool, optional
        Fixed, or drawn (default).

    Returns
    -------
    SearchStrategy of Config, shrinking towards the first score and dtype, L = 1 and sizes 1.
    """
    scores = _subset("scores", scores, SCORES + (BASELINE,))
    dtypes = _subset("dtypes", dtypes, DTYPES)
    max_L, max_E, max_H = (_positive(n, v) for n, v in (("max_L", max_L), ("max_E", max_E), ("max_H", max_H)))
    max_V = _positive("max_V", max_V, 4)
    if input_feeding is not None and not isinstance(input_feeding, bool):
        raise ValueError(f"input_feeding: expected True, False or None, got {input_feeding!r}")
    feeding = st.just(input_feeding) if input_feeding is not None else st.booleans()
    return st.builds(
        Config,
        V_src=st.integers(4, max_V), V_tgt=st.integers(4, max_V),
        E=st.integers(1, max_E), H=st.integers(1, max_H), L=st.integers(1, max_L),
        score=st.sampled_from(scores), input_feeding=feeding, dtype=st.sampled_from(dtypes),
    )


def params_for(config: Config, *, scale: float = 0.5) -> st.SearchStrategy[dict]:
    """Parameter sets for ``config``: every name of ``param_shapes(config)``, N(0, scale^2) entries.

    The entries come from a NumPy generator seeded by a drawn integer: an
    example costs one draw however many parameters there are, and shrinking
    goes to seed 0 (one fixed, ordinary parameter set). Arrays are in
    ``config.dtype``.

    Parameters
    ----------
    config : Config
    scale : float
        Standard deviation of the entries (> 0).

    Examples
    --------
    >>> from hypothesis import find
    >>> cfg = Config(V_src=5, V_tgt=5, E=2, H=3, score="general")
    >>> p = find(params_for(cfg), lambda p: True)
    >>> p["attention.W_a"].shape, p["attention.W_a"].dtype
    ((3, 3), dtype('float64'))
    """
    if not isinstance(config, Config):
        raise ValueError(f"config: expected a Config, got {type(config).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < np.inf:
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    shapes = param_shapes(config)

    def make(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {n: (scale * rng.standard_normal(s)).astype(config.dtype) for n, s in shapes.items()}

    return st.integers(0, 2**32 - 1).map(make)


def _ordinary_ids(V: int, specials: tuple[int, ...]) -> np.ndarray:
    return np.array([i for i in range(V) if i not in specials])


def batches(config: Config, *, max_B: int = 3, max_S: int = 5, max_T: int = 5) -> st.SearchStrategy[tuple]:
    """Ragged batches of MODEL.md's form for ``config``: ``(src, src_len, tgt)``.

    src [B, S]: src_len[b] in 1..S ordinary ids (never PAD), then PAD.
    tgt [B, T+1]: BOS, then n_b - 1 ordinary ids (never PAD, BOS or EOS), then
    EOS at position n_b (1 <= n_b <= T), then PAD. src_len and the target
    lengths vary per row; some batch may have no row of full length, so extra
    PAD columns appear too.

    Examples
    --------
    >>> from hypothesis import find
    >>> cfg = Config(V_src=5, V_tgt=5, E=2, H=2)
    >>> src, src_len, tgt = find(batches(cfg), lambda b: b[0].shape[0] == 2 and b[1][0] != b[1][1])
    >>> bool((src[0, src_len[0]:] == cfg.pad_id).all() and (tgt[:, 0] == cfg.bos_id).all())
    True
    """
    if not isinstance(config, Config):
        raise ValueError(f"config: expected a Config, got {type(config).__name__}")
    max_B, max_S, max_T = (_positive(n, v) for n, v in (("max_B", max_B), ("max_S", max_S), ("max_T", max_T)))
    src_ids = _ordinary_ids(config.V_src, (config.pad_id,))
    tgt_ids = _ordinary_ids(config.V_tgt, (config.pad_id, config.bos_id, config.eos_id))

    @st.composite
    def draw_batch(draw):
        B, S, T = draw(st.integers(1, max_B)), draw(st.integers(1, max_S)), draw(st.integers(1, max_T))
        # Lengths as S (T) minus a shortfall, before the ids: see prefix_masks.
        src_len = S - draw(integer_arrays(B, 0, S - 1))
        n_labels = T - draw(integer_arrays(B, 0, T - 1))  # the position of EOS
        src = src_ids[draw(integer_arrays((B, S), 0, len(src_ids) - 1))]
        tgt = tgt_ids[draw(integer_arrays((B, T + 1), 0, len(tgt_ids) - 1))]
        positions = np.arange(S)[None, :]
        src[positions >= src_len[:, None]] = config.pad_id
        steps = np.arange(T + 1)[None, :]
        tgt[:, 0] = config.bos_id
        tgt[steps == n_labels[:, None]] = config.eos_id
        tgt[steps > n_labels[:, None]] = config.pad_id
        return src, src_len, tgt

    return draw_batch()


def model_cases(scores=None, dtypes=None, *, max_L: int = 3, max_E: int = 4, max_H: int = 4, max_V: int = 8,
                input_feeding=None, max_B: int = 3, max_S: int = 5, max_T: int = 5,
                scale: float = 0.5) -> st.SearchStrategy[ModelCase]:
    """Whole model-level examples: ``ModelCase(config, params, src, src_len, tgt)``.

    The keyword arguments are those of ``configs``, ``batches`` and ``params_for``.
    """
    config_strategy = configs(scores, dtypes, max_L=max_L, max_E=max_E, max_H=max_H, max_V=max_V,
                              input_feeding=input_feeding)

    @st.composite
    def draw_case(draw):
        config = draw(config_strategy)
        params = draw(params_for(config, scale=scale))
        src, src_len, tgt = draw(batches(config, max_B=max_B, max_S=max_S, max_T=max_T))
        return ModelCase(config, params, src, src_len, tgt)

    return draw_case()


def _supported(impl, scores, dtypes, allowed_scores):
    """Scores and dtypes both requested and supported by ``impl`` (empty tuples when none)."""
    wanted = _subset("scores", scores, allowed_scores)
    impl_scores = tuple(getattr(impl, "scores", SCORES + (BASELINE,)))
    impl_dtypes = tuple(getattr(impl, "dtypes", DTYPES))
    return (tuple(s for s in wanted if s in impl_scores),
            tuple(d for d in _subset("dtypes", dtypes, DTYPES) if d in impl_dtypes))


def model_cases_for(impl, scores=None, dtypes=None, **kwargs) -> st.SearchStrategy[ModelCase]:
    """``model_cases`` restricted to the scores and dtypes ``impl`` supports (``st.nothing()`` if none)."""
    scores, dtypes = _supported(impl, scores, dtypes, SCORES + (BASELINE,))
    if not scores or not dtypes:
        return st.nothing()
    return model_cases(scores, dtypes, **kwargs)


# -- attention level ---------------------------------------------------------------

def prefix_masks(B: int, S: int, *, single: bool = False) -> st.SearchStrategy[np.ndarray]:
    """bool [B, S] masks of MODEL.md: True for s < src_len[b], 1 <= src_len[b] <= S.

    With ``single=True`` row 0 has exactly one valid position. Shrinks towards full rows.
    """
    B, S = _positive("B", B), _positive("S", S)

    def make(src_len):
        if single:
            src_len = src_len.copy()
            src_len[0] = 1
        return np.arange(S)[None, :] < src_len[:, None]

    # Drawn as S minus a shortfall: Hypothesis favours small draws, and a full row of S valid
    # positions is a more useful default (and shrink target) than a single one ("single" has those).
    return integer_arrays(B, 0, S - 1).map(lambda short: make(S - short))


def integer_arrays(shape, min_value: int, max_value: int) -> st.SearchStrategy[np.ndarray]:
    """int64 arrays whose every entry is drawn from [min_value, max_value].

    ``hypothesis.extra.numpy.arrays`` by default fills most entries of a larger
    array with one repeated value; for attention inputs that made most key sets
    constant (and most masks a single position), so every entry is drawn here.
    """
    return hnp.arrays(np.int64, shape, elements=st.integers(min_value, max_value), fill=st.nothing())


def _grid(shape, bound: int = 256):
    """Arrays of integers in [-bound, bound] / 64 (float64, exact in float32)."""
    return integer_arrays(shape, -bound, bound).map(lambda a: a / _GRID)


def _scores64(score, query, keys, W_a, v_a) -> np.ndarray:
    """Scores [B, S] in float64, to steer the adversarial kinds (the strategy, not a reference)."""
    q, k = query.astype(np.float64), keys.astype(np.float64)
    if score == "dot":
        return np.einsum("bh,bsh->bs", q, k)
    if score == "scaled_dot":
        return np.einsum("bh,bsh->bs", q, k) / np.sqrt(q.shape[1])
    if score == "general":
        return np.einsum("bi,ij,bsj->bs", q, W_a.astype(np.float64), k)
    H = q.shape[1]
    z = (q @ W_a[:, :H].T.astype(np.float64))[:, None, :] + k @ W_a[:, H:].T.astype(np.float64)
    return np.tanh(z) @ v_a.astype(np.float64)


def attention_cases(scores=None, dtypes=None, *, max_B: int = 3, max_S: int = 6, max_H: int = 4,
                    kinds=KINDS, max_long_S: int = 512) -> st.SearchStrategy[AttentionCase]:
    """Inputs of one attention step, ordinary and adversarial (see ``KINDS``).

    Parameters
    ----------
    scores : iterable of str, optional
        Subset of ``SCORES`` (default all four; the baseline has no attention).
    dtypes : iterable of str, optional
    max_B, max_S, max_H : int
        Sizes of every kind but ``long``: B in 1..max_B, S in 1..max_S, H in 1..max_H.
    kinds : iterable of str
        Subset of ``KINDS``.
    max_long_S : int
        Largest S of the ``long`` kind (>= 64).

    Returns
    -------
    SearchStrategy of AttentionCase, every value finite, |score| <= MAX_ABS_SCORE.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(attention_cases(("dot",), kinds=("single",)), lambda c: True)
    >>> int(case.src_len[0])
    1
    """
    scores = _subset("scores", scores, SCORES)
    dtypes = _subset("dtypes", dtypes, DTYPES)
    kinds = _subset("kinds", kinds, KINDS)
    max_B, max_S, max_H = (_positive(n, v) for n, v in (("max_B", max_B), ("max_S", max_S), ("max_H", max_H)))
    max_long_S = _positive("max_long_S", max_long_S, 64)

    @st.composite
    def draw_case(draw):
        score, dtype, kind = draw(st.sampled_from(scores)), draw(st.sampled_from(dtypes)), draw(st.sampled_from(kinds))
        H = draw(st.integers(1, max_H))
        if kind == "long":
            B, S = draw(st.integers(1, 2)), draw(st.integers(64, max_long_S))
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # thousands of entries: one draw
            query = np.round(rng.uniform(-4, 4, (B, H)) * _GRID) / _GRID
            keys = np.round(rng.uniform(-4, 4, (B, S, H)) * _GRID) / _GRID
        else:
            B, S = draw(st.integers(1, max_B)), draw(st.integers(1, max_S))
            # The mask first: drawn after B * S * H values it came out a single position 3 times in 4.
            mask = draw(prefix_masks(B, S, single=(kind == "single")))
            query, keys = draw(_grid((B, H))), draw(_grid((B, S, H)))
        if kind == "long":
            mask = draw(prefix_masks(B, S))
        W_a = v_a = None
        if score == "general":
            W_a = draw(_grid((H, H), 64))
        elif score == "concat":
            W_a, v_a = draw(_grid((H, 2 * H), 64)), draw(_grid((H,), 256))
        if kind in ("ties", "near_ties"):
            # Each key of a row is one of a few distinct vectors: many exact ties.
            n_distinct = draw(st.integers(1, max(1, S // 2)))
            pattern = draw(integer_arrays(S, 0, n_distinct - 1))
            keys = keys[:, pattern, :]
        keys = keys.astype(dtype)
        if kind == "near_ties":
            # Copies of an earlier key move by one ulp in one coordinate: scores differ in the last bits.
            j = draw(st.integers(0, H - 1))
            for s in range(1, S):
                if np.any(pattern[:s] == pattern[s]):
                    keys[:, s, j] = np.nextafter(keys[:, s, j], np.asarray(np.inf, dtype))
        if kind == "large":
            e = np.where(mask, np.abs(_scores64(score, query, keys, W_a, v_a)), 0.0)
            assume(e.max() > 0)  # an all-zero score row cannot be scaled up
            # scores are linear in the query (concat: in v_a); 1 - 1e-3 keeps rounding under 1e4
            target = draw(st.floats(10.0, MAX_ABS_SCORE * (1 - 1e-3)))
            if score == "concat":
                v_a = v_a * (target / e.max())
            else:
                query = query * (target / e.max())
        cast = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return AttentionCase(score, cast(query), cast(keys), mask, cast(W_a), cast(v_a))

    return draw_case()


def attention_examples(impl, scores=None, dtypes=None, **kwargs) -> st.SearchStrategy[AttentionCase]:
    """``attention_cases`` restricted to the scores and dtypes ``impl`` supports.

    Returns ``st.nothing()`` when ``impl`` supports none of the requested ones
    (a runner should then skip, not pass, the property).
    """
    scores, dtypes = _supported(impl, scores, dtypes, SCORES)
    if not scores or not dtypes:
        return st.nothing()
    return attention_cases(scores, dtypes, **kwargs)
