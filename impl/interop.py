"""PyTorch interop without importing torch.

MODEL.md's parameter names *are* PyTorch's state-dict names, so interop is a
matter of converting arrays. To go to PyTorch::

    model.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(params).items()})

and back::

    params = from_state_dict(model.state_dict(), config)

``from_state_dict`` duck-types tensors (anything with ``.detach().cpu().numpy()``),
so this module works, and is tested, whether torch is installed or not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attnspec.spec.config import Config
from attnspec.spec.validate import check_params


def to_state_dict(params, config: Config | None = None) -> dict[str, np.ndarray]:
    """Plain, contiguous NumPy copies of ``params`` keyed by MODEL.md names.

    Parameters
    ----------
    params : dict[str, ndarray]
    config : Config, optional
        When given, ``params`` is validated with ``check_params`` and the result
        follows the state-dict order of ``param_shapes(config)``.

    Returns
    -------
    dict[str, ndarray]
        Copies, so that a tensor made with ``torch.from_numpy`` never aliases
        arrays that the optimizer updates in place.

    Examples
    --------
    >>> sd = to_state_dict({"generator.bias": np.zeros(3)})
    >>> list(sd), sd["generator.bias"].flags["C_CONTIGUOUS"]
    (['generator.bias'], True)
    """
    if config is not None:
        if not isinstance(config, Config):
            raise TypeError(f"config: expected a Config, got {type(config).__name__}")
        params = check_params(params, config)
    elif not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of name -> array, got {type(params).__name__}")
    out = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params: keys must be str, got {name!r}")
        a = np.asarray(value)
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"params[{name!r}]: expected a real array, got dtype {a.dtype}")
        out[name] = np.array(a, order="C", copy=True)
    return out


def _to_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach") and callable(value.detach):  # a torch tensor, without importing torch
        try:
            value = value.detach().cpu().numpy()
        except Exception as exc:
            raise TypeError(f"state_dict[{name!r}]: cannot convert tensor to NumPy ({exc})") from None
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(f"state_dict[{name!r}]: cannot be converted to an array ({exc})") from None


def from_state_dict(state_dict, config: Config, dtype=None) -> dict[str, np.ndarray]:
    """Parameters for ``attnspec.impl`` from a (PyTorch or NumPy) state dict.

    Parameters
    ----------
    state_dict : Mapping[str, tensor or array-like]
        Exactly the names of ``param_shapes(config)``; torch tensors (on any
        device, with or without ``requires_grad``) and NumPy arrays are accepted.
    config : Config
    dtype : str or numpy dtype, optional
        Target dtype; defaults to ``config.dtype``.

    Returns
    -------
    dict[str, ndarray]
        Fresh, contiguous arrays (never sharing memory with the tensors),
        validated with ``check_params``.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config: expected a Config, got {type(config).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of name -> tensor/array, got {type(state_dict).__name__}")
    try:
        dtype = np.dtype(config.dtype if dtype is None else dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: {exc}") from None
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
    arrays = {name: _to_numpy(name, value) for name, value in state_dict.items()}
    try:
        params = check_params(arrays, config, dtype=dtype)           # finite after the conversion too
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"state_dict: {exc}") from None
    return {name: np.array(a, dtype=dtype, order="C", copy=True) for name, a in params.items()}
