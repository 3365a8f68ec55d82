"""The self-verification report (spec.verify) and the ``attnspec verify`` command."""

import subprocess
import sys

import mpmath

from attnspec.impl import cli
from attnspec.spec import verify
from attnspec.spec.config import Config
from attnspec.spec.identities import Verdict, identities


def test_attnspec_verify_passes_and_reports_every_section(capsys):
    assert cli.main(["verify"]) == 0
    out = capsys.readouterr().out
    for section in ("== identities", "== worked example", "== oracle vs finite differences"):
        assert section in out
    n_rows = len(identities()) + 1 + len(verify.ORACLE_CONFIGS)
    assert f"{n_rows} passed, 0 failed" in out
    assert "FAIL" not in out


def test_a_refuted_identity_fails_the_report(monkeypatch):
    ident = identities()[0]
    monkeypatch.setattr(verify, "verify_identities", lambda: [Verdict(ident, False, "refuted: test", 0.0)])
    monkeypatch.setattr(verify, "ORACLE_CONFIGS", [])
    lines = []
    assert verify.run(lines.append) is False
    assert any(line.startswith("FAIL") and ident.name in line for line in lines)
    assert lines[-1].strip().startswith("1 passed, 1 failed")


def test_a_wrong_oracle_gradient_fails_the_fd_check(monkeypatch):
    real_evaluate = verify.evaluate

    def off_by_1e_15(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        g = result.grads["generator.bias"]
        with mpmath.workdps(50):
            for i in range(g.size):  # every coordinate, so the sampled ones are hit
                g[i] = g[i] * (1 + mpmath.mpf("1e-15"))
        return result

    monkeypatch.setattr(verify, "evaluate", off_by_1e_15)
    check = verify.oracle_fd_check(Config(V_src=6, V_tgt=6, E=2, H=2))
    assert not check.ok and "generator.bias" in check.detail


def test_cli_without_a_command_prints_help_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "attnspec.impl.cli"], capture_output=True, text=True)
    assert proc.returncode == 2 and "verify" in proc.stdout
