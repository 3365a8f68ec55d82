"""The demo: train on a generated task, report held-out accuracy, look at attention.

``run_demo`` trains the Numba model with ``attnspec.impl.train.train``, checks
exact-match accuracy (greedy decoding) on a validation set every
``eval_every`` steps and stops once it reaches ``target`` (or the time budget
is spent), then reports accuracy on a separate test set, saves a checkpoint
that also holds the vocabularies, and draws attention heatmaps of a few test
examples. ``translate`` loads such a checkpoint and decodes one input.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..spec.config import BASELINE, SCORES, Config
from .checkpoint import load_checkpoint, save_checkpoint
from .decode import beam_search, greedy_decode
from .optim import Adam
from .tasks import TASKS, Task, Vocab, make_task
from .train import EvalReport, train

__all__ = ["DEFAULTS", "DemoResult", "predict", "exact_match", "run_demo", "translate"]

# Chosen by measurement on 2 cores shared with other jobs: the dates task reaches
# 99.5% validation exact match after 600-800 steps (about 30 s) for seeds 0-3.
# float64, the reference precision, is only ~20% slower than float32 here.
DEFAULTS = {
    "dates": dict(E=32, H=64, batch_size=64, lr=3e-3, steps=5000, eval_every=200, target=0.995),
    "reverse": dict(E=32, H=64, batch_size=64, lr=3e-3, steps=3000, eval_every=200, target=0.99),
    "copy": dict(E=32, H=64, batch_size=64, lr=3e-3, steps=3000, eval_every=200, target=0.99),
}
DTYPE = "float64"
MAX_TARGET = 100_000
"""The largest ``max_target`` ``translate`` accepts from a checkpoint: a guard against a corrupt
value (10**12 would make the decoder ask for terabytes), far above any task's longest target."""


def one_blas_thread():
    """A context in which BLAS (OpenBLAS, used by Numba's matrix products) runs on one thread.

    The matrices here are small (H x 4H); a multi-threaded BLAS spends more time
    synchronising than multiplying, and on a busy machine each product waits for
    a free core: measured 25 ms per training step on one thread against 430 ms
    with OpenBLAS's default two threads, on 2 cores shared with other jobs. Needs
    ``threadpoolctl``; without it nothing changes (set ``OPENBLAS_NUM_THREADS=1``
    in the environment instead).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    import scipy.linalg.cython_blas  # noqa: F401  the BLAS Numba calls; limits reach loaded libraries only

    return threadpool_limits(limits=1, user_api="blas")


def _on_one_blas_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)
    return wrapper


# -- decoding text -------------------------------------------------------------

def predict(params, config: Config, src_vocab: Vocab, tgt_vocab: Vocab, sources, max_target: int, *,
            beam: int = 1, batch_size: int = 500) -> list[tuple[str, np.ndarray]]:
    """Decode each source string; returns ``(output text, attention [T_out, S])`` per source.

    ``T_out`` counts the emitted tokens (the final EOS included), ``S`` the
    source characters. Sources are decoded in batches of similar length.
    """
    encoded = [src_vocab.encode(s, name="source") for s in sources]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    out: list = [None] * len(encoded)
    for k in range(0, len(order), batch_size):
        rows = order[k:k + batch_size]
        lens = np.array([len(encoded[i]) for i in rows], dtype=np.int64)
        src = np.full((len(rows), lens.max()), config.pad_id, dtype=np.int64)
        for j, i in enumerate(rows):
            src[j, :lens[j]] = encoded[i]
        if beam == 1:
            res = greedy_decode(params, config, src, lens, max_target + 1)
        else:
            res = beam_search(params, config, src, lens, beam, max_target + 1)
        for j, i in enumerate(rows):
            n = int(res.lengths[j])
            out[i] = (tgt_vocab.decode(res.tokens[j, :n]), res.attention[j, :n, :lens[j]])
    return out


def exact_match(params, config: Config, task: Task, pairs) -> float:
    """Fraction of ``(source, target)`` pairs whose greedy output equals the target exactly."""
    outputs = predict(params, config, task.src_vocab, task.tgt_vocab, [s for s, _ in pairs], task.max_target)
    return float(np.mean([o == t for (o, _), (_, t) in zip(outputs, pairs)]))


# -- the demo ------------------------------------------------------------------

@dataclass
class DemoResult:
    """What ``run_demo`` measured and wrote."""

    task: str
    score: str
    steps: int
    seconds: float
    valid_accuracy: float
    test_accuracy: float
    stopped: str                      # "target", "time budget" or "steps"
    checkpoint: Path
    heatmap: Path | None
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, valid acc)
    by_form: dict[str, float] = field(default_factory=dict)


def build(task_name: str, *, score: str = "dot", seed: int = 0, max_len: int | None = None,
          steps: int | None = None) -> tuple[Task, Config, dict]:
    """The task, model configuration and training settings of the demo for ``task_name``."""
    if task_name not in TASKS:
        raise ValueError(f"task: unknown task {task_name!r}; expected one of {TASKS}")
    if score not in SCORES + (BASELINE,):
        raise ValueError(f"score: unknown score {score!r}; expected one of {SCORES + (BASELINE,)}")
    settings = dict(DEFAULTS[task_name])
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        settings["steps"] = steps
    extra = {} if task_name == "dates" or max_len is None else {"max_len": max_len}
    task = make_task(task_name, seed, **extra)
    config = Config(V_src=len(task.src_vocab), V_tgt=len(task.tgt_vocab), E=settings["E"], H=settings["H"],
                    score=score, dtype=DTYPE)
    return task, config, settings


@_on_one_blas_thread
def run_demo(task_name: str = "dates", *, steps: int | None = None, seed: int = 0, score: str = "dot",
             out="attnspec-demo", time_budget: float = 540.0, target: float | None = None,
             max_len: int | None = None, examples: int = 4, quiet: bool = False, stream=None) -> DemoResult:
    """Train on ``task_name``, report held-out exact match, save the checkpoint and heatmaps.

    Parameters
    ----------
    task_name : {"dates", "reverse", "copy"}
    steps : int, optional
        Most updates to make (default per task, ``DEFAULTS``); training stops
        earlier once the validation exact match reaches ``target`` or after
        ``time_budget`` seconds.
    seed : int
        Seeds the data, the initial parameters and the batch order.
    score : str
        Attention score, or ``"none"`` for plain seq2seq (no heatmap then).
    out : path
        Folder for ``<task>.npz`` and ``<task>-attention.png``; created (or
        refused with ``ValueError`` naming ``out``) before training.
    max_len : int, optional
        Longest source of ``reverse``/``copy`` (default 12).
    examples : int
        Number of test examples drawn in the heatmap (0: none).
    quiet : bool
        No progress line and no report on ``stream`` (default stdout).
    """
    stream = sys.stdout if stream is None else stream
    say = (lambda *a: None) if quiet else (lambda text: print(text, file=stream, flush=True))
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples: expected an int >= 0, got {examples!r}")
    if not (isinstance(time_budget, (int, float)) and time_budget > 0):
        raise ValueError(f"time_budget: expected seconds > 0, got {time_budget!r}")
    task, config, settings = build(task_name, score=score, seed=seed, max_len=max_len, steps=steps)
    target = settings["target"] if target is None else target
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ValueError(f"target: expected an accuracy in (0, 1], got {target!r}")
    out = check_out_folder(out)
    for name in (f"{task.name}.npz", f"{task.name}-attention.png"):
        if (out / name).is_dir():
            raise ValueError(f"out: {str(out / name)!r}, where the demo writes, is a directory")
    say(f"task {task.name}: {len(task.train)} training pairs, e.g. {task.train[0][0]!r} -> {task.train[0][1]!r}")
    say(f"model: E={config.E} H={config.H} score={config.score} {config.dtype}; batch {settings['batch_size']}, "
        f"Adam lr {settings['lr']}; stop at {target:.1%} validation exact match or {time_budget:.0f} s")

    curve, stopped, t0 = [], ["steps"], time.perf_counter()

    def on_eval(step, params):
        acc = exact_match(params, config, task, task.valid)
        elapsed = time.perf_counter() - t0
        curve.append((step, elapsed, acc))
        if acc >= target:
            stopped[0] = "target"
        elif elapsed >= time_budget:
            stopped[0] = "time budget"
        return EvalReport(f"valid exact {acc:.1%}", stopped[0] != "steps")

    result = train(config, task.encode(task.train), steps=settings["steps"], batch_size=settings["batch_size"],
                   optimizer=Adam(lr=settings["lr"]), seed=seed, eval_every=settings["eval_every"],
                   on_eval=on_eval, progress=not quiet, stream=sys.stderr if stream is sys.stdout else stream)
    seconds = time.perf_counter() - t0
    params, step = result.params, int(result.history["step"][-1])
    if not curve or curve[-1][0] != step:
        curve.append((step, seconds, exact_match(params, config, task, task.valid)))

    outputs = predict(params, config, task.src_vocab, task.tgt_vocab, [s for s, _ in task.test], task.max_target)
    correct = [o == t for (o, _), (_, t) in zip(outputs, task.test)]
    test_acc, by_form = float(np.mean(correct)), _by_form(task.forms, correct)
    say(f"stopped after {step} steps, {seconds:.0f} s ({stopped[0]}); validation exact match {curve[-1][2]:.2%}")
    say(f"held-out test exact match (greedy): {test_acc:.2%} of {len(task.test)}")
    wrong = [i for i, ok in enumerate(correct) if not ok]
    for i in list(range(min(5, len(correct)))) + [i for i in wrong[:3] if i >= 5]:
        (src, tgt), o = task.test[i], outputs[i][0]
        say(f"  {src!r:>32} -> {o!r}{'' if correct[i] else f'   (expected {tgt!r})'}")

    ckpt = out / f"{task.name}.npz"
    meta = {"task": task.name, "src_chars": task.src_vocab.chars, "tgt_chars": task.tgt_vocab.chars,
            "max_target": task.max_target, "seed": seed, "test_accuracy": test_acc, "seconds": seconds}
    save_checkpoint(ckpt, config, params, result.optim_state, step=step, extra={"demo": meta},
                    arrays={"history.step": result.history["step"], "history.loss": result.history["loss"]})
    say(f"checkpoint: {ckpt}")
    heatmap = None
    if examples and config.attention:
        from .plots import save_heatmaps

        picked = _pick_examples(task, examples)
        heatmap = save_heatmaps(out / f"{task.name}-attention.png",
                                [_panel(task.test[i][0], *outputs[i]) for i in picked])
        say(f"attention heatmaps: {heatmap}")
    elif examples:
        say("no attention heatmap: the baseline (score 'none') has no attention")
    return DemoResult(task.name, config.score, step, seconds, curve[-1][2], test_acc, stopped[0], ckpt,
                      heatmap, curve, by_form)


def check_out_folder(out) -> Path:
    """``out`` as a Path to a folder, created now, so that a bad ``--out`` fails before training."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission...
        raise ValueError(f"out: cannot create the folder {str(out)!r} ({exc.strerror or exc})") from None
    return out


def _by_form(forms, correct) -> dict[str, float]:
    """Exact match per surface form (dates); empty when the task has no forms."""
    hits: dict[str, list[bool]] = {}
    for form, ok in zip(forms, correct):
        if form:
            hits.setdefault(form, []).append(ok)
    return {f: float(np.mean(v)) for f, v in sorted(hits.items())}


def _pick_examples(task: Task, n: int) -> list[int]:
    """Indices of ``n`` test examples to draw: for dates, one per surface form
    (the forms of the issue first), so the heatmaps show different alignments."""
    if not any(task.forms):
        return list(range(min(n, len(task.test))))
    first = {}
    for i, form in enumerate(task.forms):
        first.setdefault(form, i)
    preferred = ["Weekday, D Mon YYYY", "mon D, YYYY", "DD/MM/YY", "Month Dth, YYYY"]
    forms = [f for f in preferred if f in first] + [f for f in first if f not in preferred]
    return [first[f] for f in forms[:n]]


def _panel(source: str, output: str, attention) -> tuple:
    return attention, list(source), list(output) + ["</s>"], f"{source} \u2192 {output}"


# -- translate -----------------------------------------------------------------

def load_demo(path):
    """``(params, config, src_vocab, tgt_vocab, max_target)`` from a checkpoint written by ``run_demo``.

    The demo metadata is checked: each vocabulary must be a str of distinct
    characters whose size (+ the special ids) is the model's, and
    ``max_target`` an int in [1, ``MAX_TARGET``]; else ``ValueError`` naming ``path``.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.extra.get("demo")
    if not isinstance(meta, dict) or not {"src_chars", "tgt_chars", "max_target"} <= set(meta):
        raise ValueError(f"path: {str(path)!r} holds no vocabularies; was it written by `attnspec demo`?")
    config, max_target = ckpt.config, meta["max_target"]
    try:
        vocabs = []
        for name, size in (("src_chars", "V_src"), ("tgt_chars", "V_tgt")):
            try:
                vocab = Vocab(meta[name])
            except (TypeError, ValueError) as exc:  # Vocab names its argument "chars"
                raise ValueError(f"{name}: {str(exc).partition(': ')[2]}") from None
            if len(vocab) != getattr(config, size):  # ids the model or the vocabulary lacks
                raise ValueError(f"{name}: {len(vocab.chars)} characters (+ {len(Vocab.SPECIALS)} special ids) "
                                 f"do not match the model's {size} = {getattr(config, size)}")
            vocabs.append(vocab)
        if isinstance(max_target, bool) or not isinstance(max_target, int) or not 1 <= max_target <= MAX_TARGET:
            raise ValueError(f"max_target: expected an int in [1, {MAX_TARGET}], got {max_target!r}")
    except ValueError as exc:
        raise ValueError(f"path: {str(path)!r} holds malformed demo metadata: {exc}") from None
    return ckpt.params, config, vocabs[0], vocabs[1], max_target


@_on_one_blas_thread
def translate(path, text: str, *, beam: int = 1, heatmap=None):
    """Decode ``text`` with the demo checkpoint at ``path``; returns ``(output, attention)``.

    Greedy, or beam search of width ``beam``, at most the target vocabulary
    size (the first step has no more candidates, and the cap stops a mistyped
    width from allocating beam x length x source memory); at most
    ``max(max_target, len(text))`` characters are emitted. With ``heatmap`` (a
    PNG path) the attention of the output is drawn there.
    """
    params, config, src_vocab, tgt_vocab, default_max = load_demo(path)
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= config.V_tgt:
        raise ValueError(f"beam: expected an int in [1, {config.V_tgt}] (the target vocabulary size), got {beam!r}")
    if heatmap is not None and not config.attention:
        raise ValueError("heatmap: this checkpoint is the baseline without attention (score 'none')")
    [(output, attention)] = predict(params, config, src_vocab, tgt_vocab, [text],
                                    max(default_max, len(text)), beam=beam)
    if heatmap is not None:
        from .plots import save_heatmaps

        save_heatmaps(heatmap, [_panel(text, output, attention)])
    return output, attention
