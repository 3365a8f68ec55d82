"""Tests of attnspec.impl.decode: greedy decoding and beam search.

References are independent of the decoding kernels: the teacher-forced
forward pass, and an exhaustive search over every output sequence.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from queue import Empty

import numpy as np
import pytest

from attnspec.impl import decode as decode_api
from attnspec.impl.decode import beam_search, greedy_decode, use_halves
from attnspec.impl.kernels_matmul import use_tiles
from attnspec.impl.kernels_model import encoder_forward
from attnspec.impl.model import forward, init_params, pack_weights
from attnspec.spec.config import Config
from attnspec.spec.compare import assert_close

SCORES = ("dot", "scaled_dot", "general", "concat", "none")
FIELDS = ("tokens", "lengths", "scores", "normalized_scores", "attention")


def model(score="dot", L=2, V_tgt=9, seed=3, **kw):
    """Parameters whose greedy outputs are varied sequences (sharper generator, PAD/BOS unlikely)."""
    cfg = Config(V_src=9, V_tgt=V_tgt, E=4, H=5, L=L, score=score, **kw)
    p = init_params(cfg, seed)
    p["generator.weight"] = p["generator.weight"] * 6
    p["generator.bias"][[cfg.pad_id, cfg.bos_id]] = -4.0
    p["generator.bias"][cfg.eos_id] = -1.0
    return cfg, p


def source(B=4, S=6, seed=1):
    rng = np.random.default_rng(seed)
    src_len = np.array([S, 3, 1, 5][:B])
    src = rng.integers(3, 9, size=(B, S))
    for b in range(B):
        src[b, src_len[b]:] = 0
    return src, src_len


def teacher_forced(p, cfg, src, src_len, res):
    """Forward on BOS + the decoded tokens: per-row sum of log p(emitted), and the attention."""
    B, max_len = res.tokens.shape
    tgt = np.concatenate([np.full((B, 1), cfg.bos_id), res.tokens], axis=1)
    fr = forward(p, cfg, src, src_len, tgt)
    emitted = np.arange(max_len)[None, :] < res.lengths[:, None]
    lp = np.take_along_axis(fr.log_probs, res.tokens[:, :, None], axis=2)[:, :, 0]
    return (lp * emitted).sum(axis=1), fr.attention * emitted[:, :, None], fr.log_probs


@pytest.mark.parametrize("score", SCORES)
def test_beam_of_width_one_is_exactly_greedy(score):
    cfg, p = model(score)
    src, src_len = source()
    g = greedy_decode(p, cfg, src, src_len, 7)
    b = beam_search(p, cfg, src, src_len, 1, 7)
    for f in FIELDS:
        assert np.array_equal(getattr(g, f), getattr(b, f)), f


def test_rows_stop_at_eos():
    # Generator bias favouring EOS by 30 nats: every row emits EOS first (worked by hand).
    cfg, p = model("dot")
    p["generator.bias"][cfg.eos_id] = 30.0
    src, src_len = source()
    for res in (greedy_decode(p, cfg, src, src_len, 5), beam_search(p, cfg, src, src_len, 3, 5)):
        assert np.all(res.lengths == 1) and np.all(res.tokens[:, 0] == cfg.eos_id)
        assert np.all(res.tokens[:, 1:] == cfg.pad_id) and np.all(res.attention[:, 1:] == 0.0)
        assert np.all(res.scores < 0) and np.all(res.scores > -1e-9)


@pytest.mark.parametrize("score", SCORES)
def test_greedy_matches_teacher_forced_forward(score):
    # Same step function; only the GEMM row count differs (all steps at once vs
    # one step): ulp-level differences, 1e-12 relative.
    cfg, p = model(score)
    src, src_len = source()
    g = greedy_decode(p, cfg, src, src_len, 7)
    scores, attention, log_probs = teacher_forced(p, cfg, src, src_len, g)
    assert_close(g.scores, scores, rtol=1e-12, atol=1e-13, name="scores")
    assert_close(g.attention, attention, rtol=1e-12, atol=1e-14, name="attention")
    for b in range(len(src)):
        n = g.lengths[b]
        assert np.array_equal(g.tokens[b, :n], log_probs[b, :n].argmax(axis=1))   # fed back the argmax
        assert (g.tokens[b, n - 1] == cfg.eos_id) or n == 7
        assert np.all(g.tokens[b, :n - 1] != cfg.eos_id) and np.all(g.tokens[b, n:] == cfg.pad_id)
        assert np.all(g.attention[b, n:] == 0.0) and np.all(g.attention[b, :, src_len[b]:] == 0.0)
    assert_close(g.normalized_scores, g.scores / g.lengths, rtol=1e-15, atol=0, name="normalized")


@pytest.mark.parametrize("score", ["dot", "concat"])
def test_beam_hypotheses_match_teacher_forced_forward(score):
    cfg, p = model(score)
    src, src_len = source()
    res = beam_search(p, cfg, src, src_len, 3, 7)
    scores, attention, _ = teacher_forced(p, cfg, src, src_len, res)
    assert_close(res.scores, scores, rtol=1e-12, atol=1e-13, name="scores")
    assert_close(res.attention, attention, rtol=1e-12, atol=1e-14, name="attention")
    assert_close(res.attention.sum(axis=2), (np.arange(7)[None] < res.lengths[:, None]) * 1.0, rtol=0, atol=1e-14, name="sum")


def exhaustive_best(p, cfg, src, src_len, max_len, normalize):
    """Best sequence over all outputs: ended by EOS within max_len, or any max_len tokens without EOS."""
    others = [v for v in range(cfg.V_tgt) if v != cfg.eos_id]
    seqs = [prefix + (cfg.eos_id,) for n in range(max_len) for prefix in itertools.product(others, repeat=n)]
    seqs += list(itertools.product(others, repeat=max_len))
    tokens = np.full((len(seqs), max_len), cfg.pad_id)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    tgt = np.concatenate([np.full((len(seqs), 1), cfg.bos_id), tokens], axis=1)
    tgt[:, -1] = np.where(tgt[:, -1] == cfg.pad_id, cfg.eos_id, tgt[:, -1])  # a non-PAD label for check_batch
    fr = forward(p, cfg, np.repeat(src, len(seqs), 0), np.repeat(src_len, len(seqs)), tgt)
    lens = np.array([len(s) for s in seqs])
    lp = np.take_along_axis(fr.log_probs, tokens[:, :, None], axis=2)[:, :, 0]
    scores = (lp * (np.arange(max_len)[None] < lens[:, None])).sum(axis=1)
    key = scores / lens if normalize else scores
    i = int(np.argmax(key))
    return seqs[i], scores[i]


@pytest.mark.parametrize("normalize", [False, True])
def test_wide_beam_finds_the_exhaustive_optimum(normalize):
    # With beam_size >= every prefix count (V - 1)^t no hypothesis is ever
    # pruned, so beam search must return the best of all sequences.
    cfg, p = model("general", L=1, V_tgt=5)
    src, src_len = source(B=2)
    max_len = 3
    res = beam_search(p, cfg, src, src_len, 70, max_len, length_normalize=normalize)
    for b in range(2):
        seq, score = exhaustive_best(p, cfg, src[b:b + 1], src_len[b:b + 1], max_len, normalize)
        assert tuple(res.tokens[b, :res.lengths[b]]) == seq
        assert_close(res.scores[b], score, rtol=1e-12, atol=1e-13, name="score")


def test_beam_search_is_deterministic_and_float32_runs():
    cfg, p = model("concat")
    src, src_len = source()
    r1, r2 = beam_search(p, cfg, src, src_len, 4, 6), beam_search(p, cfg, src, src_len, 4, 6)
    assert all(np.array_equal(getattr(r1, f), getattr(r2, f)) for f in FIELDS)
    c32 = cfg.replace(dtype="float32")
    r32 = beam_search(p, c32, src, src_len, 4, 6)
    g32 = greedy_decode(p, c32, src, src_len, 6)
    assert r32.scores.dtype == np.float32 and r32.attention.dtype == np.float32
    assert np.all(np.isfinite(r32.scores)) and np.all(np.isfinite(g32.scores))
    assert all(np.array_equal(getattr(g32, f), getattr(beam_search(p, c32, src, src_len, 1, 6), f)) for f in FIELDS)


@pytest.mark.parametrize("name,exc,kw", [
    ("beam_size", ValueError, dict(beam_size=0)),
    ("beam_size", TypeError, dict(beam_size=2.0)),
    ("beam_size", TypeError, dict(beam_size=True)),
    ("max_len", ValueError, dict(max_len=0)),
    ("max_len", TypeError, dict(max_len="3")),
    ("max_len", ValueError, dict(max_len=2**70)),             # found by fuzzing: an int too big for
    ("max_len", ValueError, dict(max_len=10**12)),            # the kernel, or the memory of the machine
    ("beam_size", ValueError, dict(beam_size=10**8)),         # (its out-of-memory killer ended the process)
    ("length_normalize", TypeError, dict(length_normalize=1)),
    ("src_len", ValueError, dict(src_len=np.array([7, 1, 1, 1]))),
    ("src", ValueError, dict(src=np.full((4, 6), 9))),
    ("params", ValueError, dict(params={})),
])
def test_bad_input_is_rejected_naming_the_argument(name, exc, kw):
    cfg, p = model()
    src, src_len = source()
    args = dict(params=p, config=cfg, src=src, src_len=src_len, beam_size=2, max_len=3, **{})
    args.update(kw)
    with pytest.raises(exc, match=name):
        beam_search(**args)
    if name not in ("beam_size", "length_normalize"):
        args.pop("beam_size")
        args.pop("length_normalize", None)
        with pytest.raises(exc, match=name):
            greedy_decode(**args)


@pytest.mark.parametrize("L", [1, 2])
def test_the_decoders_encoder_keeps_one_step_of_caches_and_the_same_states(L):
    """Decoding runs the encoder without the caches a backward pass needs: gates and tanh(c)
    hold one step, overwritten at every step. Its keys and states are bitwise training's,
    on a padded batch (frozen rows), and what it keeps is the last step's caches."""
    cfg, p = model(L=L)
    src, src_len = source()
    w = pack_weights(p, cfg, tiles=False)
    _, gates, c, tanh_c, h, keys, _ = encoder_forward(w, src, src_len)
    _, gates1, c1, tanh_c1, h1, keys1, _ = encoder_forward(w, src, src_len, caches=False)
    assert gates1.shape == (L, 1) + gates.shape[2:] and tanh_c1.shape == (L, 1) + tanh_c.shape[2:]
    for full, lean in ((c, c1), (h, h1), (keys, keys1), (gates[:, -1:], gates1), (tanh_c[:, -1:], tanh_c1)):
        np.testing.assert_array_equal(lean, full)
    assert not np.array_equal(gates[:, :1], gates1)          # the check tells the steps apart


# -- large calls in halves ---------------------------------------------------------------

def test_a_call_in_halves_gives_each_half_what_a_call_on_it_gives(monkeypatch):
    """Forced to halves (at 1 row), greedy and beam search over 4 rows return, row for row
    and bit for bit, two whole calls on rows 0-1 and 2-3, computed on two threads; a beam
    of width one is still exactly greedy decoding."""
    cfg, p = model("concat")
    src, src_len = source()
    whole = [(greedy_decode(p, cfg, s, n, 7), beam_search(p, cfg, s, n, 3, 7))
             for s, n in ((src[:2], src_len[:2]), (src[2:], src_len[2:]))]
    threads = set()

    def recording(kernel):
        def run(*args):
            threads.add(threading.current_thread().name)
            return kernel(*args)
        return run

    monkeypatch.setattr(decode_api, "HALVES_MIN_ROWS", 1)
    monkeypatch.setattr(decode_api, "greedy_kernel", recording(decode_api.greedy_kernel))
    monkeypatch.setattr(decode_api, "beam_kernel", recording(decode_api.beam_kernel))
    halves = greedy_decode(p, cfg, src, src_len, 7), beam_search(p, cfg, src, src_len, 3, 7)
    for i, res in enumerate(halves):
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(res, f), np.concatenate([getattr(w[i], f) for w in whole]),
                                          err_msg=f)
    assert len(threads) == 2
    b1 = beam_search(p, cfg, src, src_len, 1, 7)
    assert all(np.array_equal(getattr(halves[0], f), getattr(b1, f)) for f in FIELDS)


def test_halves_and_tiles_never_meet():
    """Tiles run on Numba's thread pool, which two Python threads must not enter at once."""
    for rows in range(1, 1025):
        for H in (8, 64, 256, 512, 1024):
            assert not (use_tiles(rows, H) and use_halves(2, rows)), (rows, H)
    assert not use_halves(1, 4096)                                 # one source row: no halves


def _decode_in_child(args, queue):
    queue.put(greedy_decode(*args).tokens)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_decodes_in_halves(monkeypatch):
    """The child of a fork that had decoded in halves inherits the second thread's executor
    but not its thread: it must make its own, not wait forever."""
    cfg, p = model()
    src, src_len = source()
    monkeypatch.setattr(decode_api, "HALVES_MIN_ROWS", 1)
    expected = greedy_decode(p, cfg, src, src_len, 7).tokens           # the executor now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=((p, cfg, src, src_len, 7), queue))
    child.start()
    try:
        tokens = queue.get(timeout=60)                # the child needs well under a second
    except Empty:
        pytest.fail("the forked child did not decode within 60 s")
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    np.testing.assert_array_equal(tokens, expected)
