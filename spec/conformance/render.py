"""Render a failing example as Python source that rebuilds it exactly and reruns the check.

A report is only useful if its failure can be replayed outside the runner:
``snippet`` turns the smallest failing example Hypothesis found into plain
statements (``np.array([...], dtype=...)``, ``Config(...)``, the strategies'
named tuples) that a user pastes into a test body or runs with ``exec``.
Floats are written with ``repr``, which round-trips every float64 exactly,
and float32 values survive the trip through float64 unchanged, so the
rebuilt arrays are bit-identical to the ones that failed.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap

import numpy as np

_NONFINITE = re.compile(r"(?<![\w.])(inf|nan)(?![\w])")


def _float_text(x: float) -> str:
    if np.isfinite(x):
        return repr(float(x))
    return "float('nan')" if np.isnan(x) else ("float('inf')" if x > 0 else "-float('inf')")


def _array(a: np.ndarray, indent: str) -> str:
    dtype = f"np.{a.dtype}" if a.dtype != bool else "bool"
    if a.size == 0:
        return f"np.zeros({a.shape!r}, dtype={dtype})"
    if a.ndim == 0:
        return f"np.array({_float_text(a.item()) if a.dtype.kind == 'f' else repr(a.item())}, dtype={dtype})"

    def rows(x):  # one line per row of a matrix or batch: readable, still valid Python
        return _NONFINITE.sub(lambda m: "np." + m.group(1), repr(x.tolist()))

    if a.ndim == 1:
        body = rows(a)
    else:
        inner = indent + "    "
        body = "[\n" + "".join(f"{inner}{rows(r)},\n" for r in a) + indent + "]"
    return f"np.array({body}, dtype={dtype})"


class Source:
    """Python source of a value, collecting the imports it needs."""

    def __init__(self):
        self.imports: set[str] = {"import numpy as np"}

    def _name(self, cls: type) -> str:
        self.imports.add(f"from {cls.__module__} import {cls.__qualname__}")
        return cls.__qualname__

    def expr(self, obj, indent: str = "") -> str:
        """Source of ``obj``; values it cannot rebuild fall back to ``repr`` with a warning comment."""
        inner = indent + "    "
        if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
            value = _float_text(obj.item()) if obj.dtype.kind == "f" else repr(obj.item())
            return f"np.{obj.dtype}({value})"
        if obj is None or isinstance(obj, (bool, str, int)):
            return repr(obj)
        if isinstance(obj, float):
            return _float_text(obj)
        if isinstance(obj, np.ndarray):
            return _array(obj, indent)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple: by field name
            fields = "".join(f"{inner}{f}={self.expr(getattr(obj, f), inner)},\n" for f in obj._fields)
            return f"{self._name(type(obj))}(\n{fields}{indent})"
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = ", ".join(f"{f.name}={self.expr(getattr(obj, f.name), inner)}"
                               for f in dataclasses.fields(obj) if f.init)
            return f"{self._name(type(obj))}({fields})"
        if isinstance(obj, dict):
            items = "".join(f"{inner}{self.expr(k)}: {self.expr(v, inner)},\n" for k, v in obj.items())
            return "{\n" + items + indent + "}"
        if isinstance(obj, (list, tuple)):
            parts = [self.expr(x, inner) for x in obj]
            if isinstance(obj, tuple) and len(parts) == 1:
                return f"({parts[0]},)"
            open_, close = ("[", "]") if isinstance(obj, list) else ("(", ")")
            return open_ + ", ".join(parts) + close
        return f"{obj!r}  # WARNING: {type(obj).__name__} rendered by repr; check it rebuilds the value"


def check_call(prop) -> tuple[str, str]:
    """(import line, callable expression) that reach ``prop.check`` from a fresh interpreter.

    A module-level check function is imported by name, which reads best in a
    test; anything else (a lambda, a closure) is looked up in the registry.
    """
    fn = prop.check
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and qualname.isidentifier():
        import importlib

        try:
            if getattr(importlib.import_module(module), qualname) is fn:
                return f"from {module} import {qualname}", qualname
        except (ImportError, AttributeError):
            pass
    return "from attnspec.spec.properties import REGISTRY", f"REGISTRY[{prop.name!r}].check"


def snippet(prop, example, impl_source: str, message: str) -> str:
    """A self-contained Python snippet that rebuilds ``example`` and reruns ``prop``'s check on it.

    Parameters
    ----------
    prop : Property
    example : object
        The (smallest) failing example.
    impl_source : str
        Statements that bind the name ``impl`` to the implementation under test
        (``targets.impl_code``).
    message : str
        The failure message, quoted in a comment so the snippet documents itself.

    Returns
    -------
    str
        Runs as a script or with ``exec``, raising the failure again; paste it
        into a test function to pin the case.
    """
    src = Source()
    body = src.expr(example)
    import_line, call = check_call(prop)
    src.imports.add(import_line)
    imports = sorted(src.imports, key=lambda line: (not line.startswith("import"), line))
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    comment = textwrap.shorten(first_line, 200, placeholder=" ...")
    return "\n".join([
        f"# attnspec check: smallest failing example of {prop.name}",
        *imports,
        "",
        impl_source,
        f"example = {body}",
        f"{call}(impl, example)  # fails: {comment}",
        "",
    ])
