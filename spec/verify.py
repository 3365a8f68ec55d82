"""The specification's self-verification: every identity, the worked example, the oracle against FD.

``attnspec verify`` prints this report; ``python -m attnspec.spec.verify``
does the same without the implementation package. Each check is a row with
a verdict, so a reader sees what was proved, what was measured and how long
it took.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import mpmath
import numpy as np
import sympy as sp

from .cases import random_case, sample_coords
from .config import SCORES, Config
from .equations import SYMPY, score
from .identities import verify_identities
from .oracle import evaluate, finite_difference_grad

# Reverse mode at 40 digits against central differences at 50 digits with
# h = 1e-15: truncation ~h^2 = 1e-30 and rounding ~1e-50 / 1e-15 = 1e-35, so
# agreement to 1e-20 relative leaves ten orders of margin (tests/test_oracle.py).
FD_RTOL = mpmath.mpf("1e-20")
FD_ATOL = mpmath.mpf("1e-25")

ORACLE_CONFIGS = [
    Config(V_src=6, V_tgt=6, E=2, H=2, L=L, score=s, input_feeding=feed)
    for s in SCORES + ("none",)
    for L, feed in ((1, True), (2, False))
]


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    section: str
    name: str
    ok: bool
    detail: str
    seconds: float


def identity_checks() -> Iterator[Check]:
    for v in verify_identities():
        yield Check("identities", v.identity.name, v.holds, v.how, v.seconds)


def worked_example_check() -> Check:
    t0 = time.perf_counter()
    key, query = [sp.Rational(8, 10), sp.Rational(2, 10)], [sp.Rational(7, 10), sp.Rational(3, 10)]
    e = score(SYMPY, "dot", query, key)
    ok = e == sp.Rational(62, 100)
    return Check("worked example", "(0.8, 0.2) . (0.7, 0.3)", ok, f"= {e} exactly (0.62 = 31/50)",
                 time.perf_counter() - t0)


def oracle_fd_check(config: Config, seed: int = 0) -> Check:
    """Oracle gradients against central differences at sampled coordinates of every parameter."""
    t0 = time.perf_counter()
    params, src, src_len, tgt = random_case(config, B=2, S=3, T=3, seed=seed)
    grads = evaluate(params, config, src, src_len, tgt).grads
    worst, where = mpmath.mpf(0), ""
    ok = True
    for name, index in sample_coords(grads, np.random.default_rng(seed)):
        fd = finite_difference_grad(params, config, src, src_len, tgt, name, index)
        with mpmath.workdps(50):
            err = abs(grads[name][index] - fd)
            ok &= bool(err <= FD_ATOL + FD_RTOL * abs(fd))
            rel = err / max(abs(fd), FD_ATOL)
            if rel >= worst:
                worst, where = rel, f"{name}{tuple(int(i) for i in index)}"
    label = f"score={config.score} L={config.L} input_feeding={config.feeds_input}"
    detail = f"{len(grads)} params; worst relative error {mpmath.nstr(worst, 2)} at {where}"
    return Check("oracle vs finite differences", label, ok, detail, time.perf_counter() - t0)


def all_checks() -> Iterator[Check]:
    yield from identity_checks()
    yield worked_example_check()
    for config in ORACLE_CONFIGS:
        yield oracle_fd_check(config)


def run(write: Callable[[str], object] = print) -> bool:
    """Run every check, writing one line per check as it finishes; True when all pass."""
    t0 = time.perf_counter()
    section, failed, total = None, 0, 0
    for check in all_checks():
        if check.section != section:
            section = check.section
            write(f"\n== {section}")
        total += 1
        failed += not check.ok
        write(f"{'PASS' if check.ok else 'FAIL'}  {check.name}  ({check.seconds:.2f} s)  {check.detail}")
    write(f"\n{total - failed} passed, {failed} failed in {time.perf_counter() - t0:.1f} s")
    return failed == 0


def main() -> int:
    return 0 if run(lambda line: print(line, flush=True)) else 1


if __name__ == "__main__":
    sys.exit(main())
