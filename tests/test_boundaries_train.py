"""Bad input at the training, checkpoint and demo boundaries: a clear error naming the argument,
raised before any long work (impl.checkpoint, impl.train, impl.optim, impl.demo, impl.cli, spec.config)."""

import json
import os
import zipfile

import numpy as np
import pytest

from attnspec.impl.checkpoint import load_checkpoint, save_checkpoint
from attnspec.impl.cli import main
from attnspec.impl.model import init_params
from attnspec.impl.optim import Adam
from attnspec.impl.train import evaluate, make_batches, train
from attnspec.spec.config import Config

CFG = Config(V_src=7, V_tgt=7, E=3, H=4)
PAIRS = [([3, 4], [4, 3]), ([5], [5])]


def _rewrite(path, change):
    """Rewrite the checkpoint at ``path`` after ``change(entries)`` edits its entries in place."""
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    change(entries)
    with open(path, "wb") as f:
        np.savez(f, **entries)


def _set_meta(**fields):
    def change(entries):
        meta = json.loads(str(entries["meta.json"]))
        meta.update(fields)
        entries["meta.json"] = np.array(json.dumps(meta))
    return change


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint written by ``train`` (with optimizer state and train settings)."""
    path = tmp_path / "a.npz"
    train(CFG, PAIRS, steps=1, batch_size=2, checkpoint_path=path, progress=False)
    return path


# -- load_checkpoint: malformed metadata and members -------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda e: e.__setitem__("meta.json", np.array("5")), "meta.json: expected a JSON object"),
    (lambda e: e.__setitem__("meta.json", np.array("null")), "meta.json: expected a JSON object"),
    (_set_meta(step="abc"), "step: expected an int >= 0"),
    (_set_meta(step=None), "step: expected an int >= 0"),
    (_set_meta(step=float("inf")), "step: expected an int >= 0"),
    (_set_meta(step=-3), "step: expected an int >= 0"),
    (_set_meta(epoch=2.5), "epoch: expected an int >= 0"),
    (_set_meta(extra=[1]), "extra: expected a JSON object"),
    (_set_meta(rng_state=7), "rng_state: expected null or a JSON object"),
    (_set_meta(has_optim_state="yes"), "has_optim_state: expected true or false"),
])
def test_malformed_checkpoint_metadata_names_the_path(ckpt, change, message):
    _rewrite(ckpt, change)
    with pytest.raises(ValueError, match="a.npz") as info:
        load_checkpoint(ckpt)
    assert message in str(info.value)


def test_npy_member_claiming_more_data_than_it_holds_is_refused_before_allocating(ckpt):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"
    header = header + " " * (118 - len(header)) + "\n"
    with zipfile.ZipFile(ckpt, "a") as zf:  # 130 bytes that would ask np.load for 745 GiB
        zf.writestr("arrays/x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    with pytest.raises(ValueError, match="a.npz") as info:
        load_checkpoint(ckpt)
    assert "arrays/x.npy" in str(info.value) and "800000000000 bytes" in str(info.value)


def test_memory_error_while_reading_names_the_path(ckpt, monkeypatch):
    class Archive:  # what np.load returns, with a member too large to allocate
        files = ["meta.json"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __getitem__(self, key):
            raise MemoryError("Unable to allocate 745. GiB")

    monkeypatch.setattr(np.lib.npyio, "NpzFile", Archive)
    monkeypatch.setattr(np, "load", lambda *a, **k: Archive())
    with pytest.raises(ValueError, match="a.npz.*745"):
        load_checkpoint(ckpt)


def test_unknown_compression_method_names_the_path(ckpt):
    data = bytearray(ckpt.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = data.find(signature)
        while at >= 0:
            data[at + offset:at + offset + 2] = (99).to_bytes(2, "little")  # no such method
            at = data.find(signature, at + 4)
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="a.npz.*compression method"):
        load_checkpoint(ckpt)


def test_non_finite_optimizer_state_is_refused(ckpt):
    _rewrite(ckpt, lambda e: e.__setitem__("optim/v.generator.bias", e["optim/v.generator.bias"] * np.nan))
    with pytest.raises(ValueError, match=r"a\.npz.*optim_state\['v\.generator\.bias'\]: contains NaN"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="optim_state"):
        train(CFG, PAIRS, steps=2, batch_size=2, resume_from=ckpt, progress=False)


def test_resume_with_an_optimizer_state_that_does_not_fit_names_the_checkpoint(ckpt):
    _rewrite(ckpt, lambda e: e.pop("optim/m.generator.bias"))
    with pytest.raises(ValueError, match=r"resume_from: .*a.npz.*does not fit.*m\.generator\.bias"):
        train(CFG, PAIRS, steps=2, batch_size=2, resume_from=ckpt, progress=False)


def test_resume_with_malformed_train_settings_names_the_checkpoint(ckpt):
    _rewrite(ckpt, _set_meta(extra={"train_settings": [1]}))
    with pytest.raises(ValueError, match="resume_from: .*a.npz.*train_settings"):
        train(CFG, PAIRS, steps=2, batch_size=2, resume_from=ckpt, progress=False)


# -- save_checkpoint: the temporary file ---------------------------------------------

def test_save_does_not_follow_a_symlink_planted_at_the_temporary_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    os.symlink(victim, tmp_path / "ckpt.npz.tmp")
    path = save_checkpoint(tmp_path / "ckpt.npz", CFG, init_params(CFG, 0))
    assert victim.read_text() == "precious data"
    assert not path.is_symlink() and load_checkpoint(path).config == CFG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "ckpt.npz.tmp", "victim.txt"]


def test_save_gives_up_when_every_temporary_name_is_taken(tmp_path, monkeypatch):
    import attnspec.impl.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint.secrets, "token_hex", lambda n: "taken")
    (tmp_path / "ckpt.npz.taken.tmp").write_text("someone else's")
    with pytest.raises(FileExistsError, match="path: no free temporary name"):
        save_checkpoint(tmp_path / "ckpt.npz", CFG, init_params(CFG, 0))
    assert (tmp_path / "ckpt.npz.taken.tmp").read_text() == "someone else's"


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt.npz", CFG, init_params(CFG, 0))
    assert not any(tmp_path.iterdir())


# -- train: arguments checked before the first step ---------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(checkpoint_path="{tmp}/no_such_dir/x.npz"), ValueError, "checkpoint_path: folder"),
    (dict(checkpoint_path="{tmp}"), ValueError, "checkpoint_path: .* is a directory"),
    (dict(checkpoint_path=3), TypeError, "checkpoint_path: expected a str or os.PathLike"),
    (dict(stream=5), TypeError, "stream: expected a file-like object with a write method, got int"),
])
def test_train_checks_checkpoint_path_and_stream_before_the_first_step(tmp_path, monkeypatch, kwargs, error,
                                                                       message):
    import attnspec.impl.train as train_mod

    def no_step(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(train_mod, "loss_and_grads", no_step)
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message):
        train(CFG, PAIRS, steps=300, batch_size=2, **kwargs)


def test_progress_accepts_a_stream_without_flush():
    class Writer:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

    w = Writer()
    train(CFG, PAIRS, steps=2, batch_size=2, stream=w)
    assert "step 2/2" in w.text


# -- Adam: eps in the parameters' dtype; non-finite results ---------------------------

def test_adam_eps_that_vanishes_in_float32_is_rejected():
    params = {"w": np.zeros(3, np.float32)}
    opt = Adam(eps=1e-50)
    with pytest.raises(ValueError, match="eps: 1e-50 is below the smallest normal float32"):
        opt.step(params, {"w": np.zeros(3, np.float32)}, opt.init_state(params))
    assert np.array_equal(params["w"], np.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        train(CFG.replace(dtype="float32"), PAIRS, steps=1, batch_size=2, optimizer=opt, progress=False)
    train(CFG, PAIRS, steps=1, batch_size=2, optimizer=opt, progress=False)  # 1e-50 is normal in float64


def test_train_reports_non_finite_parameters_with_the_step(monkeypatch):
    def poison(self, params, grads, state):
        params["generator.bias"][0] = np.nan

    monkeypatch.setattr(Adam, "step", poison)
    with pytest.raises(FloatingPointError, match=r"step 1: .*params\['generator.bias'\]"):
        train(CFG, PAIRS, steps=3, batch_size=2, progress=False)


# -- Config: NumPy dtypes -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.dtype("float32"), np.float32, "float32"])
def test_config_normalises_numpy_dtypes_to_their_name(dtype, tmp_path):
    c = Config(V_src=5, V_tgt=5, E=2, H=2, dtype=dtype)
    ref = Config(V_src=5, V_tgt=5, E=2, H=2, dtype="float32")
    assert c.dtype == "float32" and type(c.dtype) is str and c == ref and hash(c) == hash(ref)
    assert Config.from_json(c.to_json()) == ref
    save_checkpoint(tmp_path / "c.npz", c, init_params(c, 0))


@pytest.mark.parametrize("dtype, error", [(np.float16, ValueError), (np.dtype("int64"), ValueError),
                                          (float, TypeError), (None, TypeError)])
def test_config_rejects_other_dtypes(dtype, error):
    with pytest.raises(error, match="dtype"):
        Config(V_src=5, V_tgt=5, E=2, H=2, dtype=dtype)


# -- the CLI: malformed demo checkpoints, huge --beam, --out a file ---------------------

DEMO_META = {"task": "dates", "src_chars": "abc", "tgt_chars": "0123", "max_target": 5}


def _demo_ckpt(path, **meta):
    c = Config(V_src=len(DEMO_META["src_chars"]) + 3, V_tgt=len(DEMO_META["tgt_chars"]) + 3, E=2, H=2)
    return save_checkpoint(path, c, init_params(c, 0), extra={"demo": {**DEMO_META, **meta}})


def _one_line_error(argv, capsys):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnspec {argv[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("meta, message", [
    (dict(src_chars=5), "src_chars: expected a non-empty str, got 5"),
    (dict(tgt_chars="0012"), "tgt_chars: each character must appear once"),
    (dict(src_chars="abcd"), "src_chars: 4 characters (+ 3 special ids) do not match the model's V_src = 6"),
    (dict(max_target=[1]), "max_target: expected an int in [1, 100000], got [1]"),
    (dict(max_target="abc"), "max_target: expected an int in [1, 100000], got 'abc'"),
    (dict(max_target=10**12), "max_target: expected an int in [1, 100000], got 1000000000000"),
    (dict(max_target=-5), "max_target"),
    (dict(max_target=3.9), "max_target"),
])
def test_translate_rejects_malformed_demo_metadata(tmp_path, capsys, meta, message):
    ckpt = _demo_ckpt(tmp_path / "d.npz", **meta)
    err = _one_line_error(["translate", ckpt, "ab"], capsys)
    assert "d.npz" in err and message in err


@pytest.mark.parametrize("beam", ["99999999999999999999999", "100000000", "8"])
def test_translate_caps_the_beam_at_the_target_vocabulary(tmp_path, capsys, beam):
    ckpt = _demo_ckpt(tmp_path / "d.npz")
    err = _one_line_error(["translate", ckpt, "ab", "--beam", beam], capsys)
    assert f"beam: expected an int in [1, 7] (the target vocabulary size), got {beam}" in err
    assert main(["translate", str(ckpt), "ab", "--beam", "7"]) == 0


def test_demo_out_an_existing_file_fails_before_training(tmp_path, capsys, monkeypatch):
    import attnspec.impl.demo as demo

    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(demo, "train", no_training)
    (tmp_path / "file").write_text("x")
    err = _one_line_error(["demo", "--task", "reverse", "--steps", "1", "--quiet", "--examples", "0",
                           "--out", tmp_path / "file"], capsys)
    assert "out: " in err and "is not a directory" in err
    err = _one_line_error(["demo", "--task", "reverse", "--steps", "1", "--quiet", "--examples", "0",
                           "--out", tmp_path / "file" / "sub"], capsys)
    assert "out: " in err
    (tmp_path / "out" / "reverse.npz").mkdir(parents=True)  # where the checkpoint would go
    err = _one_line_error(["demo", "--task", "reverse", "--steps", "1", "--quiet", "--examples", "0",
                           "--out", tmp_path / "out"], capsys)
    assert "reverse.npz', where the demo writes, is a directory" in err


def test_demo_compare_out_an_existing_file_fails_before_training(tmp_path, capsys, monkeypatch):
    import attnspec.impl.compare as compare

    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(compare, "compare_bottleneck", no_training)
    (tmp_path / "file").write_text("x")
    err = _one_line_error(["demo", "--task", "copy", "--compare", "--out", tmp_path / "file"], capsys)
    assert "out: " in err and "is not a directory" in err


@pytest.mark.parametrize("error, message", [
    (MemoryError("Allocation failed (probably too large)."), "out of memory (Allocation failed"),
    (OverflowError("Python int too large to convert to C long"), "error: Python int too large"),
])
def test_cli_reports_memory_and_overflow_errors_in_one_line(tmp_path, capsys, monkeypatch, error, message):
    import attnspec.impl.demo as demo

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(demo, "predict", fail)
    err = _one_line_error(["translate", _demo_ckpt(tmp_path / "d.npz"), "ab"], capsys)
    assert message in err


def test_translate_checks_the_heatmap_folder_before_translating(tmp_path, capsys):
    err = _one_line_error(["translate", _demo_ckpt(tmp_path / "d.npz"), "ab", "--heatmap", tmp_path / "no" / "h.png"],
                          capsys)
    assert "heatmap: no folder" in err


def test_demo_caps_the_source_length(capsys):
    """Found by fuzzing: --max-len 100000000 made the task's strings for minutes before any output."""
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--task", "reverse", "--max-len", "100000000"])
    assert exit_.value.code == 2 and "--max-len: expected at most 200" in capsys.readouterr().err


def test_evaluate_names_malformed_batches():
    """Found by fuzzing: a Batch of lists or a 1-d tgt gave IndexError/TypeError from inside."""
    c = Config(V_src=7, V_tgt=7, E=2, H=2)
    p = init_params(c, 0)
    good = make_batches([([3, 4], [4, 3])], c, batch_size=1)[0]
    with pytest.raises(ValueError, match="tgt"):
        evaluate(p, c, [good._replace(tgt=good.tgt[0])])
    with pytest.raises(TypeError, match="batches"):
        evaluate(p, c, np.array([]))


def test_train_names_the_argument_that_is_wrong(tmp_path):
    """Found by fuzzing: errors in valid_pairs and resume_from said 'pairs' and 'path'."""
    c = Config(V_src=7, V_tgt=7, E=2, H=2)
    ok = [([3, 4], [4, 3])]
    with pytest.raises(ValueError, match="valid_pairs"):
        train(c, ok, steps=1, valid_pairs=[([3, 99], [3])], progress=False)
    with pytest.raises(ValueError, match="train_pairs"):
        train(c, [], steps=1, progress=False)
    with pytest.raises(TypeError, match="resume_from"):
        train(c, ok, steps=1, resume_from=3, progress=False)


@pytest.mark.parametrize("text", ["{", "[" * 100000, 5])
def test_config_from_json_names_the_config(text):
    with pytest.raises((TypeError, ValueError), match="config: "):
        Config.from_json(text)
