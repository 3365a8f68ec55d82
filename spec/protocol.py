"""The implementation protocol: what the properties and the conformance kit ask of a model.

The properties of ``attnspec.spec.properties`` take an ``Implementation`` as
their argument and never reach inside it, so the same code checks attnspec's
Numba model, the bundled PyTorch model, or anyone's own code through a small
adapter. Subclass ``Implementation`` and override what your code can do; a
method left as it is raises ``NotImplementedError`` and the properties that
need it are skipped (reported as such, never as passed).

Arrays go in and come out as NumPy arrays in the configuration's dtype
(``config.dtype``; ``attention`` takes the dtype of ``query``). Parameters
are dicts keyed by MODEL.md's names (``spec.config.param_shapes``).

Example
-------
An adapter around a PyTorch attention function ``my_attention(q, k, mask)``::

    class Mine(Implementation):
        name = "mine"
        scores = ("dot",)

        def attention(self, score, query, keys, mask, W_a=None, v_a=None):
            w, c = my_attention(torch.from_numpy(query), torch.from_numpy(keys),
                                torch.from_numpy(mask))
            return w.numpy(), c.numpy()
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import BASELINE, DTYPES, SCORES


class ForwardOutput(NamedTuple):
    """loss (scalar), log_probs [B, T, V_tgt], attention [B, T, S] (zeros for the baseline)."""

    loss: float
    log_probs: np.ndarray
    attention: np.ndarray


class DecodeOutput(NamedTuple):
    """tokens [B, max_len] (PAD after ``lengths``), lengths [B] (EOS counted when emitted),
    scores [B] (summed log-probabilities of the emitted tokens), attention [B, max_len, S]."""

    tokens: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    attention: np.ndarray


class Implementation:
    """An attention seq2seq implementation under test. Override what it supports.

    Attributes
    ----------
    name : str
        Shown in reports.
    scores : tuple of str
        The score functions it implements (a subset of SCORES + ("none",)).
    dtypes : tuple of str
        The dtypes it computes in ("float64", "float32").
    """

    name: str = "unnamed"
    scores: tuple[str, ...] = SCORES + (BASELINE,)
    dtypes: tuple[str, ...] = DTYPES

    def attention(self, score: str, query, keys, mask, W_a=None, v_a=None):
        """One attention step for a batch of queries.

        Parameters
        ----------
        score : str
            A name of SCORES.
        query : [B, H];  keys : [B, S, H]
        mask : bool [B, S]
            True at valid positions. Always a prefix: ``mask[b, s] = s < src_len[b]``
            with ``src_len[b] >= 1``, as MODEL.md's mask is.
        W_a, v_a : parameters of ``general`` ([H, H]) and ``concat`` ([H, 2H], [H]).

        Returns
        -------
        weights : [B, S], exactly 0 where ``mask`` is False;  ctx : [B, H]
        """
        raise NotImplementedError

    def attention_vjp(self, score: str, query, keys, mask, g_ctx, W_a=None, v_a=None) -> dict:
        """Backward of ``attention`` for the loss L = sum_{b,j} g_ctx[b, j] ctx[b, j] (optional).

        The model consumes attention only through ctx, so the cotangent of ctx
        is all its backward needs; dL/de is the softmax backward
        ``a_s (g_s - sum_j a_j g_j)`` with ``g_s = k_s . g_ctx``.

        Parameters
        ----------
        score, query, keys, mask, W_a, v_a : as for ``attention``
        g_ctx : [B, H], same dtype
            The cotangent of ctx.

        Returns
        -------
        dict with
            ``"scores"``: dL/de [B, S], exactly 0 where ``mask`` is False (required);
            ``"query"`` [B, H], ``"keys"`` [B, S, H], ``"W_a"``, ``"v_a"``: dL/d of
            each input, for the ones the implementation provides (optional).
        """
        raise NotImplementedError

    def forward(self, params, config, src, src_len, tgt) -> ForwardOutput:
        """Teacher-forced forward pass of MODEL.md: loss, log-probabilities, attention."""
        raise NotImplementedError

    def loss_and_grads(self, params, config, src, src_len, tgt) -> tuple[float, dict]:
        """The loss and its gradient with respect to every named parameter."""
        raise NotImplementedError

    def greedy_decode(self, params, config, src, src_len, max_len: int) -> DecodeOutput:
        """Greedy decoding from BOS until EOS or ``max_len`` tokens."""
        raise NotImplementedError

    def beam_search(self, params, config, src, src_len, beam_size: int, max_len: int,
                    length_normalize: bool = False) -> DecodeOutput:
        """Beam search; ``beam_size = 1`` is greedy decoding."""
        raise NotImplementedError

    def lstm_cell(self, x, h, c, W_ih, W_hh, b_ih, b_hh):
        """One step of MODEL.md's LSTM cell for a batch (optional: only the gate properties need it).

        Parameters
        ----------
        x : [B, D];  h, c : [B, H]
            Input and previous state, all in the dtype of ``x``.
        W_ih : [4H, D];  W_hh : [4H, H];  b_ih, b_hh : [4H]

        Returns
        -------
        h_new, c_new : [B, H]
        gates : [B, 4H]
            (i, f, g, o) = (sigma, sigma, tanh, sigma)(W_ih x + b_ih + W_hh h + b_hh), in that order.
        """
        raise NotImplementedError

    def supports(self, method: str) -> bool:
        """Whether ``method`` is overridden (implemented) by this class."""
        return getattr(type(self), method) is not getattr(Implementation, method)

    def __repr__(self) -> str:
        return f"<Implementation {self.name}>"


def load(target: str) -> Implementation:
    """The implementation named by ``target``: ``"package.module:name"`` or ``"path/to/file.py:name"``.

    ``name`` may be an ``Implementation`` instance, a subclass (instantiated
    with no arguments) or a function returning an instance.

    Examples
    --------
    >>> load("attnspec.spec.protocol:Implementation").name
    'unnamed'
    """
    import importlib

    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(f"target: expected 'module:name' or 'file.py:name', got {target!r}")
    where, name = target.split(":")
    # Any error of the adapter's own code while it loads is the target's fault: a usage error
    # naming it, not a traceback from inside the kit.
    try:
        module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
    except ImportError as exc:
        raise ValueError(f"target: cannot import module {where!r} ({exc})") from None
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"target: {where!r} raised {type(exc).__name__} while loading: {exc}") from None
    if not hasattr(module, name):
        raise ValueError(f"target: module {where!r} has no attribute {name!r}")
    obj = getattr(module, name)
    try:
        if isinstance(obj, type):
            obj = obj() if issubclass(obj, Implementation) else obj
        elif callable(obj) and not isinstance(obj, Implementation):
            obj = obj()  # a factory function
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"target: making {target!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, Implementation):
        raise ValueError(f"target: {target!r} is not an attnspec.spec.protocol.Implementation "
                         f"(got {type(obj).__name__}); see docs/conformance.md")
    for attr, allowed in (("scores", SCORES + (BASELINE,)), ("dtypes", DTYPES)):
        value = getattr(obj, attr)
        if not isinstance(value, (tuple, list)) or not all(v in allowed for v in value):
            raise ValueError(f"target: {attr} of {target!r} must be a tuple of some of {allowed}, got {value!r}")
    return obj


def _load_file(where: str):
    """Import ``path/to/file.py`` as ``python file.py`` would see it: its folder on sys.path (for
    ``from mymodel import MyModel``) and the module in sys.modules (dataclasses and pickle look it up)."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(where).resolve()
    if not path.is_file():
        raise ImportError(f"no such file {where!r}")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module_name = path.stem if path.stem not in sys.modules else f"attnspec_adapter_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
