"""PyTorch interop (impl.interop) and agreement with the PyTorch reference model (impl.torch_model).

Tolerance of the float64 agreement tests. Both sides evaluate the same
expressions in IEEE float64 (unit roundoff u = 1.1e-16) but in different
orders (BLAS vs hand-written loops, fused vs separate gates). Forward
rounding errors grow with the number of operations along a path, at most
~ T * L * (E + H + S) ~ 10^2..10^3 here, and backpropagation through time
adds a similar factor at small sizes and moderate weights (no exploding
gradients), giving ~ 1e-13 in the worst case seen. ``1e-10`` leaves three
orders of margin yet fails on any real discrepancy (a wrong gate, mask or
index gives errors ~ 1e-2). Gradients are compared with ``atol = rtol *
max|g|`` per array, because an entry that is zero up to cancellation has no
meaningful relative error.
"""

import subprocess
import sys

import numpy as np
import pytest

from attnspec.impl.interop import from_state_dict, to_state_dict
from attnspec.spec.config import SCORES, Config, param_shapes
from attnspec.spec.compare import assert_close

RTOL64 = 1e-10


def random_params(config, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return {n: (scale * rng.normal(size=s)).astype(config.dtype) for n, s in param_shapes(config).items()}


class FakeTensor:
    """Duck-typed tensor: what from_state_dict may rely on, and nothing more."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._a


CFG = Config(V_src=7, V_tgt=6, E=3, H=4, L=2, score="general")


# -- interop without torch -------------------------------------------------------

def test_to_state_dict_copies_in_state_dict_order():
    params = random_params(CFG)
    shuffled = dict(reversed(list(params.items())))
    sd = to_state_dict(shuffled, CFG)
    assert list(sd) == list(param_shapes(CFG))
    for k in params:
        assert np.array_equal(sd[k], params[k]) and not np.shares_memory(sd[k], params[k])
        assert sd[k].flags["C_CONTIGUOUS"]
    transposed = {"w": np.ones((3, 2)).T}
    assert to_state_dict(transposed)["w"].flags["C_CONTIGUOUS"]


def test_from_state_dict_accepts_duck_typed_tensors_and_casts():
    params = random_params(CFG)
    loaded = from_state_dict({k: FakeTensor(v) for k, v in params.items()}, CFG)
    assert all(np.array_equal(loaded[k], params[k]) and loaded[k].dtype == np.float64 for k in params)
    assert not any(np.shares_memory(loaded[k], params[k]) for k in params)
    f32 = from_state_dict(params, CFG, dtype="float32")
    assert all(v.dtype == np.float32 for v in f32.values())
    assert from_state_dict(params, CFG.replace(dtype="float32"))["generator.bias"].dtype == np.float32


def test_state_dict_round_trip_is_lossless():
    params = random_params(CFG, 1)
    back = from_state_dict(to_state_dict(params, CFG), CFG)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_bad_state_dicts_name_the_problem():
    params = random_params(CFG)
    with pytest.raises(ValueError, match="attention.W_a"):
        from_state_dict({k: v for k, v in params.items() if k != "attention.W_a"}, CFG)
    with pytest.raises(ValueError, match="generator.bias"):
        from_state_dict({**params, "generator.bias": np.zeros(5)}, CFG)
    with pytest.raises(ValueError, match="extra"):
        from_state_dict({**params, "extra": np.zeros(1)}, CFG)
    with pytest.raises(TypeError, match="state_dict"):
        from_state_dict([1, 2], CFG)
    with pytest.raises(TypeError, match="config"):
        from_state_dict(params, "config")
    with pytest.raises(ValueError, match="dtype"):
        from_state_dict(params, CFG, dtype="int64")
    with pytest.raises(TypeError, match="dtype"):
        from_state_dict(params, CFG, dtype="banana")
    # Finite in float64, infinite once cast: found by fuzzing, returned as inf before.
    with pytest.raises(ValueError, match=r"generator\.bias.*beyond the range of float32"):
        from_state_dict({**params, "generator.bias": np.full(6, 1e300)}, CFG, dtype="float32")
    with pytest.raises(TypeError, match="params"):
        to_state_dict([np.zeros(2)])
    with pytest.raises(TypeError, match=r"params\['x'\]"):
        to_state_dict({"x": np.array(["a"])})
    with pytest.raises(ValueError, match="decoder.embedding.weight"):
        to_state_dict({**params, "decoder.embedding.weight": np.full((6, 3), np.nan)}, CFG)


def test_torch_model_import_error_says_how_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import attnspec.impl.torch_model\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install torch==2.13.0" in out.stdout, out.stdout + out.stderr


# -- the PyTorch reference model -------------------------------------------------

VARIANTS = [(score, L, feed) for score in SCORES + ("none",) for L in (1, 2) for feed in (True, False)
            if not (score == "none" and feed)]  # the baseline never feeds its input


def variant_config(score, L, feed, dtype="float64"):
    return Config(V_src=9, V_tgt=8, E=5, H=4, L=L, score=score, input_feeding=feed, dtype=dtype)


def ragged_batch(seed=0):
    """Sources of lengths 5, 2, 1, 4 (unsorted, so packing must reorder) and targets of several lengths."""
    rng = np.random.default_rng(seed)
    src_len = np.array([5, 2, 1, 4])
    src = np.zeros((4, 6), dtype=np.int64)
    for b, n in enumerate(src_len):
        src[b, :n] = rng.integers(3, 9, size=n)
    tgt = np.zeros((4, 6), dtype=np.int64)
    for b, n in enumerate([4, 1, 2, 0]):
        tgt[b, 0], tgt[b, 1:n + 1], tgt[b, n + 1] = 1, rng.integers(3, 8, size=n), 2
    return src, src_len, tgt


@pytest.mark.parametrize("score, L, feed", VARIANTS)
def test_torch_state_dict_keys_are_model_md_names(score, L, feed):
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    cfg = variant_config(score, L, feed)
    sd = torch_model.TorchSeq2Seq(cfg).state_dict()
    assert list(sd) == list(param_shapes(cfg))
    assert all(tuple(v.shape) == param_shapes(cfg)[k] for k, v in sd.items())


@pytest.mark.parametrize("score, L, feed", VARIANTS)
def test_torch_loss_and_grads_agree_with_numba(score, L, feed):
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    from attnspec.impl.model import init_params, loss_and_grads

    cfg = variant_config(score, L, feed)
    params = init_params(cfg, 11)
    model = torch_model.TorchSeq2Seq(cfg)
    import torch

    model.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(params, cfg).items()}, strict=True)
    batch = ragged_batch(L)
    t_loss, t_grads = model.loss_and_grads(*batch)
    n_loss, n_grads = loss_and_grads(params, cfg, *batch)
    assert t_loss == pytest.approx(n_loss, rel=RTOL64, abs=0)
    assert set(n_grads) == set(t_grads)
    for k in t_grads:
        assert_close(n_grads[k], t_grads[k], rtol=RTOL64, name=f"grad {k}")
    assert any(np.abs(g).max() > 1e-3 for g in t_grads.values())  # the comparison is not of zeros


@pytest.mark.parametrize("score", SCORES + ("none",))
def test_torch_forward_agrees_with_numba(score):
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    from attnspec.impl.model import forward

    cfg = variant_config(score, 2, True)
    params = random_params(cfg, 5)  # larger weights than init_params: sharper attention
    batch = ragged_batch(3)
    import torch

    with torch.no_grad():
        t = torch_model.TorchSeq2Seq.from_params(params, cfg)(*batch)
    n = forward(params, cfg, *batch)
    T = batch[2].shape[1] - 1
    label = batch[2][:, 1:] != cfg.pad_id  # padded steps are free to differ
    assert_close(np.asarray(n.log_probs)[label], t.log_probs.numpy()[label], rtol=RTOL64, atol=RTOL64, name="log_probs")
    if score != "none":
        assert t.attention.shape == (4, T, 6)
        assert_close(np.asarray(n.attention)[label], t.attention.numpy()[label], rtol=RTOL64, atol=RTOL64, name="attention")
        past_len = np.broadcast_to(np.arange(6)[None, None, :] >= batch[1][:, None, None], (4, T, 6))
        assert np.all(t.attention.numpy()[past_len] == 0)


def test_torch_final_encoder_state_is_the_state_at_src_len():
    """A source padded with extra PAD columns gives the same loss: the encoder state is frozen past src_len."""
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    cfg = variant_config("dot", 2, True)
    params = random_params(cfg, 2)
    src, src_len, tgt = ragged_batch(0)
    wider = np.concatenate([src, np.zeros((4, 3), dtype=np.int64)], axis=1)
    model = torch_model.TorchSeq2Seq.from_params(params, cfg)
    a, b = model(src, src_len, tgt).loss.item(), model(wider, src_len, tgt).loss.item()
    assert a == pytest.approx(b, rel=1e-14)


def test_torch_float32_agrees_with_float64_reference():
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    cfg = variant_config("concat", 2, True)
    params = random_params(cfg, 4)
    loss64, grads64 = torch_model.loss_and_grads(params, cfg, *ragged_batch(1))
    cfg32 = cfg.replace(dtype="float32")
    loss32, grads32 = torch_model.loss_and_grads(params, cfg32, *ragged_batch(1))
    # float32 roundoff 6e-8 times the same ~1e2..1e3 growth factor as above.
    assert loss32 == pytest.approx(loss64, rel=1e-4)
    for k in grads64:
        assert grads32[k].dtype == np.float32
        assert_close(grads32[k], grads64[k], rtol=1e-3, name=f"grad {k}")


def test_torch_numpy_torch_round_trip_is_lossless():
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    import torch

    cfg = variant_config("concat", 2, True)
    model = torch_model.TorchSeq2Seq(cfg)
    params = from_state_dict(model.state_dict(), cfg)
    model2 = torch_model.TorchSeq2Seq(cfg)
    model2.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(params).items()}, strict=True)
    for (k, a), (k2, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype == torch.float64 and torch.equal(a, b), k
    with torch.no_grad():  # the copy is independent of the original
        next(model2.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(model2.parameters()))


def test_torch_model_rejects_bad_batches():
    torch_model = pytest.importorskip("attnspec.impl.torch_model")
    cfg = variant_config("dot", 1, True)
    model = torch_model.TorchSeq2Seq(cfg)
    src, src_len, tgt = ragged_batch(0)
    with pytest.raises(ValueError, match="src_len"):
        model(src, np.array([5, 2, 0, 4]), tgt)
    with pytest.raises(ValueError, match="tgt"):
        model(src, src_len, tgt[:, 1:])
    with pytest.raises(ValueError, match="src"):
        model(np.full_like(src, 9), src_len, tgt)
    with pytest.raises(TypeError, match="config"):
        torch_model.TorchSeq2Seq("dot")
    with pytest.raises(ValueError, match="params"):
        torch_model.TorchSeq2Seq.from_params({}, cfg)
