"""Tests of the golden vectors (spec.vectors, spec.vector_cases) and ``attnspec vectors``.

One export is shared by the module (a fixture); tests that damage files work on copies.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from decimal import Decimal

import numpy as np
import pytest

from attnspec.impl.adapter import NumbaImplementation
from attnspec.impl.cli import main
from attnspec.spec import vectors
from attnspec.spec.protocol import ForwardOutput, Implementation

EXPECTED_NUMBER = re.compile(r"^-?(\d)\.(\d+)e[+-]\d+$")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vectors") / "set"
    vectors.export(directory)
    return directory


@pytest.fixture(scope="module")
def docs(exported):
    return vectors.load(exported)[1]


@pytest.fixture(scope="module")
def numba_rows(exported):
    return vectors.check(exported, NumbaImplementation())


def _leaves(x):
    if isinstance(x, list):
        for y in x:
            yield from _leaves(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _leaves(y)
    elif x is not None:
        yield x


def _copy(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


# -- the export ----------------------------------------------------------------------------------

def test_export_is_deterministic(exported, tmp_path):
    again = tmp_path / "again"
    vectors.export(again)
    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * (len(vectors.MODEL_CASES) + len(vectors.ATTENTION_CASES))
    for rel in files:
        assert (exported / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_manifest_names_the_versions_and_every_file(exported):
    m = json.loads((exported / "manifest.json").read_text())
    assert m["format"] == "attnspec-golden-vectors" and m["format_version"] == vectors.FORMAT_VERSION
    assert m["attnspec_version"] and m["oracle_dps"] == 40
    kinds = {e["kind"] for e in m["cases"]}
    assert kinds == {"model", "attention"}
    for e in m["cases"]:
        assert (exported / e["json"]).is_file() and (exported / e["npz"]).is_file()


def test_cases_cover_every_score_layers_feeding_dtype_and_ragged_batches(docs):
    model = [d for d in docs if d["kind"] == "model"]
    cfgs = [d["config"] for d in model]
    assert {c["score"] for c in cfgs} == {"dot", "scaled_dot", "general", "concat", "none"}
    assert {c["L"] for c in cfgs} == {1, 2} and {c["input_feeding"] for c in cfgs} == {True, False}
    assert {c["dtype"] for c in cfgs} == {"float64", "float32"}
    assert any(len(set(d["inputs"]["src_len"])) > 1 for d in model)
    assert any(row[-1] == 0 for d in model for row in d["inputs"]["tgt"])  # PAD-ended targets
    assert {d["score"] for d in docs if d["kind"] == "attention"} == {"dot", "scaled_dot", "general", "concat"}
    assert max(d["tolerance"]["score_bound"] for d in docs) > 1e4  # extreme magnitudes


def test_the_float64_pass_behind_the_tolerances_is_the_model(docs):
    """vector_cases.model_states (which sizes kappa) reproduces the oracle's attention weights."""
    from attnspec.spec import vector_cases as vc

    for case in vc.MODEL_CASES:
        if not case.config.attention or case.config.dtype != "float64":
            continue
        params, src, src_len, tgt = vc.model_inputs(case)
        expected = np.array(next(d for d in docs if d["id"] == case.id)["expected"]["attention"], dtype=float)
        for b, (_, _, weights) in enumerate(vc.model_states(params, case.config, src, src_len, tgt)):
            np.testing.assert_allclose(np.array(weights), expected[b, :, :src_len[b]], rtol=0, atol=1e-9,
                                       err_msg=case.id)


def test_expected_values_have_at_least_20_significant_digits(docs):
    n = 0
    for d in docs:
        for s in _leaves(d["expected"]):
            m = EXPECTED_NUMBER.match(s)
            assert m, (d["id"], s)
            assert len(m.group(1) + m.group(2)) >= 20, (d["id"], s)
            n += 1
    assert n > 10_000


def test_expected_digits_are_the_oracles_not_float64s(docs):
    """All 25 written digits are right: they match the oracle at 50 digits to 1e-23 relative."""
    import mpmath

    from attnspec.spec.config import Config
    from attnspec.spec.oracle import evaluate

    d = next(d for d in docs if d["id"] == "tiny_dot")
    inp = d["inputs"]
    params = {n: np.array(p, dtype=float) for n, p in inp["params"].items()}
    res = evaluate(params, Config(**d["config"]), inp["src"], inp["src_len"], inp["tgt"], dps=50)
    with mpmath.workdps(50):
        pairs = [(d["expected"]["loss"], res.loss)]
        pairs += list(zip(_leaves(d["expected"]["grads"]["attention.W_c"]), res.grads["attention.W_c"].ravel()))
        for written, truth in pairs:
            assert abs(mpmath.mpf(written) - truth) <= mpmath.mpf("1e-23") * abs(truth), (written, truth)


def test_inputs_are_written_exactly(docs):
    for d in docs:
        dtype = np.float32 if (d.get("dtype") or d["config"]["dtype"]) == "float32" else np.float64
        inputs = d["inputs"]["params"] if d["kind"] == "model" else {k: d["inputs"][k] for k in ("query", "keys")}
        for s in _leaves(inputs):
            x = float(s)
            assert Decimal(s) == Decimal(x), (d["id"], s)           # the exact value of a float64
            assert float(dtype(x)) == x, (d["id"], s)               # and representable in the case's dtype


def test_npz_holds_the_json_values_as_float64(exported, docs):
    doc = next(d for d in docs if d["id"] == "concat_L2")
    with np.load(exported / "cases" / "concat_L2.npz", allow_pickle=False) as z:
        assert z["param.attention.v_a"].dtype == np.float64
        assert np.array_equal(z["param.attention.W_a"], np.array(doc["inputs"]["params"]["attention.W_a"], float))
        assert np.array_equal(z["grad.encoder.lstm.weight_ih_l1"],
                              np.array(doc["expected"]["grads"]["encoder.lstm.weight_ih_l1"], float))
        assert np.array_equal(z["tgt"], doc["inputs"]["tgt"]) and z["tgt"].dtype == np.int64
        assert float(z["expected.loss"]) == float(doc["expected"]["loss"])


def test_masked_weights_are_exact_zeros(docs):
    d = next(d for d in docs if d["id"] == "ragged_src_len_1")
    a = np.array(d["expected"]["attention"], dtype=float)
    assert np.all(a[0, :, 0] == 1.0) and np.all(a[0, :, 1:] == 0.0)


# -- checking implementations -------------------------------------------------------------------------

def test_the_numba_implementation_passes_every_case(numba_rows):
    assert {r.case for r in numba_rows} == {c.id for c in vectors.MODEL_CASES + vectors.ATTENTION_CASES}
    bad = [r for r in numba_rows if r.status != "pass"]
    assert not bad, bad[:3]
    assert all(r.max_abs <= 5e-2 * r.atol for r in numba_rows)  # a wide margin: ~1% used at most


class ScaledGradient(NumbaImplementation):
    """A wrong implementation: one gradient 1e-6 too large (relative)."""

    name = "scaled gradient"

    def loss_and_grads(self, *args):
        loss, grads = super().loss_and_grads(*args)
        grads["decoder.lstm.weight_hh_l0"] = grads["decoder.lstm.weight_hh_l0"] * (1 + 1e-6)
        return loss, grads


def test_a_gradient_off_by_1e_6_fails_and_is_named(exported):
    rows = vectors.check(exported, ScaledGradient())
    first = vectors.first_failures(rows)
    f64 = {c.id for c in vectors.MODEL_CASES if c.config.dtype == "float64"}
    assert set(first) == f64  # float32's tolerance is 1e-4: a 1e-6 slip is within its rounding
    for case, row in first.items():
        assert row.quantity == "grad decoder.lstm.weight_hh_l0", (case, row)
        assert "worst at index (" in row.message and "vs expected" in row.message
    assert all(r.status == "pass" for r in rows if r.quantity != "grad decoder.lstm.weight_hh_l0")


class IgnoresMask(NumbaImplementation):
    """A wrong implementation: attention over every source position, padding included."""

    name = "ignores the mask"

    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        return super().attention(score, query, keys, np.ones_like(mask), W_a=W_a, v_a=v_a)


def test_ignoring_the_mask_fails_every_attention_case_at_weights(exported):
    rows = vectors.check(exported, IgnoresMask())
    first = vectors.first_failures(rows)
    # In the saturated general/concat cases the padded positions score far below the best valid one,
    # so their weights underflow to 0 either way; attn_dot_large puts a winning key past src_len.
    assert set(first) == {c.id for c in vectors.ATTENTION_CASES} - {"attn_general_large", "attn_concat_large"}
    for row in first.values():
        assert row.quantity == "weights" and re.search(r"\[b=\d, s=\d\]", row.message), row


class LateLogProbs(NumbaImplementation):
    """A wrong implementation: log-probabilities off from step t = 1 on (and so the loss)."""

    name = "late log_probs"

    def forward(self, *args):
        out = super().forward(*args)
        lp = out.log_probs.copy()
        lp[:, 1:] += 1e-6
        return ForwardOutput(out.loss, lp, out.attention)


def test_the_message_names_the_first_wrong_time_step(exported):
    first = vectors.first_failures(vectors.check(exported, LateLogProbs()))
    row = first["dot_L1"]
    assert row.quantity == "log_probs" and "first wrong at step t=1 (0-based)" in row.message, row


class DotOnlyFloat64(NumbaImplementation):
    name = "dot only"
    scores = ("dot",)
    dtypes = ("float64",)


def test_undeclared_scores_and_dtypes_are_skipped_not_failed(exported):
    rows = vectors.check(exported, DotOnlyFloat64())
    assert not vectors.first_failures(rows)
    skipped = {r.case for r in rows if r.status == "skip"}
    assert "general_L1" in skipped and "float32_dot" in skipped and "dot_L1" not in skipped


class Raises(Implementation):
    name = "raises"

    def forward(self, *args):
        raise RuntimeError("boom")


def test_an_exception_is_an_error_row_and_unimplemented_methods_are_skipped(exported):
    rows = vectors.check(exported, Raises())
    first = vectors.first_failures(rows)
    assert first["tiny_dot"].status == "error" and "RuntimeError: boom" in first["tiny_dot"].message
    assert any(r.quantity == "loss_and_grads" and r.status == "skip" for r in rows)


# -- bad arguments -----------------------------------------------------------------------------------------

def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"dir: no such directory .*nowhere"):
        vectors.check(tmp_path / "nowhere", NumbaImplementation())


def test_a_directory_without_manifest_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"manifest\.json.*not found"):
        vectors.load(tmp_path)


def test_another_format_version_is_rejected(exported, tmp_path):
    d = _copy(exported, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="format_version 99.*reads version 1"):
        vectors.load(d)


def test_a_corrupt_case_file_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    path = d / "cases" / "dot_L1.json"
    path.write_text(path.read_text().replace("e-1", "e-2", 1))
    with pytest.raises(ValueError, match=r"case dot_L1: .*dot_L1\.json.*SHA-256"):
        vectors.load(d)
    path.unlink()
    with pytest.raises(ValueError, match=r"case dot_L1: file .*dot_L1\.json.* is missing"):
        vectors.load(d)


def test_an_unreadable_manifest_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest: cannot read .*manifest\.json"):
        vectors.load(d)


def test_export_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="dir: .* not empty"):
        vectors.export(tmp_path)
    with pytest.raises(ValueError, match="dir: .* not a directory"):
        vectors.export(tmp_path / "notes.txt")


def test_check_wants_an_implementation(exported):
    with pytest.raises(TypeError, match="impl: expected"):
        vectors.check(exported, object())


def test_number_formats():
    import mpmath

    with mpmath.workdps(40):
        third = mpmath.mpf(1) / 3
    assert vectors.format_expected(third) == "3.333333333333333333333333e-1"   # not rounded to 15 digits first
    assert vectors.format_expected(-2.5) == "-2.500000000000000000000000e+0"
    assert vectors.format_expected(mpmath.mpf(0)) == "0." + "0" * 24 + "e+0"
    assert vectors.format_input(0.1) == "0.1000000000000000055511151231257827021181583404541015625"


# -- the command line --------------------------------------------------------------------------------------

def test_cli_check_passes_numba_and_prints_a_table(exported, capsys):
    assert main(["vectors", "check", str(exported)]) == 0
    out, err = capsys.readouterr()
    n = len(vectors.MODEL_CASES) + len(vectors.ATTENTION_CASES)
    assert f"{n} cases: {n} passed, 0 failed, 0 skipped" in out
    assert "tiny_dot" in out and re.search(r"\[ ?1/\d+\] tiny_dot pass", err)  # progress on stderr


def test_cli_check_fails_a_wrong_adapter_and_names_the_quantity(exported, tmp_path, capsys):
    adapter = tmp_path / "wrong.py"
    adapter.write_text(
        "from attnspec.impl.adapter import NumbaImplementation\n"
        "class Wrong(NumbaImplementation):\n"
        "    def loss_and_grads(self, *args):\n"
        "        loss, grads = super().loss_and_grads(*args)\n"
        "        grads['generator.bias'] = grads['generator.bias'] * 1.001\n"
        "        return loss, grads\n")
    report = tmp_path / "report.json"
    assert main(["vectors", "check", str(exported), "--adapter", f"{adapter}:Wrong", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "FAIL tiny_dot: first wrong quantity: grad generator.bias:" in out
    rows = json.loads(report.read_text())
    assert any(r["status"] == "fail" and r["quantity"] == "grad generator.bias" for r in rows)


def test_cli_bad_arguments_exit_2_naming_them(tmp_path, capsys):
    assert main(["vectors", "check", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["vectors", "check", str(tmp_path), "--adapter", "no_such_module_xyz:Impl"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    # Found by fuzzing: a --json that names a directory failed with a traceback after the whole check.
    assert main(["vectors", "check", str(tmp_path), "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["vectors"])


def test_cli_names_targets_as_attnspec_check_does(exported, capsys, monkeypatch):
    """``--adapter`` takes the conformance kit's names: the reference passes, a mutant fails,
    and ``torch`` without PyTorch is a bad argument (exit 2), not a traceback."""
    assert main(["vectors", "check", str(exported), "--adapter", "reference"]) == 0
    assert main(["vectors", "check", str(exported), "--adapter", "mutant:W_c_order_swapped"]) == 1
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "torch", None)             # import torch raises ImportError
    monkeypatch.delitem(sys.modules, "attnspec.impl.torch_model", raising=False)
    assert main(["vectors", "check", str(exported), "--adapter", "torch"]) == 2
    assert "torch" in capsys.readouterr().err


# -- damaged sets whose manifest was re-signed (load validates every case document) -------------------

def _damaged(exported, tmp_path, case_id, edit):
    """A copy of the set with ``edit(doc)`` applied to one case, its SHA-256 in the manifest updated
    (as a hand edit would do), so only the validation of the document itself can catch it."""
    import hashlib

    d = _copy(exported, tmp_path)
    path = d / "cases" / f"{case_id}.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    m = json.loads((d / "manifest.json").read_text())
    for e in m["cases"]:
        if e["id"] == case_id:
            e["sha256"]["json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _nan_everywhere(x):
    return [_nan_everywhere(y) for y in x] if isinstance(x, list) else "nan"


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(doc):
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


@pytest.mark.parametrize("case_id, edit, field", [
    ("tiny_dot", _set("expected", "loss", "nan"), r"expected\.loss"),
    ("tiny_dot", _set("expected", "loss", "-inf"), r"expected\.loss"),
    ("tiny_dot", lambda d: d["expected"].update(log_probs=_nan_everywhere(d["expected"]["log_probs"])),
     r"expected\.log_probs"),
    ("tiny_dot", lambda d: d["expected"]["grads"].update({"generator.bias": _nan_everywhere(
        d["expected"]["grads"]["generator.bias"])}), r"expected\.grads\['generator\.bias'\]"),
    ("attn_dot", lambda d: d["expected"].update(weights=_nan_everywhere(d["expected"]["weights"])),
     r"expected\.weights"),
    ("tiny_dot", lambda d: (d["expected"].update(loss="123.0"), d["tolerance"]["atol"].update(loss=float("nan"))),
     r"tolerance\.atol\.loss"),
    ("tiny_dot", _set("tolerance", "atol", "loss", -1.0), r"tolerance\.atol\.loss"),
    ("tiny_dot", _set("tolerance", "atol", "loss", "x"), r"tolerance\.atol\.loss"),
    ("attn_dot", _set("tolerance", "atol", "ctx", float("inf")), r"tolerance\.atol\.ctx"),
])
def test_non_finite_expected_values_and_bad_tolerances_are_rejected(exported, tmp_path, case_id, edit, field):
    """NaN compares False with everything, so such a set used to pass every check (a wrong verdict)."""
    d = _damaged(exported, tmp_path, case_id, edit)
    with pytest.raises(ValueError, match=rf"case {case_id}: {field}"):
        vectors.load(d)


def test_the_comparison_fails_closed_on_nan_and_bad_tolerances():
    """The second line of defence, for documents that bypass load: NaN never passes."""
    nan = np.array(math.nan)
    assert vectors._compare("c", "loss", 1.0, nan, 1e-12).status == "fail"
    assert vectors._compare("c", "loss", 1.0, np.array(1.0), math.nan).status == "fail"
    assert vectors._compare("c", "loss", 1.0, np.array(1.0), -1.0).status == "fail"
    assert vectors._compare("c", "loss", 1.0, np.array(1.0), "x").status == "fail"
    assert vectors._compare("c", "loss", 1.0, np.array(1.0), 0.0).status == "pass"


def test_a_set_without_cases_or_with_a_case_twice_is_rejected(exported, tmp_path):
    d = _copy(exported, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "cases": []}))
    with pytest.raises(ValueError, match=r"manifest: .* no cases"):
        vectors.load(d)
    (d / "manifest.json").write_text(json.dumps({**m, "cases": m["cases"][:1] * 2}))
    with pytest.raises(ValueError, match=r"manifest: .* case 'tiny_dot' twice"):
        vectors.load(d)


@pytest.mark.parametrize("case_id, edit, field", [
    ("tiny_dot", lambda d: d.pop("tolerance"), r"tolerance: missing"),
    ("tiny_dot", lambda d: d.pop("expected"), r"expected: missing"),
    ("tiny_dot", lambda d: d["tolerance"]["atol"].pop("log_probs"), r"tolerance\.atol\.log_probs: missing"),
    ("tiny_dot", lambda d: d["expected"]["grads"].pop("generator.bias"), r"expected\.grads: .*generator\.bias"),
    ("tiny_dot", lambda d: d["tolerance"]["atol"]["grads"].pop("generator.bias"),
     r"tolerance\.atol\.grads: .*generator\.bias"),
    ("tiny_dot", lambda d: d["inputs"].pop("tgt"), r"inputs\.tgt: missing"),
    ("tiny_dot", _set("expected", "attention", None), r"expected\.attention"),
    ("tiny_dot", _set("config", "foo", 1), r"config: "),
    ("tiny_dot", _set("config", "dtype", "float16"), r"config: .*dtype"),
    ("attn_dot", lambda d: d.pop("score"), r"score: missing"),
    ("attn_dot", _set("dtype", "int8"), r"dtype: "),
    ("attn_dot", _set("inputs", "mask", [[False, True, True]]), r"inputs\.mask"),
    ("attn_dot", _set("inputs", "query", [["0.1"], ["0.2", "0.3"]]), r"inputs\.query"),
    ("attn_general", _set("inputs", "W_a", None), r"inputs\.W_a"),
])
def test_a_missing_or_malformed_field_is_named(exported, tmp_path, case_id, edit, field):
    """A missing field was a bare KeyError traceback (exit 1), an unknown dtype a silent skip."""
    d = _damaged(exported, tmp_path, case_id, edit)
    with pytest.raises(ValueError, match=rf"case {case_id}: {field}"):
        vectors.load(d)


@pytest.mark.parametrize("edit, field", [
    (_set("inputs", "src_len", [1e30]), r"inputs\.src_len: .*int"),
    (_set("inputs", "src_len", [10**30]), r"inputs\.src_len: .*int64"),
    (_set("inputs", "src_len", [True]), r"inputs\.src_len: .*int"),
    (_set("inputs", "src", [[3.5, 3]]), r"inputs\.src: .*int"),
    (_set("inputs", "src", [[99, 3]]), r"inputs\.src: id 99"),
    (_set("inputs", "src_len", [3]), r"inputs\.src_len: "),
    (lambda d: d["inputs"]["params"]["generator.bias"].__setitem__(0, "nan"),
     r"inputs\.params\['generator\.bias'\]: .*finite"),
    (lambda d: d["inputs"]["params"]["generator.bias"].__setitem__(0, 0.5),
     r"inputs\.params\['generator\.bias'\]: .*decimal strings"),
    (lambda d: d["inputs"]["params"]["generator.bias"].append("0.1"), r"inputs\.params\['generator\.bias'\]: .*shape"),
])
def test_input_arrays_are_validated_at_load(exported, tmp_path, edit, field):
    """src_len [1e30] used to end in a bare OverflowError; a NaN parameter in an "error" row."""
    d = _damaged(exported, tmp_path, "tiny_dot", edit)
    with pytest.raises(ValueError, match=rf"case tiny_dot: {field}"):
        vectors.load(d)


def test_cli_a_damaged_set_is_a_bad_argument_not_a_pass_or_a_traceback(exported, tmp_path, capsys):
    d = _damaged(exported, tmp_path, "tiny_dot", _set("expected", "loss", "nan"))
    assert main(["vectors", "check", str(d)]) == 2
    assert "case tiny_dot: expected.loss" in capsys.readouterr().err
