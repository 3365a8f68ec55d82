"""Adam, gradient clipping, checkpoints, batching and the training loop (impl.optim, impl.checkpoint, impl.train)."""

import io
import json
import math

import numpy as np
import pytest

from attnspec.impl.checkpoint import load_checkpoint, save_checkpoint
from attnspec.impl.optim import Adam, clip_grad_norm, global_grad_norm
from attnspec.spec.config import Config, param_shapes
from attnspec.spec.validate import check_batch


def random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s).astype(config.dtype) for n, s in param_shapes(config).items()}


# -- Adam ----------------------------------------------------------------------

def test_adam_first_step_is_lr_times_g_over_abs_g_plus_eps():
    # At t = 1 the bias corrections give m^ = g and v^ = g^2, so p1 = p0 - lr g / (|g| + eps).
    params = {"w": np.array([1.0, -2.0, 0.5])}
    g = np.array([0.5, -3.0, 1e-9])
    state = Adam.init_state(params)
    Adam(lr=0.1, eps=1e-8).step(params, {"w": g}, state)
    expected = [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 3.0 / (3.0 + 1e-8), 0.5 - 0.1 * 1e-9 / (1e-9 + 1e-8)]
    np.testing.assert_allclose(params["w"], expected, rtol=1e-15)
    assert int(state["step"]) == 1


def test_adam_matches_textbook_formulas_with_bias_correction():
    """Several steps against a scalar loop written from Kingma & Ba's Algorithm 1 (plus L2 decay)."""
    lr, (b1, b2), eps, wd = 0.05, (0.8, 0.99), 1e-6, 0.01
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=4)
    grads = rng.normal(size=(6, 4))
    params = {"w": p0.copy()}
    state = Adam.init_state(params)
    opt = Adam(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for g in grads:
        opt.step(params, {"w": g.copy()}, state)
    for i in range(4):
        p, m, v = p0[i], 0.0, 0.0
        for t, g_all in enumerate(grads, start=1):
            g = g_all[i] + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        # Same operations in a different association: a few ulps apart at most.
        assert params["w"][i] == pytest.approx(p, rel=1e-13), i
        assert state["m.w"][i] == pytest.approx(m, rel=1e-13)
        assert state["v.w"][i] == pytest.approx(v, rel=1e-13)


def test_adam_agrees_with_torch_optim_adam():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    p0, grads = rng.normal(size=(3, 2)), rng.normal(size=(5, 3, 2))
    params, opt = {"w": p0.copy()}, Adam(lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1)
    state = opt.init_state(params)
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.Adam([tp], lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1)
    for g in grads:
        opt.step(params, {"w": g.copy()}, state)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_adam_keeps_float32_in_place():
    params = {"w": np.ones(3, dtype=np.float32)}
    alias = params["w"]
    state = Adam.init_state(params)
    Adam(lr=0.5).step(params, {"w": np.full(3, 2.0, dtype=np.float32)}, state)
    assert params["w"] is alias and alias.dtype == np.float32 and state["m.w"].dtype == np.float32
    np.testing.assert_allclose(alias, 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(betas=(1.0, 0.9)), r"betas\[0\]"),
     (dict(betas=(0.9,)), "betas"), (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
     (dict(lr="0.1"), "lr")],
)
def test_bad_adam_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Adam(**kwargs)


def test_adam_step_rejects_mismatched_grads_and_state():
    params = {"a": np.zeros(2), "b": np.zeros((2, 2))}
    state = Adam.init_state(params)
    with pytest.raises(ValueError, match="grads"):
        Adam().step(params, {"a": np.zeros(2)}, state)
    with pytest.raises(ValueError, match=r"grads\['b'\]"):
        Adam().step(params, {"a": np.zeros(2), "b": np.zeros(2)}, state)
    with pytest.raises(ValueError, match="state"):
        Adam().step(params, {"a": np.zeros(2), "b": np.zeros((2, 2))}, {"step": np.array(0)})
    with pytest.raises(TypeError, match="params"):
        Adam.init_state([np.zeros(2)])


# -- clipping ------------------------------------------------------------------

def test_clip_uses_the_norm_of_all_gradients_together():
    # Each gradient alone (norms 3 and 4) is under 4.5; together their norm is 5.
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}
    norm = clip_grad_norm(grads, 4.5)
    assert norm == 5.0
    np.testing.assert_allclose(grads["a"], [2.7, 0.0], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[0.0], [3.6]], rtol=1e-15)
    assert global_grad_norm(grads) == pytest.approx(4.5, rel=1e-15)


def test_clip_leaves_gradients_under_the_threshold_untouched():
    rng = np.random.default_rng(5)
    grads = {"a": rng.normal(size=7), "b": rng.normal(size=(3, 3))}
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_grad_norm(grads, 1e6)
    assert norm == pytest.approx(math.sqrt(sum((v**2).sum() for v in before.values())), rel=1e-14)
    for k in grads:
        assert np.array_equal(grads[k], before[k])
    clip_grad_norm(grads, None)
    assert all(np.array_equal(grads[k], before[k]) for k in grads)


def test_clip_agrees_with_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    arrays = [rng.normal(size=(4, 3)), rng.normal(size=5)]
    grads = {str(i): a.copy() for i, a in enumerate(arrays)}
    norm = clip_grad_norm(grads, 0.7)
    tparams = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in arrays]
    for p, a in zip(tparams, arrays):
        p.grad = torch.tensor(a)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 0.7)
    assert norm == pytest.approx(float(tnorm), rel=1e-14)
    for i, p in enumerate(tparams):
        # torch divides by norm + 1e-6: a relative difference of 1e-6 / norm.
        np.testing.assert_allclose(grads[str(i)], p.grad.numpy(), rtol=2e-6 / norm)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("inf"), "1"])
def test_bad_clip_norm_is_rejected(clip):
    with pytest.raises((ValueError, TypeError), match="clip_norm"):
        clip_grad_norm({"a": np.ones(2)}, clip)


def test_clip_rejects_non_array_grads():
    with pytest.raises(TypeError, match=r"grads\['a'\]"):
        clip_grad_norm({"a": [1.0, 2.0]}, 1.0)


# -- checkpoints ---------------------------------------------------------------

CFG = Config(V_src=7, V_tgt=6, E=3, H=4, L=2, score="concat")


def test_checkpoint_round_trip_is_exact(tmp_path):
    cfg = CFG.replace(dtype="float32")
    params = random_params(cfg)
    state = Adam.init_state(params)
    Adam().step(params, {k: np.ones_like(v) for k, v in params.items()}, state)
    rng = np.random.default_rng(9)
    rng.normal(size=3)
    path = save_checkpoint(tmp_path / "ckpt.npz", cfg, params, state, step=17, epoch=2,
                           rng_state=rng.bit_generator.state, extra={"note": "x"},
                           arrays={"history.loss": np.array([3.0, 2.5])})
    assert path == tmp_path / "ckpt.npz" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    ck = load_checkpoint(path)
    assert ck.config == cfg and ck.step == 17 and ck.epoch == 2 and ck.extra == {"note": "x"}
    assert list(ck.params) == list(param_shapes(cfg))
    for k in params:
        assert ck.params[k].dtype == np.float32 and np.array_equal(ck.params[k], params[k])
    assert set(ck.optim_state) == set(state)
    for k in state:
        assert ck.optim_state[k].dtype == state[k].dtype and np.array_equal(ck.optim_state[k], state[k])
    restored = np.random.default_rng()
    restored.bit_generator.state = ck.rng_state
    assert np.array_equal(restored.normal(size=4), rng.normal(size=4))
    assert np.array_equal(ck.arrays["history.loss"], [3.0, 2.5])


def test_checkpoint_is_plain_arrays_with_json_inside(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", CFG, random_params(CFG), step=3)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        meta = json.loads(str(z["meta.json"]))
    assert Config.from_json(json.dumps(meta["config"])) == CFG and meta["step"] == 3


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_checkpoint(tmp_path / "nowhere.npz")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "npy", "no_meta", "bad_shape"])
def test_corrupt_checkpoint_names_the_path(tmp_path, damage):
    good = save_checkpoint(tmp_path / "good.npz", CFG, random_params(CFG))
    bad = tmp_path / "bad.npz"
    if damage == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        with np.load(good) as z:
            entries = {k: z[k] for k in z.files}
        if damage == "no_meta":
            del entries["meta.json"]
        else:
            entries["params/generator.bias"] = np.zeros(5)
        with open(bad, "wb") as f:
            np.savez(f, **entries)
    with pytest.raises(ValueError, match="bad.npz") as info:
        load_checkpoint(bad)
    if damage == "bad_shape":
        assert "generator.bias" in str(info.value)


def test_save_validates_before_writing(tmp_path):
    params = random_params(CFG)
    del params["attention.v_a"]
    with pytest.raises(ValueError, match="attention.v_a"):
        save_checkpoint(tmp_path / "c.npz", CFG, params)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "c.npz", CFG, random_params(CFG), step=-1)
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "c.npz", CFG, random_params(CFG), extra={"f": object()})
    with pytest.raises(TypeError, match="path"):
        save_checkpoint(3, CFG, random_params(CFG))
    assert not any(tmp_path.iterdir())


# -- batching ------------------------------------------------------------------

BCFG = Config(V_src=9, V_tgt=9, E=4, H=4)


def test_pad_batch_adds_bos_eos_and_pads():
    from attnspec.impl.train import pad_batch

    b = pad_batch([([5, 6, 7], [4]), ([8], [3, 4, 5]), ([3, 3], [])], BCFG)
    assert b.src.tolist() == [[5, 6, 7], [8, 0, 0], [3, 3, 0]]
    assert b.src_len.tolist() == [3, 1, 2]
    assert b.tgt.tolist() == [[1, 4, 2, 0, 0], [1, 3, 4, 5, 2], [1, 2, 0, 0, 0]]
    check_batch(BCFG, *b)


def test_make_batches_keeps_every_pair_once_and_buckets_by_length():
    from attnspec.impl.train import make_batches

    rng = np.random.default_rng(0)
    pairs = [(rng.integers(3, 9, size=rng.integers(1, 9)).tolist(), rng.integers(3, 9, size=rng.integers(0, 6)).tolist())
             for _ in range(50)]

    def rows(batches):
        out = []
        for b in batches:
            assert b.src.shape[0] <= 8
            check_batch(BCFG, *b)
            for s, n, t in zip(b.src, b.src_len, b.tgt):
                out.append((tuple(s[:n]), tuple(t[1:list(t).index(2)])))
        return sorted(out)

    sorted_batches = make_batches(pairs, BCFG, 8, seed=1)
    plain = make_batches(pairs, BCFG, 8, sort_by_length=False)
    assert rows(sorted_batches) == rows(plain) == sorted((tuple(s), tuple(t)) for s, t in pairs)
    assert len(plain) == math.ceil(50 / 8)
    assert plain[0].src_len.tolist() == [len(s) for s, _ in pairs[:8]]  # no seed, no sort: given order
    padding = lambda bs: sum(b.src.size - b.src_len.sum() for b in bs)  # noqa: E731
    assert padding(sorted_batches) < padding(plain)


def test_make_batches_is_reproducible_from_the_seed():
    from attnspec.impl.train import make_batches

    pairs = [([3 + i % 5], [3 + i % 4]) for i in range(40)]
    a, b, c = (make_batches(pairs, BCFG, 4, sort_by_length=False, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x.src, y.src) for x, y in zip(a, b))
    assert not all(np.array_equal(x.src, y.src) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "pairs, match",
    [([([3], [0])], r"pairs\[0\].*PAD"), ([([3], [4]), ([3], [1, 4])], r"pairs\[1\].*BOS"),
     ([([], [4])], r"pairs\[0\].*empty"), ([([3, 9], [4])], r"pairs\[0\].*vocabulary"),
     ([([3.5], [4])], r"pairs\[0\]"), ([(3, 4, 5)], r"pairs\[0\]"), ([], "pairs"), ("abc", "pairs")],
)
def test_bad_pairs_name_the_pair(pairs, match):
    from attnspec.impl.train import make_batches, pad_batch

    for fn in (lambda: pad_batch(pairs, BCFG), lambda: make_batches(pairs, BCFG, 2)):
        with pytest.raises((ValueError, TypeError), match=match):
            fn()


def test_bad_batch_size_and_seed_are_rejected():
    from attnspec.impl.train import make_batches

    with pytest.raises(ValueError, match="batch_size"):
        make_batches([([3], [4])], BCFG, 0)
    with pytest.raises(ValueError, match="seed"):
        make_batches([([3], [4])], BCFG, 2, seed=-1)
    with pytest.raises(TypeError, match="config"):
        make_batches([([3], [4])], "cfg", 2)


# -- progress ------------------------------------------------------------------

class TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_writes_few_lines_when_not_a_tty():
    from attnspec.impl.train import Progress

    out = io.StringIO()
    bar = Progress(200, stream=out)
    for step in range(1, 201):
        bar.update(step, 1.0 / step, 10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 11 and "\r" not in out.getvalue()
    assert lines[-1].startswith("step 200/200") and "loss" in lines[-1] and "tok/s" in lines[-1]


def test_progress_redraws_one_line_on_a_tty_and_can_be_disabled():
    from attnspec.impl.train import Progress

    out = TTY()
    bar = Progress(5, stream=out, interval=0.0)
    for step in range(1, 6):
        bar.update(step, 2.0, 10)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 5 and text.count("\n") == 1 and "step 5/5" in text
    quiet = TTY()
    bar = Progress(5, stream=quiet, enabled=False)
    bar.update(1, 2.0, 10)
    bar.close()
    assert quiet.getvalue() == ""


# -- training ------------------------------------------------------------------

TCFG = Config(V_src=8, V_tgt=8, E=8, H=16)


def reverse_pairs(n, seed):
    """The reversal task on ids 3..7: y = reversed(x)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        x = rng.integers(3, 8, size=rng.integers(1, 5)).tolist()
        pairs.append((x, x[::-1]))
    return pairs


def test_training_learns_to_reverse():
    from attnspec.impl.optim import Adam
    from attnspec.impl.train import train

    res = train(TCFG, reverse_pairs(200, 0), steps=300, batch_size=16, optimizer=Adam(lr=1e-2),
                valid_pairs=reverse_pairs(50, 1), eval_every=100, progress=False)
    loss = res.history["loss"]
    assert res.history["step"].tolist() == list(range(1, 301)) and np.all(np.isfinite(loss))
    # Chance level is log(8) ~ 2.08 per label; a model that learned the task is far below.
    assert loss[:10].mean() > 1.5, loss[:10]
    assert loss[-20:].mean() < 0.2 * loss[:10].mean(), loss[-20:]
    assert res.history["eval_step"].tolist() == [100, 200, 300]
    assert res.history["eval_loss"][-1] < 0.5, res.history["eval_loss"]


def test_resume_gives_bit_identical_parameters(tmp_path):
    from attnspec.impl.train import train

    pairs = reverse_pairs(40, 2)
    kw = dict(batch_size=8, seed=3, clip_norm=0.5, progress=False)  # 5 batches: the run crosses epochs
    whole = train(TCFG, pairs, steps=12, **kw)
    path = tmp_path / "ckpt.npz"
    first = train(TCFG, pairs, steps=7, checkpoint_path=path, **kw)
    assert load_checkpoint(path).step == 7
    second = train(TCFG, pairs, steps=12, resume_from=path, checkpoint_path=path, **kw)
    assert load_checkpoint(path).step == 12 and load_checkpoint(path).epoch == 2
    for k in whole.params:
        assert np.array_equal(whole.params[k], second.params[k]), k
    for k in whole.optim_state:
        assert np.array_equal(whole.optim_state[k], second.optim_state[k]), k
    assert np.array_equal(whole.history["loss"], second.history["loss"])
    assert np.array_equal(first.history["loss"], whole.history["loss"][:7])
    # Not a tautology: the parameters did move, and another seed gives others.
    other = train(TCFG, pairs, steps=12, **{**kw, "seed": 4})
    assert not np.array_equal(whole.params["generator.weight"], other.params["generator.weight"])


def test_resume_refuses_a_different_run(tmp_path):
    from attnspec.impl.optim import Adam
    from attnspec.impl.train import train

    pairs, path = reverse_pairs(20, 2), tmp_path / "ckpt.npz"
    train(TCFG, pairs, steps=2, batch_size=8, checkpoint_path=path, progress=False)
    for change, match in ((dict(seed=1), "seed"), (dict(batch_size=4), "batch_size"),
                          (dict(optimizer=Adam(lr=0.1)), "optimizer"), (dict(clip_norm=1.0), "clip_norm")):
        with pytest.raises(ValueError, match=match):
            train(TCFG, pairs, steps=4, resume_from=path, progress=False, **{"batch_size": 8, **change})
    with pytest.raises(ValueError, match="train_pairs"):
        train(TCFG, reverse_pairs(20, 3), steps=4, batch_size=8, resume_from=path, progress=False)
    with pytest.raises(ValueError, match="config"):
        train(TCFG.replace(H=8), pairs, steps=4, batch_size=8, resume_from=path, progress=False)


def test_checkpoints_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
    import attnspec.impl.train as train_mod

    saved = []
    real_save = train_mod.save_checkpoint
    monkeypatch.setattr(train_mod, "save_checkpoint", lambda *a, **k: saved.append(k["step"]) or real_save(*a, **k))
    params = train_mod.init_params(TCFG, 5)
    before = {k: v.copy() for k, v in params.items()}
    res = train_mod.train(TCFG, reverse_pairs(20, 2), steps=7, batch_size=8, params=params,
                          checkpoint_path=tmp_path / "c.npz", checkpoint_every=3, progress=False)
    assert saved == [3, 6, 7]
    assert all(np.array_equal(params[k], before[k]) for k in params), "train must not modify the given params"
    ck = load_checkpoint(tmp_path / "c.npz")
    assert all(np.array_equal(ck.params[k], res.params[k]) for k in res.params)
    assert np.array_equal(ck.arrays["history.loss"], res.history["loss"])


def test_evaluate_weights_batches_by_their_labels():
    from attnspec.impl.model import forward
    from attnspec.impl.train import evaluate, make_batches

    params = random_params(TCFG, 1)
    batches = make_batches(reverse_pairs(6, 4), TCFG, 3, sort_by_length=False)
    n = [int((b.tgt[:, 1:] != TCFG.pad_id).sum()) for b in batches]
    losses = [float(forward(params, TCFG, *b).loss) for b in batches]
    assert evaluate(params, TCFG, batches) == pytest.approx(np.dot(n, losses) / sum(n), rel=1e-14)


def test_non_finite_loss_stops_training(monkeypatch):
    import attnspec.impl.train as train_mod

    monkeypatch.setattr(train_mod, "loss_and_grads",
                        lambda params, *a: (float("nan"), {k: np.zeros_like(v) for k, v in params.items()}))
    with pytest.raises(FloatingPointError, match="step 1"):
        train_mod.train(TCFG, reverse_pairs(4, 0), steps=3, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(steps=0), "steps"), (dict(checkpoint_every=2), "checkpoint_path"),
     (dict(params={}, resume_from="x.npz"), "params"), (dict(optimizer="adam"), "optimizer"),
     (dict(clip_norm=-1.0), "clip_norm"), (dict(seed=-2), "seed"), (dict(eval_every=-1), "eval_every")],
)
def test_bad_training_arguments_name_the_argument(kwargs, match):
    from attnspec.impl.train import train

    with pytest.raises((ValueError, TypeError), match=match):
        train(TCFG, reverse_pairs(4, 0), **{"steps": 2, "progress": False, **kwargs})
