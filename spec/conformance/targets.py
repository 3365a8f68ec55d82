"""Name the implementation to check: the aliases of ``attnspec check`` and the ``ATTNSPEC_IMPL`` variable.

attnspec's own implementations are named by ``module:name`` strings and loaded
like anyone's adapter (``spec.protocol.load``), so the specification never
imports ``attnspec.impl`` (DESIGN.md: dependencies point one way).
"""

from __future__ import annotations

from ..protocol import Implementation, load

ALIASES = {
    "numba": "attnspec.impl.adapter:NumbaImplementation",
    "torch": "attnspec.impl.torch_model:TorchImplementation",
}
"""Short names of the bundled implementations; ``None`` (no target) means ``numba``."""

MUTANT_PREFIX = "mutant:"
"""``mutant:<name>`` checks a deliberately broken implementation of spec.mutants, ``reference`` the
correct NumPy reference they vary (spec.reference): the kit's proof that it catches bugs."""

ENV_IMPL = "ATTNSPEC_IMPL"
ENV_XFAIL = "ATTNSPEC_XFAIL"


def canonical(target: str | None) -> str:
    """``target`` as shown in reports: an alias, or ``module:name`` with a file path made absolute."""
    if target is None or target == "":
        return "numba"
    if target in ALIASES:
        return target
    where, sep, name = target.rpartition(":")
    if sep and where.endswith(".py"):
        import pathlib

        return f"{pathlib.Path(where).resolve()}:{name}"
    return target


def resolve(target: str | None) -> Implementation:
    """The implementation named by ``target`` (None, an alias of ``ALIASES``, ``module:name`` or ``file.py:name``).

    Raises
    ------
    ValueError
        When the target cannot be loaded (a missing module, a missing optional
        dependency such as torch, or an object that is not an Implementation).
    """
    target = canonical(target)
    if target.startswith(MUTANT_PREFIX) or target == "reference":
        from .. import mutants

        name = target[len(MUTANT_PREFIX):]
        return mutants.CORRECT if target == "reference" else mutants.mutant(name)
    return load(ALIASES.get(target, target))


def impl_code(target: str | None) -> str:
    """Statements that bind ``impl`` to ``target`` in a failure snippet."""
    return f"from attnspec.spec.conformance.targets import resolve\nimpl = resolve({canonical(target)!r})"
