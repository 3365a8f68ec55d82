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

Files are written to a fresh temporary file in the same folder and renamed, so an
interrupted save never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnspec.spec.config import Config
from attnspec.spec.validate import all_finite, check_params

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
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:  # a file object stops np.savez from appending ".npz"
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file next to ``path`` and its descriptor, opened for writing.

    O_EXCL creates the file or fails, so an existing name (a symlink planted at
    a predictable name, a stale file) is never followed or overwritten; the
    random name makes a clash unlikely. Mode 0o666 lets the umask decide, as
    ``open`` would (``tempfile.mkstemp`` would make checkpoints private, 0o600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"path: no free temporary name next to {str(path)!r}")


def _check_members(zf: zipfile.ZipFile) -> None:
    """Refuse an ``.npy`` member whose header declares more data than the member holds.

    ``np.load`` allocates the declared shape before reading: a 130-byte member
    claiming 10^11 float64 would ask for 745 GiB (MemoryError) instead of failing.
    """
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    for info in zf.infolist():
        with zf.open(info) as f:
            magic = f.read(fmt.MAGIC_LEN)
            read_header = readers.get(tuple(magic[-2:]))
            if not magic.startswith(fmt.MAGIC_PREFIX) or read_header is None:
                continue  # not an array, or a format np.load judges itself
            shape, _, dtype = read_header(f)
            held = info.file_size - f.tell()
        declared = math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and declared > held:  # object arrays are refused by allow_pickle=False
            raise ValueError(f"member {info.filename!r} declares shape {shape} of {dtype} ({declared} bytes) "
                             f"but holds {held} bytes")


def _check_meta(meta) -> None:
    """Check the types of meta.json's fields (the config and format tag are checked by the caller)."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json: expected a JSON object, got {type(meta).__name__}")
    for name in ("step", "epoch"):
        value = meta.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    if not isinstance(meta.get("has_optim_state", False), bool):
        raise ValueError(f"has_optim_state: expected true or false, got {meta['has_optim_state']!r}")
    if not isinstance(meta.get("rng_state"), (dict, type(None))):
        raise ValueError(f"rng_state: expected null or a JSON object, got {meta['rng_state']!r}")
    if not isinstance(meta.get("extra", {}), dict):
        raise ValueError(f"extra: expected a JSON object, got {meta['extra']!r}")


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    The parameters are validated against the stored configuration with
    ``check_params``, and the optimizer state must be finite. A missing,
    truncated, foreign or malformed file (metadata of the wrong type, a
    negative step, an array member whose header claims more data than the
    member holds) raises ``FileNotFoundError`` or ``ValueError`` naming ``path``.
    """
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                _check_members(zf)
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("a single array, not an .npz archive")
        with z:
            data = {k: z[k] for k in z.files}
    # RuntimeError: an encrypted member or an unknown compression method (NotImplementedError);
    # MemoryError: a header that still claims too much (e.g. a compressed member)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError, MemoryError) as exc:
        raise ValueError(f"path: {str(path)!r} is not a readable .npz checkpoint ({exc})") from None
    if "meta.json" not in data:
        raise ValueError(f"path: {str(path)!r} has no 'meta.json' entry; not an attnspec checkpoint")
    try:
        meta = json.loads(str(data.pop("meta.json")))
        _check_meta(meta)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format tag {meta.get('format')!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"unsupported version {meta.get('version')!r} (this code reads {VERSION})")
        config = Config.from_json(json.dumps(meta["config"]))
        params = {k[len("params/"):]: a for k, a in data.items() if k.startswith("params/")}
        params = check_params(params, config)
        optim_state = {k[len("optim/"):]: a for k, a in data.items() if k.startswith("optim/")}
        for key, a in optim_state.items():  # a NaN moment would turn every later update into NaN
            if not all_finite(a):
                raise ValueError(f"optim_state[{key!r}]: contains NaN or infinity")
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"path: {str(path)!r} is not a valid attnspec checkpoint: {exc}") from None
    return Checkpoint(
        config=config, params=params,
        optim_state=optim_state if meta.get("has_optim_state") else None,
        step=int(meta.get("step", 0)), epoch=int(meta.get("epoch", 0)),
        rng_state=meta.get("rng_state"), extra=meta.get("extra", {}),
        arrays={k[len("arrays/"):]: a for k, a in data.items() if k.startswith("arrays/")},
    )
