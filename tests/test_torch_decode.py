"""Decoding of the PyTorch model (impl.torch_model): greedy_batched and beam_batched against the Numba decoder.

Both sides follow the same rules (docs/implementation.md, Decoding rules), so
in float64 they must return the same tokens and lengths, and scores and
attention equal up to rounding: the two evaluate the same expressions in a
different order (BLAS vs hand-written loops), ~1e-15 relative at these sizes,
so 1e-10 has a wide margin and still fails on any real difference (a wrong
beam or step changes scores by ~1e-2). Tiny vocabularies and generators with
exactly equal logits make the tie rules (lowest id, then beam, then rank)
decide the result, which a ``torch.topk`` that is not stable gets wrong.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from attnspec.impl.cli import main  # noqa: E402
from attnspec.impl.decode import beam_search, greedy_decode  # noqa: E402
from attnspec.impl.model import init_params  # noqa: E402
from attnspec.impl.torch_model import (  # noqa: E402
    TorchImplementation,
    TorchSeq2Seq,
    beam_batched,
    greedy_batched,
)
from attnspec.spec.config import Config  # noqa: E402
from attnspec.spec.properties import REGISTRY  # noqa: E402
from attnspec.spec.protocol import DecodeOutput  # noqa: E402

RTOL = 1e-10
BEAMS = (1, 2, 3, 4)


def problem(score="dot", L=1, feed=True, V_tgt=9, seed=0, eos_bias=0.0, ties=False, dtype="float64",
            B=4, S=6):
    """A config, parameters and a ragged source batch.

    The generator is sharpened so that the decoded sequences vary; ``eos_bias``
    shifts EOS (large: early EOS, very negative: every row reaches max_len).
    With ``ties`` most generator rows (always those of ids 0 and V-1) are zero
    and the biases small integers (equal for 0 and V-1), so several tokens have
    exactly equal logits at every step.
    """
    cfg = Config(V_src=8, V_tgt=V_tgt, E=4, H=5, L=L, score=score, input_feeding=feed, dtype=dtype)
    rng = np.random.default_rng(seed)
    p = init_params(cfg, seed)
    p["generator.weight"] = p["generator.weight"] * 5.0
    if ties:
        zero = rng.random(V_tgt) < 0.6
        zero[[0, V_tgt - 1]] = True                  # ids 0 and V-1 tie at every step
        p["generator.weight"][zero] = 0.0
        p["generator.bias"][:] = rng.integers(0, 3, V_tgt)
        p["generator.bias"][V_tgt - 1] = p["generator.bias"][0]
    p["generator.bias"][cfg.eos_id] += eos_bias
    p = {n: v.astype(dtype) for n, v in p.items()}
    src_len = rng.integers(1, S + 1, size=B)
    src_len[0] = S
    src = rng.integers(3, cfg.V_src, size=(B, S))
    for b in range(B):
        src[b, src_len[b]:] = cfg.pad_id
    return cfg, p, src, src_len


def assert_same(numba, torch_out, what):
    """Same tokens and lengths; scores (and normalized scores) and attention within RTOL."""
    assert np.array_equal(torch_out.tokens, numba.tokens), (what, torch_out.tokens, numba.tokens)
    assert np.array_equal(torch_out.lengths, numba.lengths), what
    assert torch_out.scores.dtype == numba.scores.dtype and torch_out.attention.dtype == numba.attention.dtype
    np.testing.assert_allclose(torch_out.scores, numba.scores, rtol=RTOL, atol=0, err_msg=what)
    np.testing.assert_allclose(torch_out.attention, numba.attention, rtol=0, atol=RTOL, err_msg=what)
    if hasattr(torch_out, "normalized_scores"):
        np.testing.assert_allclose(torch_out.normalized_scores, numba.normalized_scores, rtol=RTOL, atol=0,
                                   err_msg=what)


CASES = {   # name: (problem kwargs, max_len)
    "dot": (dict(), 7),
    "general-L2": (dict(score="general", L=2, seed=1), 6),
    "concat-no-feeding": (dict(score="concat", feed=False, seed=2), 6),
    "scaled_dot": (dict(score="scaled_dot", seed=3), 5),
    "baseline": (dict(score="none", L=2, seed=4), 5),
    "V4-ties": (dict(V_tgt=4, ties=True, seed=5), 6),
    "V5-ties-early-eos": (dict(V_tgt=5, ties=True, eos_bias=1.0, seed=6), 6),
    "V6-early-eos": (dict(V_tgt=6, eos_bias=3.0, seed=7), 6),
    "V6-no-eos-max_len": (dict(V_tgt=6, eos_bias=-40.0, seed=8), 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_torch_decoding_agrees_with_numba(name):
    kw, max_len = CASES[name]
    cfg, p, src, src_len = problem(**kw)
    model = TorchSeq2Seq.from_params(p, cfg)
    assert_same(greedy_decode(p, cfg, src, src_len, max_len), greedy_batched(model, src, src_len, max_len),
                f"{name}: greedy")
    for K in BEAMS:
        for ln in (False, True):
            assert_same(beam_search(p, cfg, src, src_len, K, max_len, ln),
                        beam_batched(model, src, src_len, K, max_len, ln),
                        f"{name}: beam K={K} length_normalize={ln}")


def test_the_cases_reach_early_eos_max_len_and_ties():
    """The cases above do exercise what they are named for (else the agreement proves less)."""
    def beam(name, K):
        kw, max_len = CASES[name]
        cfg, p, src, src_len = problem(**kw)
        return beam_search(p, cfg, src, src_len, K, max_len), max_len, cfg
    out, max_len, cfg = beam("V6-no-eos-max_len", 3)
    assert np.all(out.lengths == max_len) and not np.any(out.tokens == cfg.eos_id)   # live beams at max_len
    out, max_len, _ = beam("V6-early-eos", 2)
    assert out.lengths.min() < max_len
    cfg, p, src, src_len = problem(**CASES["V4-ties"][0])
    log_p = TorchSeq2Seq.from_params(p, cfg)(src, src_len, np.full((4, 2), cfg.bos_id)).log_probs.detach().numpy()
    assert any(len(np.unique(row)) < cfg.V_tgt for row in log_p.reshape(-1, cfg.V_tgt))  # exact ties


@pytest.mark.parametrize("seed", range(6))
def test_random_tiny_vocabularies_agree_with_numba(seed):
    """Random tiny models (V_tgt = 4..6, half of them with exact ties), beam sizes up to wider than V."""
    rng = np.random.default_rng(100 + seed)
    V = int(rng.integers(4, 7))
    cfg, p, src, src_len = problem(V_tgt=V, L=int(rng.integers(1, 3)), ties=bool(seed % 2),
                                   eos_bias=float(rng.normal()), seed=100 + seed, B=5)
    model = TorchSeq2Seq.from_params(p, cfg)
    max_len = int(rng.integers(1, 7))
    assert_same(greedy_decode(p, cfg, src, src_len, max_len), greedy_batched(model, src, src_len, max_len),
                "greedy")
    for K in BEAMS + (2 * V,):
        for ln in (False, True):
            assert_same(beam_search(p, cfg, src, src_len, K, max_len, ln),
                        beam_batched(model, src, src_len, K, max_len, ln), f"K={K} length_normalize={ln}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ties", [False, True])
def test_beam_of_width_one_is_bit_identical_to_greedy(dtype, ties):
    cfg, p, src, src_len = problem(V_tgt=5, ties=ties, dtype=dtype, seed=11)
    model = TorchSeq2Seq.from_params(p, cfg)
    g, b = greedy_batched(model, src, src_len, 6), beam_batched(model, src, src_len, 1, 6)
    for field in DecodeOutput._fields:
        assert np.array_equal(getattr(g, field), getattr(b, field)), field


def test_protocol_methods_return_the_batched_results():
    cfg, p, src, src_len = problem(seed=12)
    impl = TorchImplementation()
    assert impl.supports("beam_search") and impl.supports("greedy_decode")
    model = TorchSeq2Seq.from_params(p, cfg)
    out = impl.beam_search(p, cfg, src, src_len, 3, 5, True)
    assert isinstance(out, DecodeOutput)
    ref = beam_batched(model, src, src_len, 3, 5, True)
    for field in DecodeOutput._fields:
        assert np.array_equal(getattr(out, field), getattr(ref, field)), field
    g = impl.greedy_decode(p, cfg, src, src_len, 5)
    assert isinstance(g, DecodeOutput)
    for field, a in zip(DecodeOutput._fields, greedy_batched(model, src, src_len, 5)):
        assert np.array_equal(getattr(g, field), a), field


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_beam_size_is_a_value_error_naming_it(bad):
    cfg, p, src, src_len = problem()
    with pytest.raises(ValueError, match="beam_size"):
        TorchImplementation().beam_search(p, cfg, src, src_len, bad, 5)
    with pytest.raises(ValueError, match="beam_size"):
        beam_batched(TorchSeq2Seq.from_params(p, cfg), src, src_len, bad, 5)


def test_other_invalid_decoding_arguments_name_the_argument():
    cfg, p, src, src_len = problem()
    impl = TorchImplementation()
    with pytest.raises(TypeError, match="beam_size"):
        impl.beam_search(p, cfg, src, src_len, True, 5)
    with pytest.raises(TypeError, match="length_normalize"):
        impl.beam_search(p, cfg, src, src_len, 2, 5, 1)
    with pytest.raises(ValueError, match="max_len"):
        impl.beam_search(p, cfg, src, src_len, 2, 0)
    with pytest.raises(ValueError, match="max_len"):
        impl.greedy_decode(p, cfg, src, src_len, 0)
    bad_len = src_len.copy()
    bad_len[1] = src.shape[1] + 1
    with pytest.raises(ValueError, match="src_len"):
        impl.beam_search(p, cfg, src, bad_len, 2, 5)


def test_beam_properties_run_on_the_torch_target(tmp_path, capsys):
    """``attnspec check torch --only <beam properties>``: each one runs (PASS), none is skipped."""
    names = [n for n, prop in REGISTRY.items() if "beam" in n or "beam_search" in prop.needs]
    assert len(names) >= 2, names
    report = tmp_path / "report.json"
    code = main(["check", "-q", "torch", "--only", *names, "--max-examples", "6", "--no-vectors",
                 "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(report.read_text())["properties"]
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert all(r["status"] == "PASS" and r["examples"] >= 6 for r in rows), rows
