"""Checkpoints: one self-contained ``.npz`` file, read with ``allow_pickle=False``.

Layout of the archive (every entry a plain array, so no pickle is ever needed):

====================  ==========================================================
``params/<name>``     each parameter, under its MODEL.md name
``optim/<key>``       the optimizer state (``step``, ``m.<name>``, ``v.<name>``)
``arrays/<key>``      any further arrays (the training loop keeps its loss curve)
``meta.json``         a 0-d string array holding JSON: format tag and version,
                      the ``Config`` (``Config.to_json``), ``step``, ``epoch``,
                      the NumPy bit-generator state (if any) and free ``extra``
                      data (e.g. the optimizer's hyperparameters)
====================  ==========================================================

Keeping the JSON inside the archive means a checkpoint is one file that cannot
drift from its configuration. To read it by hand::

    with np.load("ckpt.npz") as z:
        meta = json.loads(str(z["meta.json"]))

Files are written to a temporary name and renamed, so an interrupted save never
leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnspec.spec.config import Config
from attnspec.spec.validate import check_params

FORMAT = "attnspec-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring for the layout)."""

    config: Config
    params: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray] | None = None
    step: int = 0
    epoch: int = 0
    rng_state: dict | None = None
    extra: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _check_arrays(name: str, arrays) -> dict[str, np.ndarray]:
    if arrays is None:
        return {}
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{name}: expected a mapping of str -> array, got {type(arrays).__name__}")
    out = {}
    for key, a in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name}: keys must be non-empty str, got {key!r}")
        a = np.asarray(a)
        if a.dtype == object:
            raise TypeError(f"{name}[{key!r}]: object arrays cannot be stored without pickle")
        out[key] = a
    return out


def save_checkpoint(path, config: Config, params, optim_state=None, *, step: int = 0, epoch: int = 0,
                    rng_state: dict | None = None, extra: dict | None = None, arrays=None) -> Path:
    """Write a checkpoint to ``path`` (the name is used as given; ``.npz`` is conventional).

    Parameters
    ----------
    path : str or os.PathLike
    config : Config
    params : dict[str, ndarray]
        Validated against ``config`` with ``check_params`` before anything is written.
    optim_state : dict[str, ndarray], optional
        E.g. ``Adam.init_state`` output after some steps.
    step, epoch : int
        Training progress (>= 0).
    rng_state : dict, optional
        ``np.random.Generator.bit_generator.state`` (JSON-serialisable).
    extra : dict, optional
        Further JSON-serialisable data.
    arrays : dict[str, ndarray], optional
        Further arrays.

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> import tempfile, os
    >>> from attnspec.spec.config import param_shapes
    >>> cfg = Config(V_src=5, V_tgt=5, E=2, H=2)
    >>> params = {n: np.zeros(s) for n, s in param_shapes(cfg).items()}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_checkpoint(os.path.join(d, "ckpt.npz"), cfg, params, step=3)
    ...     load_checkpoint(p).step
    3
    """
    path = _check_path(path)
    if not isinstance(config, Config):
        raise TypeError(f"config: expected a Config, got {type(config).__name__}")
    params = check_params(params, config)
    optim_state = _check_arrays("optim_state", optim_state) if optim_state is not None else None
    arrays = _check_arrays("arrays", arrays)
    for name, value in (("step", step), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name}: expected >= 0, got {value}")
    if rng_state is not None and not isinstance(rng_state, Mapping):
        raise TypeError(f"rng_state: expected a dict (bit_generator.state), got {type(rng_state).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra: expected a dict, got {type(extra).__name__}")
    meta = {
        "format": FORMAT, "version": VERSION, "config": json.loads(config.to_json()),
        "step": int(step), "epoch": int(epoch), "has_optim_state": optim_state is not None,
        "rng_state": None if rng_state is None else dict(rng_state), "extra": dict(extra or {}),
    }
    try:
        meta_text = json.dumps(meta, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"extra, rng_state: must be JSON-serialisable ({exc})") from None

    entries = {f"params/{n}": a for n, a in params.items()}
    entries.update({f"optim/{k}": a for k, a in (optim_state or {}).items()})
    entries.update({f"arrays/{k}": a for k, a in arrays.items()})
    entries["meta.json"] = np.array(meta_text)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object stops np.savez from appending ".npz"
        np.savez(f, **entries)
    os.replace(tmp, path)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    The parameters are validated against the stored configuration with
    ``check_params``. A missing, truncated or foreign file raises
    ``FileNotFoundError`` or ``ValueError`` naming ``path``.
    """
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("a single array, not an .npz archive")
        with z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"path: {str(path)!r} is not a readable .npz checkpoint ({exc})") from None
    if "meta.json" not in data:
        raise ValueError(f"path: {str(path)!r} has no 'meta.json' entry; not an attnspec checkpoint")
    try:
        meta = json.loads(str(data.pop("meta.json")))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format tag {meta.get('format')!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"unsupported version {meta.get('version')!r} (this code reads {VERSION})")
        config = Config.from_json(json.dumps(meta["config"]))
        params = {k[len("params/"):]: a for k, a in data.items() if k.startswith("params/")}
        params = check_params(params, config)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"path: {str(path)!r} is not a valid attnspec checkpoint: {exc}") from None
    optim_state = {k[len("optim/"):]: a for k, a in data.items() if k.startswith("optim/")}
    return Checkpoint(
        config=config, params=params,
        optim_state=optim_state if meta.get("has_optim_state") else None,
        step=int(meta.get("step", 0)), epoch=int(meta.get("epoch", 0)),
        rng_state=meta.get("rng_state"), extra=meta.get("extra", {}),
        arrays={k[len("arrays/"):]: a for k, a in data.items() if k.startswith("arrays/")},
    )
