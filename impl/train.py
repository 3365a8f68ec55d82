"""Batching and the training loop: loss_and_grads, global-norm clipping, Adam, checkpoints.

Reproducibility is by construction rather than by saving a random state: the
batches are fixed once (from ``seed``), and the order in which epoch ``k``
visits them is ``default_rng([seed, k]).permutation``. The batch of step ``n``
is therefore a function of ``(seed, n)`` alone, so training ``N`` steps in one
go and ``N/2`` steps + resume + ``N/2`` steps give bit-identical parameters.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from attnspec.impl.checkpoint import load_checkpoint, save_checkpoint
from attnspec.impl.model import forward, init_params, loss_and_grads
from attnspec.impl.optim import Adam, clip_grad_norm
from attnspec.spec.config import Config
from attnspec.spec.validate import all_finite, check_params


# -- batches -------------------------------------------------------------------

class Batch(NamedTuple):
    """One padded batch of MODEL.md."""

    src: np.ndarray      # (B, S) int64, PAD after src_len
    src_len: np.ndarray  # (B,) int64
    tgt: np.ndarray      # (B, T+1) int64: BOS, target ids, EOS, then PAD


def _check_config(config) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config: expected a Config, got {type(config).__name__}")


def _check_pairs(name: str, pairs, config: Config) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"{name}: expected a list of (source ids, target ids) pairs, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError(f"{name}: expected at least one pair")
    specials = (config.pad_id, config.bos_id, config.eos_id)
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, Sequence) and len(pair) == 2):
            raise TypeError(f"{name}[{i}]: expected a (source ids, target ids) pair, got {pair!r}")
        arrays = []
        for part, ids, vocab in (("source", pair[0], config.V_src), ("target", pair[1], config.V_tgt)):
            a = np.asarray(ids)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0) or a.dtype == bool:
                raise TypeError(f"{name}[{i}]: {part} must be a flat sequence of int ids, got {ids!r}")
            a = a.astype(np.int64)
            if a.size and (a.min() < 0 or a.max() >= vocab):
                raise ValueError(f"{name}[{i}]: {part} id outside the vocabulary [0, {vocab}): {ids!r}")
            if np.any(a == config.pad_id):
                raise ValueError(f"{name}[{i}]: {part} contains PAD = {config.pad_id}")
            arrays.append(a)
        if arrays[0].size == 0:
            raise ValueError(f"{name}[{i}]: source is empty (src_len must be >= 1)")
        if np.isin(arrays[1], specials).any():
            raise ValueError(
                f"{name}[{i}]: target contains BOS/EOS/PAD {specials}; "
                "pass targets without special ids (BOS and EOS are added)"
            )
        out.append((arrays[0], arrays[1]))
    return out


def _pad(config: Config, pairs) -> Batch:
    B = len(pairs)
    S = max(len(s) for s, _ in pairs)
    T1 = max(len(t) for _, t in pairs) + 2
    src = np.full((B, S), config.pad_id, dtype=np.int64)
    tgt = np.full((B, T1), config.pad_id, dtype=np.int64)
    for b, (s, t) in enumerate(pairs):
        src[b, :len(s)] = s
        tgt[b, 0] = config.bos_id
        tgt[b, 1:len(t) + 1] = t
        tgt[b, len(t) + 1] = config.eos_id
    return Batch(src, np.array([len(s) for s, _ in pairs], dtype=np.int64), tgt)


def pad_batch(pairs, config: Config) -> Batch:
    """Pad ``(source ids, target ids)`` pairs into one batch.

    Targets become ``[BOS] + ids + [EOS]`` padded with PAD to the longest
    (``tgt`` is ``(B, T+1)`` with ``T = max len + 1``); sources are padded with
    PAD and ``src_len`` holds their lengths. Ids must not include PAD, and
    targets no BOS/EOS (they are added here).

    Examples
    --------
    >>> cfg = Config(V_src=9, V_tgt=9, E=2, H=2)
    >>> b = pad_batch([([5, 6, 7], [4]), ([8], [3, 4])], cfg)
    >>> b.src.tolist(), b.src_len.tolist(), b.tgt.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1], [[1, 4, 2, 0], [1, 3, 4, 2]])
    """
    _check_config(config)
    return _pad(config, _check_pairs("pairs", pairs, config))


def make_batches(pairs, config: Config, batch_size: int, *, sort_by_length: bool = True,
                 seed: int | None = None, name: str = "pairs") -> list[Batch]:
    """Split ``pairs`` into padded batches of at most ``batch_size`` pairs.

    Parameters
    ----------
    pairs : list of (source ids, target ids)
    config : Config
    batch_size : int
    sort_by_length : bool
        Group pairs of similar (source, target) length, so that little
        compute is spent on padding (bucketing).
    seed : int, optional
        Shuffle the pairs first (with ``default_rng(seed)``), so that batches
        mix the data and ties in length are broken at random; ``None`` keeps
        the given order.
    name : str
        What errors call ``pairs`` (``train`` passes ``train_pairs`` or ``valid_pairs``).
    """
    _check_config(config)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed: expected None or an int >= 0, got {seed!r}")
    checked = _check_pairs(name, pairs, config)
    order = np.arange(len(checked)) if seed is None else np.random.default_rng(seed).permutation(len(checked))
    if sort_by_length:
        lengths = [(len(checked[i][0]), len(checked[i][1])) for i in order]
        order = [order[j] for j in sorted(range(len(order)), key=lengths.__getitem__)]  # stable
    order = list(order)
    return [_pad(config, [checked[i] for i in order[k:k + batch_size]])
            for k in range(0, len(order), batch_size)]


def evaluate(params, config: Config, batches: Sequence[Batch]) -> float:
    """Mean loss per non-PAD label over ``batches`` (each batch's loss weighted by its labels)."""
    _check_config(config)
    if not isinstance(batches, Sequence):
        raise TypeError(f"batches: expected a list of Batch (from make_batches), got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches: expected at least one batch")
    total = count = 0.0
    for b in batches:
        if not isinstance(b, Batch):
            raise TypeError(f"batches: expected Batch items (from make_batches), got {type(b).__name__}")
        loss = float(forward(params, config, b.src, b.src_len, b.tgt).loss)      # checks the batch first
        n = int(np.count_nonzero(np.asarray(b.tgt)[:, 1:] != config.pad_id))
        total += loss * n
        count += n
    return total / count


# -- progress ------------------------------------------------------------------

class Progress:
    """A one-line progress report on ``stream`` (default stderr): step, loss, tokens/s.

    On a terminal the line is redrawn in place at most every ``interval``
    seconds; otherwise (a log file, CI) a plain line is written at each tenth
    of the run and at the end, so logs stay short.
    """

    def __init__(self, total: int, start: int = 0, stream=None, enabled: bool = True, interval: float = 0.1):
        self.total, self.start, self.enabled, self.interval = total, start, enabled, interval
        self.stream = sys.stderr if stream is None else _check_stream(stream)
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.t0 = self.last = time.perf_counter()
        self.tokens, self.losses = 0, []
        self.note = ""  # extra text at the end of the line, e.g. a held-out accuracy
        self.shown, self.shown_loss = start, float("nan")  # the step and loss of the last line written
        self.next_line = start + max(1, (total - start) // 10)

    def update(self, step: int, loss: float, tokens: int) -> None:
        self.tokens += tokens
        self.losses.append(loss)
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and (now - self.last >= self.interval or step == self.total):
            self.stream.write("\r" + self._line(step, now))
        elif not self.tty and (step >= self.next_line or step == self.total):
            self.stream.write(self._line(step, now) + "\n")
            self.next_line = step + max(1, (self.total - self.start) // 10)
        else:
            return
        self._flush()
        self.last, self.losses, self.shown = now, [], step

    def _flush(self) -> None:
        flush = getattr(self.stream, "flush", None)  # optional: any object with .write is a stream
        if callable(flush):
            flush()

    def _line(self, step: int, now: float) -> str:
        width = 20
        filled = width * step // max(self.total, 1)
        rate = self.tokens / max(now - self.t0, 1e-9)
        # mean since the last report (or that report's, when redrawn with a new note)
        loss = sum(self.losses) / len(self.losses) if self.losses else self.shown_loss
        self.shown_loss = loss
        note = f" {self.note}" if self.note else ""
        return (f"step {step}/{self.total} [{'#' * filled}{'.' * (width - filled)}] loss {loss:.4f} "
                f"{rate:,.0f} tok/s{note}")

    def close(self, step: int | None = None) -> None:
        """End the report; given the last ``step`` (a run that stopped early), show it first."""
        if self.enabled and step is not None and (step != self.shown or self.tty):
            line = self._line(step, time.perf_counter())
            self.stream.write("\r" + line if self.tty else line + "\n")
        if self.enabled and self.tty:
            self.stream.write("\n")
            self._flush()


# -- the loop ------------------------------------------------------------------

class EvalReport(NamedTuple):
    """What an ``on_eval`` hook of ``train`` may return."""

    note: str = ""      # shown at the end of the progress line
    stop: bool = False  # end training after this step (e.g. a target accuracy was reached)


class TrainResult(NamedTuple):
    params: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray]
    history: dict[str, np.ndarray]  # step, loss, grad_norm (per step); eval_step, eval_loss


def _fingerprint(batches: list[Batch]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for a in b:
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
    return h.hexdigest()


def _check_stream(stream):
    if not callable(getattr(stream, "write", None)):
        raise TypeError(f"stream: expected a file-like object with a write method, got {type(stream).__name__}")
    return stream


def _check_checkpoint_path(path) -> Path:
    """``path`` as a Path that ``save_checkpoint`` can write to: checked before training, not after it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint_path: {str(path)!r} is a directory; give a file name in it, "
                         f"e.g. {str(path / 'ckpt.npz')!r}")
    if not path.parent.is_dir():
        raise ValueError(f"checkpoint_path: folder {str(path.parent)!r} does not exist")
    return path


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def train(config: Config, train_pairs, *, steps: int, batch_size: int = 32, optimizer: Adam | None = None,
          clip_norm: float | None = 5.0, seed: int = 0, params=None, valid_pairs=None, eval_every: int = 0,
          checkpoint_path=None, checkpoint_every: int = 0, resume_from=None, sort_by_length: bool = True,
          progress: bool = True, stream=None, on_eval=None) -> TrainResult:
    """Train with Adam and global-norm clipping until ``steps`` updates have been made.

    Each step: ``loss, grads = loss_and_grads(...)`` on the next batch, then
    ``clip_grad_norm(grads, clip_norm)``, then ``optimizer.step``.

    Parameters
    ----------
    config : Config
    train_pairs : list of (source ids, target ids)
        Without special ids; see ``pad_batch``.
    steps : int
        Total number of updates, counted from the start of training (a resumed
        run continues from the checkpoint's step up to ``steps``).
    batch_size, sort_by_length : see ``make_batches``
    optimizer : Adam, optional
        Default ``Adam()`` (lr 1e-3).
    clip_norm : float or None
        Global gradient-norm threshold; ``None`` disables clipping.
    seed : int
        Seeds the initial parameters (when neither ``params`` nor
        ``resume_from`` is given), the batches and their order.
    params : dict[str, ndarray], optional
        Initial parameters (copied, never modified).
    valid_pairs : list of pairs, optional
        Held-out data, evaluated every ``eval_every`` steps and at the end.
    checkpoint_path : path, optional
        Saved every ``checkpoint_every`` steps (0: never) and at the end; its
        folder must exist.
    resume_from : path, optional
        Continue from a checkpoint written by this function; ``config``,
        ``seed``, ``batch_size``, ``sort_by_length``, ``optimizer``,
        ``clip_norm`` and the data must be those it was written with.
    progress : bool
        Show a progress line on ``stream`` (default stderr; any object with a
        ``write`` method).
    on_eval : callable, optional
        ``on_eval(step, params)`` is called every ``eval_every`` steps (after
        the update of that step). It may return an ``EvalReport``: its
        ``note`` is shown on the progress line, and ``stop=True`` ends
        training early (the final evaluation and checkpoint still happen, at
        that step). ``params`` must not be modified.

    Returns
    -------
    TrainResult
        Final parameters and optimizer state, and the history of the whole
        run (including steps done before a resume).

    Raises
    ------
    FloatingPointError
        Naming the step, when its loss or gradient norm is not finite, or its
        update leaves a parameter NaN or infinite.

    Examples
    --------
    >>> cfg = Config(V_src=6, V_tgt=6, E=4, H=4)
    >>> pairs = [([3, 4], [4, 3]), ([5], [5])]
    >>> res = train(cfg, pairs, steps=2, batch_size=2, progress=False)
    >>> res.history["step"].tolist()
    [1, 2]
    """
    _check_config(config)
    steps = _check_count("steps", steps, 1)
    eval_every = _check_count("eval_every", eval_every, 0)
    checkpoint_every = _check_count("checkpoint_every", checkpoint_every, 0)
    seed = _check_count("seed", seed, 0)
    optimizer = Adam() if optimizer is None else optimizer
    if not isinstance(optimizer, Adam):
        raise TypeError(f"optimizer: expected an Adam, got {type(optimizer).__name__}")
    optimizer.check_dtype(config.dtype)
    if clip_norm is not None:
        clip_grad_norm({}, clip_norm)  # validates clip_norm
    if checkpoint_every and checkpoint_path is None:
        raise ValueError("checkpoint_path: required when checkpoint_every > 0")
    if checkpoint_path is not None:
        checkpoint_path = _check_checkpoint_path(checkpoint_path)
    if stream is not None:
        _check_stream(stream)
    if params is not None and resume_from is not None:
        raise ValueError("params: give either params or resume_from, not both")
    if on_eval is not None and not callable(on_eval):
        raise TypeError(f"on_eval: expected a callable, got {type(on_eval).__name__}")
    if on_eval is not None and not eval_every:
        raise ValueError("eval_every: must be > 0 when on_eval is given")

    batches = make_batches(train_pairs, config, batch_size, sort_by_length=sort_by_length, seed=seed,
                           name="train_pairs")
    valid = None
    if valid_pairs is not None:
        valid = make_batches(valid_pairs, config, batch_size, name="valid_pairs")
    settings = {"seed": seed, "batch_size": int(batch_size), "sort_by_length": bool(sort_by_length),
                "optimizer": optimizer.to_dict(), "clip_norm": clip_norm, "data_sha256": _fingerprint(batches)}
    history = {k: [] for k in ("step", "loss", "grad_norm", "eval_step", "eval_loss")}

    if resume_from is not None:
        try:
            ckpt = load_checkpoint(resume_from)
        except (TypeError, ValueError, FileNotFoundError) as exc:     # they name "path"
            raise type(exc)(f"resume_from: {exc}") from None
        if ckpt.config != config:
            raise ValueError(f"config: differs from the checkpoint's {ckpt.config}")
        saved = ckpt.extra.get("train_settings", {})
        if not isinstance(saved, dict):
            raise ValueError(f"resume_from: {str(resume_from)!r} holds malformed train_settings "
                             f"(expected a JSON object, got {type(saved).__name__})")
        for key, value in settings.items():
            if saved.get(key) != value:
                name = "train_pairs" if key == "data_sha256" else key
                raise ValueError(f"{name}: differs from the run being resumed ({saved.get(key)!r} != {value!r})")
        if ckpt.optim_state is None:
            raise ValueError(f"resume_from: {str(resume_from)!r} holds no optimizer state")
        params, state, step = ckpt.params, ckpt.optim_state, ckpt.step
        try:  # now, rather than at the first update
            optimizer._check_state(state, params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"resume_from: {str(resume_from)!r} holds an optimizer state that does not "
                             f"fit its parameters: {exc}") from None
        for key in history:
            history[key] = ckpt.arrays.get(f"history.{key}", np.zeros(0)).tolist()
    else:
        if params is None:
            params = init_params(config, seed)
        params = {k: v.copy() for k, v in check_params(params, config, dtype=config.dtype, products_fit=True).items()}
        state, step = optimizer.init_state(params), 0

    def save():
        arrays = {f"history.{k}": np.asarray(v, dtype=np.int64 if "step" in k else np.float64)
                  for k, v in history.items()}
        save_checkpoint(checkpoint_path, config, params, state, step=step, epoch=step // len(batches),
                        extra={"train_settings": settings}, arrays=arrays)

    def run_eval():
        history["eval_step"].append(step)
        history["eval_loss"].append(evaluate(params, config, valid))

    bar = Progress(steps, start=step, stream=stream, enabled=progress)
    order, order_epoch = None, -1
    saved_at = step if resume_from is not None else -1
    while step < steps:
        epoch, position = divmod(step, len(batches))
        if epoch != order_epoch:
            order, order_epoch = np.random.default_rng([seed, epoch]).permutation(len(batches)), epoch
        batch = batches[order[position]]
        loss, grads = loss_and_grads(params, config, batch.src, batch.src_len, batch.tgt)
        norm = clip_grad_norm(grads, clip_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise FloatingPointError(f"step {step + 1}: loss {loss}, gradient norm {norm}; lower the learning rate")
        optimizer.step(params, grads, state)
        step += 1
        bad = next((name for name, p in params.items() if not all_finite(p)), None)
        if bad is not None:  # e.g. a huge learning rate: report it here, not as NaN parameters at the end
            raise FloatingPointError(f"step {step}: the update made params[{bad!r}] NaN or infinite; "
                                     "lower the learning rate")
        history["step"].append(step)
        history["loss"].append(float(loss))
        history["grad_norm"].append(norm)
        stop = False
        if on_eval is not None and step % eval_every == 0:  # before the progress line, which shows its note
            report = on_eval(step, params)
            if report is not None:
                if not isinstance(report, EvalReport):
                    raise TypeError(f"on_eval: expected None or an EvalReport, got {type(report).__name__}")
                bar.note, stop = report.note, bool(report.stop)
        bar.update(step, float(loss), int(np.count_nonzero(batch.tgt[:, 1:] != config.pad_id)))
        if valid is not None and eval_every and step % eval_every == 0:
            run_eval()
        if stop:
            break
        if checkpoint_every and step % checkpoint_every == 0:
            save()
            saved_at = step
    bar.close(step)
    if valid is not None and (not history["eval_step"] or history["eval_step"][-1] != step):
        run_eval()
    if checkpoint_path is not None and saved_at != step:
        save()
    return TrainResult(params, state, {k: np.asarray(v, dtype=np.int64 if "step" in k else np.float64)
                                       for k, v in history.items()})
