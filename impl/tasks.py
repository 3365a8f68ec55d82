"""Built-in generated tasks for the demo: date normalisation, reversal and copy.

Every task is a deterministic function of its seed, works on characters, and
comes with its own source and target vocabularies. The special ids of
``attnspec.spec.config`` (PAD = 0, BOS = 1, EOS = 2) come first in every
vocabulary, so the characters start at id 3.

``dates``
    Random calendar dates between 1950-01-01 and 2049-12-31 written in one of
    many surface forms ("25 November 2026", "nov 25, 2026", "25/11/26",
    "Wednesday, 25 Nov 2026", "2026.11.25", ...), all mapped to ISO 8601
    ("2026-11-25"). The output's characters come from different places of the
    input depending on the form, which is what attention has to learn.
    Two-digit years are read with the pivot 50: 50-99 -> 19xx, 00-49 -> 20xx,
    and slashed or dotted numeric dates are day first (D/M/Y) except the
    year-first forms.
``reverse`` / ``copy``
    Random strings over ``a-z0-9`` of length 1..N and their reversal (copy).
    With long inputs, ``copy`` shows the fixed-size bottleneck of plain
    seq2seq: the first output characters depend on the earliest inputs.
"""

from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass

import numpy as np

from ..spec.config import BOS, EOS, PAD
from .task_names import TASKS

__all__ = ["Vocab", "Task", "TASKS", "make_task", "date_example", "DATE_FORMATS",
           "DATE_MIN", "DATE_MAX", "ALPHANUMERIC"]

DATE_MIN, DATE_MAX = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
ALPHANUMERIC = string.ascii_lowercase + string.digits
# English names written out: strftime's %A/%B follow the locale.
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# -- vocabularies --------------------------------------------------------------

class Vocab:
    """Characters <-> ids, with the special ids PAD, BOS, EOS first.

    Parameters
    ----------
    chars : str
        The characters, each once; character ``chars[i]`` gets id ``3 + i``.

    Examples
    --------
    >>> v = Vocab("abc")
    >>> v.encode("cab"), v.decode([5, 3, 4, 2, 0]), len(v)
    ([5, 3, 4], 'cab', 6)
    """

    SPECIALS = (PAD, BOS, EOS)

    def __init__(self, chars: str):
        if not isinstance(chars, str) or not chars:
            raise TypeError(f"chars: expected a non-empty str, got {chars!r}")
        if len(set(chars)) != len(chars):
            raise ValueError(f"chars: each character must appear once, got {chars!r}")
        if (PAD, BOS, EOS) != (0, 1, 2):  # ids 0..2 are reserved below
            raise AssertionError("special ids are expected to be 0, 1, 2")
        self.chars = chars
        self._ids = {c: i + 3 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars) + 3

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"Vocab({self.chars!r})"

    def encode(self, text: str, *, name: str = "text") -> list[int]:
        """The ids of ``text``'s characters; ``ValueError`` naming the first unknown one."""
        if not isinstance(text, str):
            raise TypeError(f"{name}: expected a str, got {type(text).__name__}")
        if not text:
            raise ValueError(f"{name}: expected at least one character")
        unknown = [(i, c) for i, c in enumerate(text) if c not in self._ids]
        if unknown:
            i, c = unknown[0]
            others = "".join(sorted({c for _, c in unknown} - {c}))
            also = f" (also {others!r})" if others else ""
            raise ValueError(f"{name}: character {c!r} at position {i} is not in the vocabulary{also}; "
                             f"known characters: {self.chars!r}")
        return [self._ids[c] for c in text]

    def decode(self, ids) -> str:
        """The text of ``ids`` up to the first EOS; PAD and BOS are skipped."""
        out = []
        for i in np.asarray(ids, dtype=np.int64).ravel():
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            if not 3 <= i < len(self):
                raise ValueError(f"ids: {int(i)} is outside the vocabulary [0, {len(self)})")
            out.append(self.chars[i - 3])
        return "".join(out)

    def tokens(self, ids) -> list[str]:
        """One label per id, specials shown as ``<pad>``, ``<s>``, ``</s>`` (for plots)."""
        names = {PAD: "<pad>", BOS: "<s>", EOS: "</s>"}
        return [names.get(int(i)) or self.chars[int(i) - 3] for i in np.asarray(ids).ravel()]


# -- dates ---------------------------------------------------------------------

def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# name -> function of (date, full month name, full weekday name). The test-suite
# parses each form back with datetime.strptime to check the targets.
DATE_FORMATS = {
    "D Month YYYY": lambda d, m, w: f"{d.day} {m} {d.year}",                 # 25 November 2026
    "mon D, YYYY": lambda d, m, w: f"{m[:3].lower()} {d.day}, {d.year}",      # nov 25, 2026
    "DD/MM/YY": lambda d, m, w: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}",
    "Weekday, D Mon YYYY": lambda d, m, w: f"{w}, {d.day} {m[:3]} {d.year}",
    "YYYY.MM.DD": lambda d, m, w: f"{d.year}.{d.month:02d}.{d.day:02d}",
    "Month Dth, YYYY": lambda d, m, w: f"{m} {_ordinal(d.day)}, {d.year}",   # November 25th, 2026
    "DD-Mon-YYYY": lambda d, m, w: f"{d.day:02d}-{m[:3]}-{d.year}",
    "D.M.YYYY": lambda d, m, w: f"{d.day}.{d.month}.{d.year}",
    "YYYY/MM/DD": lambda d, m, w: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "Wkd D Mon YY": lambda d, m, w: f"{w[:3]} {d.day} {m[:3]} {d.year % 100:02d}",
    "Weekday, Month D, YYYY": lambda d, m, w: f"{w}, {m} {d.day}, {d.year}",
    "D/M/YYYY": lambda d, m, w: f"{d.day}/{d.month}/{d.year}",
    "MON DD YYYY": lambda d, m, w: f"{m[:3].upper()} {d.day:02d} {d.year}",
    "Dth Month YYYY": lambda d, m, w: f"{_ordinal(d.day)} {m} {d.year}",
}
_CASES = (str, str, str, str.lower, str.upper)  # mostly as written, sometimes all lower/upper
_DAYS = (DATE_MAX - DATE_MIN).days + 1
DATE_SOURCE_CHARS = string.digits + string.ascii_letters + " ,./-"
DATE_TARGET_CHARS = string.digits + "-"


def date_example(date: dt.date, form: str, case=str) -> tuple[str, str]:
    """``(surface form, ISO form)`` of ``date``: ``date_example(date(2026, 11, 25), "DD/MM/YY")``
    is ``("25/11/26", "2026-11-25")``."""
    text = DATE_FORMATS[form](date, MONTHS[date.month - 1], WEEKDAYS[date.weekday()])
    return case(text), date.isoformat()


def _date_pairs(rng: np.random.Generator, days: np.ndarray, n: int) -> list[tuple[str, str, str]]:
    forms = list(DATE_FORMATS)
    out = []
    for k in rng.integers(0, len(days), size=n):
        date = DATE_MIN + dt.timedelta(days=int(days[k]))
        form = forms[rng.integers(len(forms))]
        src, tgt = date_example(date, form, _CASES[rng.integers(len(_CASES))])
        out.append((src, tgt, form))
    return out


def _dates(seed: int, n_train: int, n_valid: int, n_test: int):
    rng = np.random.default_rng([seed, 0])
    # Validation and test dates are days never seen in training, in any form (5%
    # of the days each): the model must generalise, not remember.
    days = rng.permutation(_DAYS)
    k = _DAYS // 20
    test = _date_pairs(rng, days[:k], n_test)
    valid = _date_pairs(rng, days[k:2 * k], n_valid)
    train = _date_pairs(rng, days[2 * k:], n_train)
    return train, valid, test


# -- reversal and copy ---------------------------------------------------------

def _strings(seed: int, n_train: int, n_valid: int, n_test: int, max_len: int, fn,
             alphabet=ALPHANUMERIC, min_len: int = 1):
    rng = np.random.default_rng([seed, 1])
    chars = np.array(list(alphabet))

    def draw(n):
        lengths = rng.integers(min_len, max_len + 1, size=n)
        return ["".join(chars[rng.integers(len(chars), size=k)]) for k in lengths]

    test = list(dict.fromkeys(draw(n_test)))            # distinct, in drawing order
    valid = [s for s in dict.fromkeys(draw(n_valid)) if s not in set(test)]
    held = set(test) | set(valid)
    # Short strings are few (36 of length 1): those would all be held out, so only
    # strings of length >= 4 are kept out of training.
    train = [s for s in draw(n_train) if len(s) < 4 or s not in held]
    return tuple([(s, fn(s), "") for s in part] for part in (train, valid, test))


# -- tasks ---------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """A generated task: vocabularies and (source, target) text pairs.

    ``train``, ``valid`` (for early stopping) and ``test`` (the held-out report)
    hold ``(source, target)`` strings; ``forms`` names the surface form of each
    test example (dates only, else empty strings).
    ``max_target`` bounds the decoded length (characters, EOS not included).
    """

    name: str
    src_vocab: Vocab
    tgt_vocab: Vocab
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    forms: list[str]
    max_target: int

    def encode(self, pairs) -> list[tuple[list[int], list[int]]]:
        """Id pairs (no special ids) for ``attnspec.impl.train``."""
        return [(self.src_vocab.encode(s, name="source"), self.tgt_vocab.encode(t, name="target"))
                for s, t in pairs]


def make_task(name: str, seed: int = 0, *, n_train: int | None = None, n_valid: int = 500,
              n_test: int = 1000, max_len: int = 12, min_len: int = 1) -> Task:
    """Generate task ``name`` (one of ``TASKS``) deterministically from ``seed``.

    Parameters
    ----------
    name : str
    seed : int
    n_train, n_valid, n_test : int
        Number of pairs drawn (the held-out sets of ``reverse``/``copy`` drop
        duplicates). Default ``n_train``: 30000 for dates, 20000 otherwise.
    max_len, min_len : int
        Source lengths of ``reverse``/``copy`` (ignored for dates).

    Examples
    --------
    >>> task = make_task("dates", seed=1, n_train=3, n_valid=2, n_test=2)
    >>> len(task.train), task.test[0][1][4], task.tgt_vocab.chars
    (3, '-', '0123456789-')
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; expected one of {TASKS}")
    for arg, value, low in (("seed", seed, 0), ("n_valid", n_valid, 1), ("n_test", n_test, 1), ("max_len", max_len, 1),
                            ("min_len", min_len, 1), ("n_train", 1 if n_train is None else n_train, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{arg}: expected an int >= {low}, got {value!r}")
    if min_len > max_len:
        raise ValueError(f"min_len: {min_len} exceeds max_len {max_len}")
    if name == "dates":
        train, valid, test = _dates(seed, 30000 if n_train is None else n_train, n_valid, n_test)
        src_vocab, tgt_vocab, max_target = Vocab(DATE_SOURCE_CHARS), Vocab(DATE_TARGET_CHARS), 10
    else:
        fn = (lambda s: s[::-1]) if name == "reverse" else (lambda s: s)
        train, valid, test = _strings(seed, 20000 if n_train is None else n_train, n_valid, n_test,
                                      max_len, fn, min_len=min_len)
        src_vocab = tgt_vocab = Vocab(ALPHANUMERIC)
        max_target = max_len
    def text(pairs):
        return [(s, t) for s, t, _ in pairs]

    return Task(name, src_vocab, tgt_vocab, text(train), text(valid), text(test), [f for _, _, f in test],
                max_target)
