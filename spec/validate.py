"""Argument checks shared by every public boundary (oracle, implementation, conformance kit).

Each check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (wrong
shape or value) with a message that starts with the argument's name, before
any numerical code can read out of bounds or return NaN silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .config import Config, attention_param_shapes, param_shapes


def _as_array(name: str, x) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: cannot be converted to an array ({exc})") from None


def all_finite(a: np.ndarray) -> bool:
    """True when every entry of the real array ``a`` is finite.

    A finite sum proves it (an infinity or a NaN anywhere makes the sum one), and
    ``np.sum`` is one vectorised pass with no temporary, 5-10x cheaper than
    ``np.isfinite(a).all()`` on the parameters and gradients of a large model;
    only a non-finite sum (maybe finite entries whose sum overflows) takes the
    exact test.
    """
    if a.dtype.kind != "f":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        # add.reduce is np.sum without its dispatch layers: this check runs on every
        # parameter at every call, and at small sizes those layers cost more than the sum
        if math.isfinite(np.add.reduce(a, axis=None)):
            return True
    return bool(np.isfinite(a).all())


def as_int_array(name: str, x, ndim: int) -> np.ndarray:
    """``x`` as an int64 array with ``ndim`` dimensions, or a clear error naming ``name``."""
    a = _as_array(name, x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {a.shape}")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:    # astype would wrap it
        i = tuple(int(j) for j in np.unravel_index(int(np.argmax(a)), a.shape))
        raise ValueError(f"{name}: {a[i]} at index {i} is beyond int64")
    return a.astype(np.int64)


def as_float_array(name: str, x, ndim: int, dtype=None) -> np.ndarray:
    """``x`` as a finite, C-contiguous float32/float64 array with ``ndim`` dimensions.

    With ``dtype``, the array must already have it: arguments of one call share
    one precision, and a silent cast would hide a float32/float64 mix-up.
    """
    a = _as_array(name, x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: dtype {a.dtype} differs from the other arguments' {np.dtype(dtype)}")
    if not all_finite(a):
        raise ValueError(f"{name}: contains NaN or infinity")
    return np.ascontiguousarray(a)


def src_len_from_mask(mask, B: int, S: int) -> np.ndarray:
    """src_len [B] from a prefix mask [B, S] (True at s < src_len[b]), or a clear error naming ``mask``."""
    mask = _as_array("mask", mask)
    if mask.dtype != bool:
        raise TypeError(f"mask: expected a bool array, got dtype {mask.dtype}")
    if mask.shape != (B, S):
        raise ValueError(f"mask: expected shape {(B, S)}, got {mask.shape}")
    src_len = mask.sum(axis=1)
    prefix = np.arange(S)[None, :] < src_len[:, None]
    if np.any(src_len < 1) or np.any(mask != prefix):
        b = int(np.argmax((src_len < 1) | np.any(mask != prefix, axis=1)))
        raise ValueError(f"mask: row {b} is not a non-empty prefix (True for s < src_len, then False)")
    return src_len.astype(np.int64)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (``max_len``, ``beam_size``...), or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def check_ids(name: str, ids: np.ndarray, vocab: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = np.argwhere((ids < 0) | (ids >= vocab))[0]
        raise ValueError(
            f"{name}: id {ids[tuple(bad)]} at index {tuple(int(i) for i in bad)} "
            f"is outside the vocabulary [0, {vocab})"
        )


def check_source(config: Config, src, src_len) -> tuple[np.ndarray, np.ndarray]:
    """Validate a source batch: ``src[B, S]`` ids and ``src_len[B]`` with 1 <= src_len <= S."""
    src = as_int_array("src", src, 2)
    B, S = src.shape
    if B < 1 or S < 1:
        raise ValueError(f"src: expected a non-empty [B, S] array, got shape {src.shape}")
    check_ids("src", src, config.V_src)
    src_len = as_int_array("src_len", src_len, 1)
    if src_len.shape != (B,):
        raise ValueError(f"src_len: expected shape ({B},) to match src, got {src_len.shape}")
    if src_len.min() < 1 or src_len.max() > S:
        b = int(np.argmax((src_len < 1) | (src_len > S)))
        raise ValueError(f"src_len: src_len[{b}] = {src_len[b]} is outside [1, S = {S}]")
    return src, src_len


def check_batch(config: Config, src, src_len, tgt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a training batch of MODEL.md.

    Parameters
    ----------
    src : int array [B, S]
    src_len : int array [B], 1 <= src_len <= S
    tgt : int array [B, T+1] with ``tgt[:, 0] == BOS`` and at least one label
        (``tgt[:, 1:]``) that is not PAD, so that the loss is defined.

    Returns
    -------
    (src, src_len, tgt) as int64 arrays.
    """
    src, src_len = check_source(config, src, src_len)
    tgt = as_int_array("tgt", tgt, 2)
    if tgt.shape[0] != src.shape[0]:
        raise ValueError(f"tgt: batch size {tgt.shape[0]} does not match src's {src.shape[0]}")
    if tgt.shape[1] < 2:
        raise ValueError(f"tgt: expected [B, T+1] with T >= 1, got shape {tgt.shape}")
    check_ids("tgt", tgt, config.V_tgt)
    if np.any(tgt[:, 0] != config.bos_id):
        b = int(np.argmax(tgt[:, 0] != config.bos_id))
        raise ValueError(f"tgt: tgt[{b}, 0] = {tgt[b, 0]} but every row must start with BOS = {config.bos_id}")
    if not np.any(tgt[:, 1:] != config.pad_id):
        raise ValueError("tgt: every label tgt[:, 1:] is PAD, so the loss (a mean over non-PAD labels) is undefined")
    return src, src_len, tgt


def check_params(params, config: Config, dtype=None, products_fit: bool = False) -> dict[str, np.ndarray]:
    """Validate a parameter dict against MODEL.md's names and shapes for ``config``.

    Every name must be present, no other name may be, each value must be a
    finite real array of the right shape. Returns a new dict of arrays in
    state-dict order, converted to ``dtype`` when given (else left as they are);
    finiteness is checked after the conversion, so a float64 1e300 bound for
    float32 is refused, not turned into infinity.

    With ``products_fit`` (float implementations; needs ``dtype``) each parameter
    must also satisfy ``products_fit_bound``, so that no matrix product of the
    model can overflow ``dtype``.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of name -> array, got {type(params).__name__}")
    shapes = param_shapes(config)
    missing = [n for n in shapes if n not in params]
    unexpected = [n for n in params if n not in shapes]
    if missing or unexpected:
        raise ValueError(
            f"params: names do not match MODEL.md for score={config.score!r}, L={config.L}, "
            f"input_feeding={config.input_feeding}: missing {missing}, unexpected {unexpected}"
        )
    bound = products_fit_bound(config, dtype) if products_fit else None
    out = {}
    for name, shape in shapes.items():
        a = _as_array(f"params[{name!r}]", params[name])
        if a.dtype.kind not in "fiu":                 # float, signed or unsigned int (not bool)
            raise TypeError(f"params[{name!r}]: expected a real array, got dtype {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}, got {a.shape}")
        given = a
        if dtype is not None:
            with np.errstate(over="ignore"):          # reported below, naming the parameter
                a = np.ascontiguousarray(a, dtype=dtype)
        # A finite sum of squares proves every entry finite: the bound's test costs no extra pass.
        if bound is not None and _sum_of_squares(a) <= bound * bound:
            out[name] = a
            continue
        if not all_finite(given):
            raise ValueError(f"params[{name!r}]: contains NaN or infinity")
        if not all_finite(a):
            raise ValueError(f"params[{name!r}]: values up to {float(np.max(np.abs(given))):.3g} "
                             f"are beyond the range of {a.dtype} (largest {float(np.finfo(a.dtype).max):.3g})")
        if bound is not None:
            raise ValueError(
                f"params[{name!r}]: too large for {a.dtype}: its 2-norm exceeds {bound:.3g} (largest entry "
                f"{float(np.max(np.abs(a))):.3g}), beyond which a matrix product of the model could overflow to infinity "
                f"and the gates' sigmoid and tanh would turn it into a wrong, finite result (docs/decisions.md)")
        out[name] = a
    return out


def products_fit_bound(config: Config, dtype) -> float:
    """The largest 2-norm a parameter may have so that no matrix product of the model overflows ``dtype``.

    Every product multiplies a parameter by a parameter (an embedding row by
    W_ih of layer 0) or by values bounded by 1 (h, h~, ctx, the keys, tanh of
    anything), over K <= E + 2H terms plus a bias. With every entry at most
    M = sqrt(max / (4 (E + 2H + 1))), a pre-activation is at most
    (E + 2H + 1) M^2 = max / 4, and the general score's h^T W_a k, at most H^2 M,
    stays far below. A 2-norm bounds every entry; the factor 4 also covers the
    rounding of the sum of squares that measures it. Overflow in the backward pass
    needs no bound: no backward operation turns an infinity back into a finite
    number, so the checks of the results report it.
    """
    if dtype is None:
        raise ValueError("dtype: products_fit needs the dtype the products run in")
    terms = config.E + 2 * config.H + 1
    return math.sqrt(float(np.finfo(dtype).max) / (4 * terms))


def _sum_of_squares(a: np.ndarray) -> float:
    """sum(a**2) in one BLAS pass (``vdot``), in a's dtype: infinite when that overflows."""
    flat = a.reshape(-1)
    if flat.dtype.kind != "f":
        flat = flat.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.vdot(flat, flat))


def check_attention_params(score: str, H: int, W_a, v_a, as_array):
    """Check that ``W_a`` and ``v_a`` are given exactly when ``score`` uses them, with its shapes.

    ``as_array(name, value, ndim)`` converts a given value (each caller keeps
    its own number type: floats of the query's dtype, or the oracle's mpf).
    Returns ``(W_a, v_a)`` converted, or None where the score has no such parameter.
    """
    needed = attention_param_shapes(score, H)
    given = {"W_a": W_a, "v_a": v_a}
    for name, value in given.items():
        if name not in needed:
            if value is not None:
                raise ValueError(f"{name}: score {score!r} has no parameter {name}")
            continue
        if value is None:
            raise ValueError(f"{name}: score {score!r} needs {name} of shape {needed[name]}")
        given[name] = as_array(name, value, len(needed[name]))
        if given[name].shape != needed[name]:
            raise ValueError(f"{name}: expected shape {needed[name]}, got {given[name].shape}")
    return given["W_a"], given["v_a"]
