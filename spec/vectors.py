"""Golden vectors: the oracle's answers on fixed cases, for implementations in any language.

``export(dir)`` writes a versioned set of cases (a ``manifest.json`` and, per
case, a JSON file and a ``.npz`` copy): inputs written exactly, and the
oracle's loss, log-probabilities, attention and every gradient (or, for the
attention-only cases, the weights and context) as 25-digit decimal strings,
with the tolerance each quantity must meet. ``check(dir, impl)`` runs every
case through an ``Implementation`` (spec.protocol) and returns one row per
case and quantity. docs/vectors.md describes the files and the tolerances.

The cases are built from fixed seeds and written with sorted keys and no
timestamps, so an export is the same bytes every time.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pathlib
import time
import zipfile
from decimal import Decimal
from typing import Callable, NamedTuple

import mpmath
import numpy as np
from mpmath.libmp import to_str

from . import oracle
from . import vector_cases as vc
from .config import DTYPES, SCORES, Config, attention_param_shapes, param_shapes
from .validate import check_batch, src_len_from_mask
from .vector_cases import ATTENTION_CASES, MODEL_CASES, TOLERANCES  # noqa: F401 (re-exported)

__all__ = ["FORMAT_VERSION", "MODEL_CASES", "ATTENTION_CASES", "TOLERANCES", "Row", "export", "load",
           "check", "first_failures"]

FORMAT = "attnspec-golden-vectors"
FORMAT_VERSION = 1
DPS = 40          # the oracle's working precision
DIGITS = 25       # significant digits written for every expected value


# -- number format ---------------------------------------------------------------------------

def format_expected(x) -> str:
    """An oracle value as ``d.ddd...e±N`` with DIGITS significant digits (zero included).

    An mpf is formatted from its own bits: ``mpmath.mpf(x)`` would first round it
    to the current working precision (15 digits outside ``workdps``).
    """
    if not isinstance(x, mpmath.mpf):
        x = mpmath.mpf(x)  # ints and floats convert exactly
    if x == 0:
        return "0." + "0" * (DIGITS - 1) + "e+0"
    return to_str(x._mpf_, DIGITS, strip_zeros=False, min_fixed=1, max_fixed=0, show_zero_exponent=True)


def format_input(x) -> str:
    """A float32/float64 input as its exact decimal expansion (any correct parser gets it back)."""
    return str(Decimal(float(x)))


def _strings(a: np.ndarray, fmt: Callable) -> list:
    """A nested list of the formatted entries of ``a`` (an object or float array)."""
    a = np.asarray(a, dtype=object)
    return fmt(a[()]) if a.ndim == 0 else [_strings(x, fmt) for x in a]


def _floats(x, where: str) -> np.ndarray:
    """Nested lists of decimal strings -> float64 array (correctly rounded), or a ValueError at ``where``."""
    try:
        a = np.array(x, dtype=object)
        if not all(isinstance(s, str) for s in a.ravel()):
            raise TypeError("entries must be decimal strings")
        return a.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not an array of decimal strings ({exc})") from None


# -- export -----------------------------------------------------------------------------------

def _model_document(case: vc.ModelCase) -> dict:
    """The JSON document of a model case: inputs, the oracle's answers, the tolerances."""
    cfg = case.config
    params, src, src_len, tgt = vc.model_inputs(case)
    res = oracle.evaluate(params, cfg, src, src_len, tgt, dps=DPS)
    if not 1e-3 < float(res.loss) < 1e3:  # a tiny loss would need an absolute tolerance (docs)
        raise AssertionError(f"{case.id}: loss {float(res.loss)} outside the range the tolerances assume")
    expected = {
        "loss": format_expected(res.loss),
        "log_probs": _strings(res.log_probs, format_expected),
        "attention": None if res.attention is None else _strings(res.attention, format_expected),
        "grads": {n: _strings(g, format_expected) for n, g in res.grads.items()},
    }
    base = vc.TOLERANCES[cfg.dtype]
    bound = vc.rounded(vc.model_score_bound(params, cfg, src, src_len, tgt))
    kappa = vc.kappa_of(bound)
    g = {n: vc.max_abs(_floats(s, n)) for n, s in expected["grads"].items()}
    g_case = max(g.values())
    atol = {
        "loss": base["forward"] * kappa * abs(float(res.loss)),
        "log_probs": base["forward"] * kappa * vc.max_abs(_floats(expected["log_probs"], "log_probs")),
        "attention": None if res.attention is None else base["forward"] * kappa,  # max weight <= 1
        "grads": {n: vc.grad_atol(base, kappa, g[n], g_case) for n in g},
    }
    return {
        "format_version": FORMAT_VERSION, "id": case.id, "kind": "model", "description": case.description,
        "config": json.loads(cfg.to_json()),
        "inputs": {"src": src.tolist(), "src_len": src_len.tolist(), "tgt": tgt.tolist(),
                   "params": {n: _strings(p, format_input) for n, p in params.items()}},
        "expected": expected,
        "tolerance": {"score_bound": bound, "kappa": kappa, "atol": atol},
    }


def _attention_document(case: vc.AttentionCase) -> dict:
    """The JSON document of an attention-only case (one query per row against its own keys)."""
    q, k, src_len, W_a, v_a = case.build(np.random.default_rng(case.seed))
    q, k = vc.exact_in(case.dtype, q), vc.exact_in(case.dtype, k)
    W_a = None if W_a is None else vc.exact_in(case.dtype, W_a)
    v_a = None if v_a is None else vc.exact_in(case.dtype, v_a)
    rows = [oracle.attention(case.score, q[b], k[b], int(src_len[b]), W_a, v_a, dps=DPS) for b in range(len(q))]
    weights = _strings(np.array([w for w, _ in rows], dtype=object), format_expected)
    ctx = _strings(np.array([c for _, c in rows], dtype=object), format_expected)
    mask = np.arange(k.shape[1])[None, :] < src_len[:, None]
    base = vc.TOLERANCES[case.dtype]
    bound = vc.rounded(vc.attention_score_bound(case.score, q, k, src_len, W_a, v_a))
    kappa = vc.kappa_of(bound)
    keys_scale = max(vc.max_abs(k[b, :src_len[b]]) for b in range(len(q)))  # ctx is an average of the keys
    opt = lambda a: None if a is None else _strings(a, format_input)  # noqa: E731
    return {
        "format_version": FORMAT_VERSION, "id": case.id, "kind": "attention", "description": case.description,
        "score": case.score, "dtype": case.dtype,
        "inputs": {"query": _strings(q, format_input), "keys": _strings(k, format_input),
                   "mask": mask.tolist(), "src_len": src_len.tolist(), "W_a": opt(W_a), "v_a": opt(v_a)},
        "expected": {"weights": weights, "ctx": ctx},
        "tolerance": {"score_bound": bound, "kappa": kappa,
                      "atol": {"weights": base["forward"] * kappa, "ctx": base["forward"] * kappa * keys_scale}},
    }


def _arrays(doc: dict) -> dict[str, np.ndarray]:
    """The .npz copy of a case: ints as int64, every real number as float64 (parsed from the JSON)."""
    inp, exp = doc["inputs"], doc["expected"]
    out = {}
    if doc["kind"] == "model":
        for name in ("src", "src_len", "tgt"):
            out[name] = np.array(inp[name], dtype=np.int64)
        out.update({f"param.{n}": _floats(p, n) for n, p in inp["params"].items()})
        out["expected.loss"] = _floats(exp["loss"], "loss")
        out["expected.log_probs"] = _floats(exp["log_probs"], "log_probs")
        if exp["attention"] is not None:
            out["expected.attention"] = _floats(exp["attention"], "attention")
        out.update({f"grad.{n}": _floats(g, n) for n, g in exp["grads"].items()})
    else:
        out["query"], out["keys"] = _floats(inp["query"], "query"), _floats(inp["keys"], "keys")
        out["mask"], out["src_len"] = np.array(inp["mask"], dtype=bool), np.array(inp["src_len"], dtype=np.int64)
        out.update({n: _floats(inp[n], n) for n in ("W_a", "v_a") if inp[n] is not None})
        out["expected.weights"] = _floats(exp["weights"], "weights")
        out["expected.ctx"] = _floats(exp["ctx"], "ctx")
    return out


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive (what np.load reads) with fixed timestamps, unlike np.savez, so its bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16  # rw-r--r-- when unzipped
            data = io.BytesIO()
            np.lib.format.write_array(data, arrays[name], allow_pickle=False)
            zf.writestr(info, data.getvalue())
    return buf.getvalue()


def _json_bytes(doc) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _attnspec_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnspec")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def export(directory, progress: Callable | None = None) -> dict:
    """Write every case of MODEL_CASES and ATTENTION_CASES to ``directory``; return the manifest.

    Parameters
    ----------
    directory : str or path
        Created if missing. An existing directory must be empty or hold an
        earlier export (whose files are replaced).
    progress : callable(i, n, case_id, seconds), optional
        Called after each case (i counts from 1).

    Returns
    -------
    dict
        The manifest written to ``directory/manifest.json``.
    """
    root = pathlib.Path(directory)
    if root.exists() and not root.is_dir():
        raise ValueError(f"dir: {str(root)!r} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / "manifest.json").is_file():
        raise ValueError(f"dir: {str(root)!r} is not empty and holds no earlier export (manifest.json); "
                         "choose a new or empty directory")
    if (root / "manifest.json").is_file():
        for old in (root / "cases").glob("*"):
            old.unlink()
    (root / "cases").mkdir(parents=True, exist_ok=True)
    jobs = [(c.id, lambda c=c: _model_document(c)) for c in vc.MODEL_CASES]
    jobs += [(c.id, lambda c=c: _attention_document(c)) for c in vc.ATTENTION_CASES]
    entries = []
    for i, (case_id, make) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        doc = make()
        files = {"json": f"cases/{case_id}.json", "npz": f"cases/{case_id}.npz"}
        contents = {"json": _json_bytes(doc), "npz": _npz_bytes(_arrays(doc))}
        for kind, rel in files.items():
            (root / rel).write_bytes(contents[kind])
        entries.append({"id": case_id, "kind": doc["kind"], "description": doc["description"], **files,
                        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in contents.items()}})
        if progress is not None:
            progress(i, len(jobs), case_id, time.perf_counter() - t0)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "attnspec_version": _attnspec_version(),
        "oracle_dps": DPS, "expected_digits": DIGITS,
        "number_format": {
            "inputs": "decimal string, the exact decimal expansion of the float64 (or float32) value",
            "expected": f"decimal string d.ddd...e+N with {DIGITS} significant digits of the oracle's "
                        f"{DPS}-digit value",
        },
        "tolerance_base": vc.TOLERANCES, "kappa_scale": vc.KAPPA_SCALE,
        "cases": entries,
    }
    (root / "manifest.json").write_bytes(_json_bytes(manifest))
    return manifest


# -- reading a set ----------------------------------------------------------------------------

def _read_json(path: pathlib.Path, what: str):
    try:
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what}: cannot read {str(path)!r} as JSON ({exc})") from None


# -- validating a case document ----------------------------------------------------------------
# The SHA-256 catches corruption, not a hand edit whose digest was updated too, nor a set written
# by another tool: every field check() reads is validated here, so that a malformed file is an
# error naming the field, never a traceback nor (NaN compares False with everything) a pass.

def _field(path: tuple) -> str:
    """("expected", "grads", "generator.bias") -> "expected.grads['generator.bias']"."""
    out = ""
    for key in path:
        out += f"[{key!r}]" if "." in key else ("." if out else "") + key
    return out


def _get(doc: dict, *path):
    """The value at ``path``, or a ValueError naming the first missing field."""
    node = doc
    for i, key in enumerate(path):
        if not isinstance(node, dict):
            raise ValueError(f"{_field(path[:i])}: expected an object, got {type(node).__name__}")
        if key not in node:
            raise ValueError(f"{_field(path[:i + 1])}: missing")
        node = node[key]
    return node


def _doc_reals(doc: dict, path: tuple, shape: tuple) -> np.ndarray:
    """The decimal strings at ``path`` as a non-empty, finite float64 array of ``shape`` (None: any size)."""
    where = _field(path)
    a = _floats(_get(doc, *path), where)
    if a.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, a.shape)) or a.size == 0:
        wanted = tuple("any" if n is None else n for n in shape)
        raise ValueError(f"{where}: expected a non-empty array of shape {wanted}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        i = np.unravel_index(int(np.argmax(~np.isfinite(a))), a.shape)
        at = f" at index {tuple(int(j) for j in i)}" if a.ndim else ""
        raise ValueError(f"{where}: {float(a[i])!r}{at} is not a finite float64")
    return a


def _doc_array(doc: dict, path: tuple, ndim: int, kind: type) -> np.ndarray:
    """The JSON ints (or bools) at ``path`` as an ``ndim``-d object array, or a ValueError naming the field."""
    a = np.array(_get(doc, *path), dtype=object)
    # type(), not isinstance: a bool is no int here, nor 3.0, and a ragged array has lists for entries
    if a.ndim != ndim or not all(type(x) is kind for x in a.ravel()):
        raise ValueError(f"{_field(path)}: expected a {ndim}-d array of JSON {kind.__name__}s")
    return a


def _doc_ints(doc: dict, path: tuple, ndim: int) -> np.ndarray:
    a = _doc_array(doc, path, ndim, int)
    big = [x for x in a.ravel() if not -2**63 <= x < 2**63]
    if big:
        raise ValueError(f"{_field(path)}: {big[0]} is outside int64")
    return a.astype(np.int64)


def _is_tolerance(x) -> bool:
    """A finite real >= 0: NaN compares False with everything, so as a tolerance it would pass any value."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(x) and x >= 0
    except OverflowError:  # an int beyond float's range
        return False


def _doc_tolerance(doc: dict, path: tuple) -> None:
    x = _get(doc, *path)
    if not _is_tolerance(x):
        raise ValueError(f"{_field(path)}: expected a finite number >= 0, got {x!r}")


def _doc_names(doc: dict, path: tuple, names) -> dict:
    """The object at ``path``, whose keys must be exactly ``names``."""
    d = _get(doc, *path)
    if not isinstance(d, dict) or set(d) != set(names):
        given = d if isinstance(d, dict) else {}
        raise ValueError(f"{_field(path)}: expected an object keyed by the config's parameter names: "
                         f"missing {[n for n in names if n not in given]}, "
                         f"unexpected {[n for n in given if n not in names]}")
    return d


def _doc_params(doc: dict, path: tuple, shapes: dict) -> None:
    """An object of one array per parameter name (the inputs, or the gradients), each of its shape."""
    _doc_names(doc, path, shapes)
    for name, shape in shapes.items():
        _doc_reals(doc, (*path, name), shape)


def _doc_optional(doc: dict, path: tuple, needed: bool, why: str, check: Callable) -> None:
    """The field at ``path`` is null exactly when not ``needed``; ``check()`` validates it when given."""
    value = _get(doc, *path)
    if needed and value is None:
        raise ValueError(f"{_field(path)}: null, but {why} needs it")
    if not needed and value is not None:
        raise ValueError(f"{_field(path)}: expected null, as {why} has none")
    if needed:
        check()


def _doc_config(doc: dict) -> Config:
    c = _get(doc, "config")
    if not isinstance(c, dict):
        raise ValueError(f"config: expected an object, got {type(c).__name__}")
    try:
        return Config(**c)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config: {exc}") from None


def _doc_batch(doc: dict, config: Config) -> tuple[int, int, int]:
    """(B, S, T) of a model case's src, src_len, tgt, validated as MODEL.md's batch."""
    src, src_len, tgt = (_doc_ints(doc, ("inputs", k), n) for k, n in (("src", 2), ("src_len", 1), ("tgt", 2)))
    try:
        check_batch(config, src, src_len, tgt)
    except ValueError as exc:
        raise ValueError(f"inputs.{exc}") from None
    return src.shape[0], src.shape[1], tgt.shape[1] - 1


def _check_model_doc(doc: dict) -> None:
    config = _doc_config(doc)
    B, S, T = _doc_batch(doc, config)
    shapes = param_shapes(config)
    why = f"score {config.score!r}"
    _doc_params(doc, ("inputs", "params"), shapes)
    _doc_reals(doc, ("expected", "loss"), ())
    _doc_reals(doc, ("expected", "log_probs"), (B, T, config.V_tgt))
    _doc_optional(doc, ("expected", "attention"), config.attention, why,
                  lambda: _doc_reals(doc, ("expected", "attention"), (B, T, S)))
    _doc_params(doc, ("expected", "grads"), shapes)
    for q in ("loss", "log_probs"):
        _doc_tolerance(doc, ("tolerance", "atol", q))
    _doc_optional(doc, ("tolerance", "atol", "attention"), config.attention, why,
                  lambda: _doc_tolerance(doc, ("tolerance", "atol", "attention")))
    _doc_names(doc, ("tolerance", "atol", "grads"), shapes)
    for name in shapes:
        _doc_tolerance(doc, ("tolerance", "atol", "grads", name))


def _check_attention_doc(doc: dict) -> None:
    score, dtype = _get(doc, "score"), _get(doc, "dtype")
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    B, H = _doc_reals(doc, ("inputs", "query"), (None, None)).shape
    S = _doc_reals(doc, ("inputs", "keys"), (B, None, H)).shape[1]
    mask = _doc_array(doc, ("inputs", "mask"), 2, bool).astype(bool)
    src_len = _doc_ints(doc, ("inputs", "src_len"), 1)
    try:
        valid = src_len_from_mask(mask, B, S)
    except ValueError as exc:
        raise ValueError(f"inputs.{exc}") from None
    if src_len.shape != (B,) or not np.array_equal(src_len, valid):
        raise ValueError(f"inputs.src_len: {src_len.tolist()} does not match inputs.mask's {valid.tolist()}")
    needed = attention_param_shapes(score, H)
    for n in ("W_a", "v_a"):
        _doc_optional(doc, ("inputs", n), n in needed, f"score {score!r}",
                      lambda n=n: _doc_reals(doc, ("inputs", n), needed[n]))
    _doc_reals(doc, ("expected", "weights"), (B, S))
    _doc_reals(doc, ("expected", "ctx"), (B, H))
    for q in ("weights", "ctx"):
        _doc_tolerance(doc, ("tolerance", "atol", q))


def _check_document(doc: dict) -> None:
    """Every field check() reads, present and well-formed, or a ValueError naming the field."""
    if _get(doc, "format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version: {doc['format_version']!r}; this attnspec reads version {FORMAT_VERSION}")
    for q in ("score_bound", "kappa"):
        _doc_tolerance(doc, ("tolerance", q))
    (_check_model_doc if doc["kind"] == "model" else _check_attention_doc)(doc)


def _manifest_entries(manifest: dict, path: pathlib.Path) -> list[tuple[str, str, str]]:
    """(id, json path, SHA-256) of every case: at least one, each id once, all strings."""
    try:
        entries = [(e["id"], e["json"], e["sha256"]["json"]) for e in manifest["cases"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"manifest: {str(path)!r} has a malformed case list ({exc!r})") from None
    if not all(isinstance(x, str) for entry in entries for x in entry):
        raise ValueError(f"manifest: {str(path)!r} has a malformed case list (id, json and sha256.json "
                         "must be strings)")
    if not entries:  # an empty set would pass vacuously
        raise ValueError(f"manifest: {str(path)!r} lists no cases (re-export)")
    ids = [case_id for case_id, _, _ in entries]
    twice = next((i for k, i in enumerate(ids) if i in ids[:k]), None)
    if twice is not None:
        raise ValueError(f"manifest: {str(path)!r} lists case {twice!r} twice (re-export)")
    return entries


def load(directory) -> tuple[dict, list[dict]]:
    """The manifest and every case document of an exported set, checked for version, integrity and schema.

    Raises
    ------
    ValueError
        Naming the path: no such directory, no manifest, another format or
        format version, no cases or a case listed twice, a missing file, or a
        file whose SHA-256 differs from the manifest's (corrupt or edited).
        Naming the case and the field: a case document with a missing field,
        a wrong shape, an input that is not an int64 integer or a finite
        float64 decimal string, an expected value that is not finite, or a
        tolerance that is not a finite number >= 0.
    """
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise ValueError(f"dir: no such directory {str(root)!r}")
    path = root / "manifest.json"
    if not path.is_file():
        raise ValueError(f"dir: {str(path)!r} not found; not an exported vector set "
                         "(write one with `attnspec vectors export DIR`)")
    manifest = _read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"manifest: {str(path)!r} is not an attnspec golden-vector manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"manifest: {str(path)!r} has format_version {manifest.get('format_version')!r}; "
                         f"this attnspec reads version {FORMAT_VERSION} (re-export with this version)")
    docs = []
    for case_id, rel, digest in _manifest_entries(manifest, path):
        file = root / rel
        if not file.is_file():
            raise ValueError(f"case {case_id}: file {str(file)!r} is missing")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise ValueError(f"case {case_id}: {str(file)!r} does not match the manifest's SHA-256 "
                             "(corrupt or edited; re-export)")
        doc = _read_json(file, f"case {case_id}")
        if not isinstance(doc, dict) or doc.get("id") != case_id or doc.get("kind") not in ("model", "attention"):
            raise ValueError(f"case {case_id}: {str(file)!r} is not a case document for {case_id!r}")
        try:
            _check_document(doc)
        except ValueError as exc:
            raise ValueError(f"case {case_id}: {exc} (in {str(file)!r}: a malformed case file; re-export)") from None
        docs.append(doc)
    return manifest, docs


# -- checking an implementation ------------------------------------------------------------------

class Row(NamedTuple):
    """One quantity of one case. ``status`` is "pass", "fail", "error" (the implementation raised)
    or "skip" (not supported by it). ``max_rel`` = max_abs / max |expected|."""

    case: str
    quantity: str
    status: str
    max_abs: float = math.nan
    max_rel: float = math.nan
    atol: float = math.nan
    message: str = ""


def _where(axes, index) -> str:
    """``[b=1, t=2, v=4]`` for named axes, else ``index (3, 1)`` (a parameter's own layout)."""
    if axes is None:
        return f"index {tuple(int(i) for i in index)}"
    return "[" + ", ".join(f"{a}={int(i)}" for a, i in zip(axes, index)) + "]"


def _compare(case: str, quantity: str, actual, expected: np.ndarray, atol: float, axes=None) -> Row:
    """Row for |actual - expected| <= atol elementwise; a failure names the first wrong step
    (the smallest t, when ``axes`` has one; else the first row b) and its worst element."""
    if not _is_tolerance(atol):  # load rejects it; a document that bypassed load must not pass either
        return Row(case, quantity, "fail", message=f"{quantity}: tolerance {atol!r} is not a finite number >= 0")
    try:
        a = np.asarray(actual, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return Row(case, quantity, "fail", message=f"{quantity}: not a real array ({exc})")
    if a.shape != expected.shape:
        return Row(case, quantity, "fail", message=f"{quantity}: shape {a.shape}, expected {expected.shape}")
    if not np.all(np.isfinite(a)):
        i = np.unravel_index(int(np.argmax(~np.isfinite(a))), a.shape)
        return Row(case, quantity, "fail", math.inf, math.inf, atol,
                   f"{quantity}: non-finite value {float(a[i])!r} at {_where(axes, i)}")
    diff = np.abs(a - expected)
    max_abs = float(diff.max(initial=0.0))
    scale = vc.max_abs(expected)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    bad = ~(diff <= atol)  # not diff > atol: a NaN expected value (diff NaN) fails instead of passing
    if not bad.any():
        return Row(case, quantity, "pass", max_abs, max_rel, atol)
    candidates, where = bad, " worst at "
    if axes is not None and "t" in axes:  # errors propagate forward in time: the first wrong step is the one nearest the bug
        t_axis = axes.index("t")
        first = int(np.nonzero(bad)[t_axis].min())
        candidates = np.zeros_like(bad)
        candidates[(slice(None),) * t_axis + (first,)] = bad[(slice(None),) * t_axis + (first,)]
        where = f" first wrong at step t={first} (0-based), worst there at "
    i = np.unravel_index(int(np.argmax(np.where(candidates, diff, -1.0))), a.shape)
    where = "" if a.ndim == 0 else where + _where(axes, i) + ":"
    msg = (f"{quantity}:{where} {float(a[i])!r} vs expected {float(expected[i])!r} "
           f"(|diff| {diff[i]:.3g} > atol {atol:.3g}); {int(bad.sum())} of {bad.size} entries outside")
    return Row(case, quantity, "fail", max_abs, max_rel, atol, msg)


def _backprop_order(config: Config) -> list[str]:
    """Parameter names in the order backpropagation reaches them (generator first, source embedding last),
    so the first wrong gradient in this order is the one nearest the bug."""
    return list(reversed(list(param_shapes(config))))


def _call(case: str, quantity: str, fn, rows: list):
    """fn() or, when it raises, None and an "error" row naming the exception."""
    try:
        return fn()
    except Exception as exc:  # the implementation under test may raise anything
        rows.append(Row(case, quantity, "error", message=f"{quantity} raised {type(exc).__name__}: {exc}"))
        return None


def _check_model(doc: dict, impl, rows: list) -> None:
    cid, exp, tol = doc["id"], doc["expected"], doc["tolerance"]["atol"]
    try:
        config = Config(**doc["config"])
        inp = doc["inputs"]
        params = {n: _floats(p, f"params[{n!r}]").astype(config.dtype) for n, p in inp["params"].items()}
        src, src_len, tgt = (np.array(inp[k], dtype=np.int64) for k in ("src", "src_len", "tgt"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"case {cid}: malformed inputs ({exc!r})") from None
    args = (params, config, src, src_len, tgt)
    if impl.supports("forward"):
        out = _call(cid, "forward", lambda: impl.forward(*args), rows)
        if out is not None:
            if exp["attention"] is not None:
                rows.append(_compare(cid, "attention", out.attention, _floats(exp["attention"], "attention"),
                                     tol["attention"], ("b", "t", "s")))
            rows.append(_compare(cid, "log_probs", out.log_probs, _floats(exp["log_probs"], "log_probs"),
                                 tol["log_probs"], ("b", "t", "v")))
            rows.append(_compare(cid, "loss", out.loss, _floats(exp["loss"], "loss"), tol["loss"]))
    else:
        rows.append(Row(cid, "forward", "skip", message="forward: not implemented"))
    if impl.supports("loss_and_grads"):
        out = _call(cid, "loss_and_grads", lambda: impl.loss_and_grads(*args), rows)
        if out is not None:
            loss, grads = out
            rows.append(_compare(cid, "loss (loss_and_grads)", loss, _floats(exp["loss"], "loss"), tol["loss"]))
            for name in _backprop_order(config):
                q = f"grad {name}"
                if name not in grads:
                    rows.append(Row(cid, q, "fail", message=f"{q}: missing from the returned gradients"))
                    continue
                rows.append(_compare(cid, q, grads[name], _floats(exp["grads"][name], name), tol["grads"][name]))
    else:
        rows.append(Row(cid, "loss_and_grads", "skip", message="loss_and_grads: not implemented"))


def _check_attention(doc: dict, impl, rows: list) -> None:
    cid, exp, tol = doc["id"], doc["expected"], doc["tolerance"]["atol"]
    if not impl.supports("attention"):
        rows.append(Row(cid, "attention step", "skip", message="attention: not implemented"))
        return
    try:
        inp, dt = doc["inputs"], doc["dtype"]
        q, k = _floats(inp["query"], "query").astype(dt), _floats(inp["keys"], "keys").astype(dt)
        mask = np.array(inp["mask"], dtype=bool)
        W_a, v_a = (None if inp[n] is None else _floats(inp[n], n).astype(dt) for n in ("W_a", "v_a"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"case {cid}: malformed inputs ({exc!r})") from None
    out = _call(cid, "attention step", lambda: impl.attention(doc["score"], q, k, mask, W_a=W_a, v_a=v_a), rows)
    if out is not None:
        weights, ctx = out
        rows.append(_compare(cid, "weights", weights, _floats(exp["weights"], "weights"), tol["weights"], ("b", "s")))
        rows.append(_compare(cid, "ctx", ctx, _floats(exp["ctx"], "ctx"), tol["ctx"], ("b", "j")))


def check(directory, impl, progress: Callable | None = None) -> list[Row]:
    """Run every case of an exported set through ``impl`` (an ``Implementation``); one Row per quantity.

    Model cases check, in data-flow order, forward's attention [B, T, S], log_probs
    [B, T, V_tgt] and loss, then loss_and_grads' loss and each gradient in
    backpropagation order; attention cases check the weights [B, S] and ctx [B, H].
    Cases whose score or dtype ``impl`` does not declare are skipped.

    Parameters
    ----------
    directory : str or path
        An export of ``export`` (validated by ``load``).
    impl : spec.protocol.Implementation
    progress : callable(i, n, case_id, seconds, status), optional
        Called after each case; ``status`` is "pass", "fail" or "skip".
    """
    from .protocol import Implementation

    if not isinstance(impl, Implementation):
        raise TypeError(f"impl: expected an attnspec.spec.protocol.Implementation, got {type(impl).__name__}")
    _, docs = load(directory)
    rows: list[Row] = []
    for i, doc in enumerate(docs, 1):
        t0, start = time.perf_counter(), len(rows)
        try:
            score, dtype = ((doc["config"]["score"], doc["config"]["dtype"]) if doc["kind"] == "model"
                            else (doc["score"], doc["dtype"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"case {doc['id']}: malformed document ({exc!r})") from None
        if score not in impl.scores or dtype not in impl.dtypes:
            rows.append(Row(doc["id"], "*", "skip", message=f"score {score!r} or dtype {dtype!r} "
                            f"not declared by {impl.name} (scores {impl.scores}, dtypes {impl.dtypes})"))
        elif doc["kind"] == "model":
            _check_model(doc, impl, rows)
        else:
            _check_attention(doc, impl, rows)
        if progress is not None:
            statuses = {r.status for r in rows[start:]}
            status = "fail" if statuses & {"fail", "error"} else ("pass" if "pass" in statuses else "skip")
            progress(i, len(docs), doc["id"], time.perf_counter() - t0, status)
    return rows


def first_failures(rows: list[Row]) -> dict[str, Row]:
    """For each failing case, its first failing row (the quantity nearest the bug)."""
    out: dict[str, Row] = {}
    for r in rows:
        if r.status in ("fail", "error") and r.case not in out:
            out[r.case] = r
    return out
