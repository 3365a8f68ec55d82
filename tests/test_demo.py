"""The demo: generated tasks, vocabularies, the train hook, `attnspec demo` and `attnspec translate`."""

import datetime as dt
import io
import re

import pytest

from attnspec.impl.cli import main
from attnspec.impl.tasks import DATE_FORMATS, DATE_MAX, DATE_MIN, Vocab, date_example, make_task
from attnspec.spec.config import BOS, EOS, PAD, Config

# -- dates ---------------------------------------------------------------------

# Each surface form read back by the standard library (strptime matches month and
# weekday names case-insensitively); ordinal suffixes are stripped first.
STRPTIME = {
    "D Month YYYY": "%d %B %Y", "mon D, YYYY": "%b %d, %Y", "DD/MM/YY": "%d/%m/%y",
    "Weekday, D Mon YYYY": "%A, %d %b %Y", "YYYY.MM.DD": "%Y.%m.%d", "Month Dth, YYYY": "%B %d, %Y",
    "DD-Mon-YYYY": "%d-%b-%Y", "D.M.YYYY": "%d.%m.%Y", "YYYY/MM/DD": "%Y/%m/%d",
    "Wkd D Mon YY": "%a %d %b %y", "Weekday, Month D, YYYY": "%A, %B %d, %Y", "D/M/YYYY": "%d/%m/%Y",
    "MON DD YYYY": "%b %d %Y", "Dth Month YYYY": "%d %B %Y",
}
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def parse_independently(text: str, form: str) -> dt.date:
    plain = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text, flags=re.IGNORECASE)
    date = dt.datetime.strptime(plain, STRPTIME[form]).date()
    if "%y" in STRPTIME[form] and date.year > 2049:  # Python pivots two-digit years at 69, we at 50
        date = date.replace(year=date.year - 100)
    return date


def test_every_date_form_is_covered_by_the_independent_parser():
    assert set(STRPTIME) == set(DATE_FORMATS)


def test_date_targets_are_the_iso_form_of_the_date_the_source_names():
    task = make_task("dates", seed=3, n_train=10, n_valid=10, n_test=3000)
    seen = set()
    for (src, tgt), form in zip(task.test, task.forms):
        date = parse_independently(src, form)
        assert dt.date.fromisoformat(tgt) == date, (src, tgt, form)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", tgt), tgt
        assert DATE_MIN <= date <= DATE_MAX
        if form.startswith("W"):  # the weekday written must be the date's own
            written = re.match(r"[A-Za-z]+", src).group().lower()
            assert WEEKDAYS[date.weekday()].startswith(written) and len(written) >= 3, (src, tgt)
        seen.add(form)
    assert seen == set(DATE_FORMATS)


@pytest.mark.parametrize("form, text", [
    ("D Month YYYY", "25 November 2026"), ("mon D, YYYY", "nov 25, 2026"), ("DD/MM/YY", "25/11/26"),
    ("Weekday, D Mon YYYY", "Wednesday, 25 Nov 2026"), ("YYYY.MM.DD", "2026.11.25"),
    ("Month Dth, YYYY", "November 25th, 2026"), ("DD-Mon-YYYY", "25-Nov-2026"),
])
def test_the_issues_examples_are_generated_exactly(form, text):
    assert date_example(dt.date(2026, 11, 25), form) == (text, "2026-11-25")


def test_ordinals_and_two_digit_years():
    assert date_example(dt.date(1999, 3, 1), "Dth Month YYYY")[0] == "1st March 1999"
    assert date_example(dt.date(1999, 3, 12), "Dth Month YYYY")[0] == "12th March 1999"
    assert date_example(dt.date(1999, 3, 22), "Dth Month YYYY")[0] == "22nd March 1999"
    assert date_example(dt.date(1950, 1, 2), "DD/MM/YY")[0] == "02/01/50"
    assert date_example(dt.date(2049, 12, 31), "DD/MM/YY")[0] == "31/12/49"


def test_held_out_dates_are_never_seen_in_training():
    task = make_task("dates", seed=0, n_train=5000)
    train = {t for _, t in task.train}
    assert not train & {t for _, t in task.test} and not train & {t for _, t in task.valid}


def test_tasks_are_deterministic_in_the_seed():
    assert make_task("dates", 7, n_train=50) == make_task("dates", 7, n_train=50)
    assert make_task("dates", 7, n_train=50).train != make_task("dates", 8, n_train=50).train


def test_reverse_and_copy_tasks():
    task = make_task("reverse", seed=1, n_train=2000, max_len=9)
    assert all(t == s[::-1] and 1 <= len(s) <= 9 for s, t in task.train + task.test)
    held = {s for s, _ in task.test}
    assert not any(s in held for s, _ in task.train if len(s) >= 4)
    copy = make_task("copy", seed=1, n_train=100, max_len=30, min_len=25)
    assert all(s == t and 25 <= len(s) <= 30 for s, t in copy.train)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="sort"), "task: unknown task 'sort'"),
    (dict(name="copy", max_len=0), "max_len"),
    (dict(name="copy", min_len=5, max_len=3), "min_len"),
    (dict(name="dates", seed=-1), "seed"),
])
def test_make_task_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(**kwargs)


# -- vocabularies --------------------------------------------------------------

def test_vocab_round_trip_and_special_ids_first():
    task = make_task("dates", seed=0, n_train=200)
    for vocab, texts in ((task.src_vocab, [s for s, _ in task.train]), (task.tgt_vocab, [t for _, t in task.train])):
        assert (PAD, BOS, EOS) == (0, 1, 2) and min(min(vocab.encode(t)) for t in texts) >= 3
        for text in texts:
            assert vocab.decode(vocab.encode(text)) == text
    v = Vocab("ab")
    assert v.decode([BOS, 3, 4, EOS, 3]) == "ab" and v.decode([3, PAD, PAD]) == "a"
    assert v.tokens([3, EOS]) == ["a", "</s>"]


def test_vocab_errors_name_the_character_and_its_position():
    v = Vocab("abc")
    with pytest.raises(ValueError, match=r"text: character 'z' at position 2 is not in the vocabulary \(also '!'\)"):
        v.encode("abz!")
    with pytest.raises(ValueError, match="source: expected at least one character"):
        v.encode("", name="source")
    with pytest.raises(TypeError, match="text: expected a str"):
        v.encode(["a"])
    with pytest.raises(ValueError, match="ids: 9 is outside the vocabulary"):
        v.decode([9])
    with pytest.raises(ValueError, match="each character must appear once"):
        Vocab("aba")


# -- the training loop's evaluation hook ----------------------------------------

def test_train_on_eval_hook_shows_a_note_and_can_stop_early():
    from attnspec.impl.train import EvalReport, train

    config = Config(V_src=8, V_tgt=8, E=4, H=4)
    pairs = [([3, 4, 5], [5, 4, 3]), ([6, 7], [7, 6])] * 4
    calls, out = [], io.StringIO()

    def hook(step, params):
        calls.append(step)
        return EvalReport(note=f"acc at {step}", stop=step >= 4)

    result = train(config, pairs, steps=10, batch_size=4, eval_every=2, on_eval=hook, stream=out)
    assert calls == [2, 4] and result.history["step"].tolist() == [1, 2, 3, 4]
    assert out.getvalue().splitlines()[-1].startswith("step 4/10") and "acc at 4" in out.getvalue()
    with pytest.raises(ValueError, match="eval_every"):
        train(config, pairs, steps=2, on_eval=hook, progress=False)
    with pytest.raises(TypeError, match="on_eval"):
        train(config, pairs, steps=2, eval_every=1, on_eval="hook", progress=False)
    with pytest.raises(TypeError, match="EvalReport"):
        train(config, pairs, steps=2, eval_every=1, on_eval=lambda s, p: 0.5, progress=False)


# -- the demo and translate, end to end ------------------------------------------

@pytest.fixture(scope="module")
def reverse_demo(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--task", "reverse", "--steps", "30", "--out", str(out), "--quiet", "--examples", "2"])
    assert code == 0
    return out


def test_demo_writes_the_checkpoint_and_heatmap(reverse_demo, capsys):
    assert (reverse_demo / "reverse.npz").is_file()
    assert (reverse_demo / "reverse-attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_translate_prints_the_output_and_draws_its_heatmap(reverse_demo, tmp_path, capsys):
    ckpt = str(reverse_demo / "reverse.npz")
    capsys.readouterr()
    assert main(["translate", ckpt, "abc123", "--heatmap", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and set(out[0]) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["translate", ckpt, "abc123", "--beam", "3"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["translate", "{ckpt}", "ab!c"], "character '!' at position 2 is not in the vocabulary"),
    (["translate", "{ckpt}", "ABC"], "character 'A' at position 0"),
    (["translate", "{missing}", "abc"], "no checkpoint file"),
    (["translate", "{foreign}", "abc"], "holds no vocabularies"),
    (["demo", "--task", "dates", "--compare"], "--compare: runs on --task copy or --task reverse"),
    (["demo", "--task", "copy", "--target", "1.5", "--out", "{tmp}"], "target"),
])
def test_bad_input_gives_a_one_line_error(argv, message, reverse_demo, tmp_path, capsys):
    from attnspec.impl.checkpoint import save_checkpoint
    from attnspec.impl.model import init_params

    config = Config(V_src=5, V_tgt=5, E=2, H=2)
    save_checkpoint(tmp_path / "foreign.npz", config, init_params(config, 0))
    names = dict(ckpt=reverse_demo / "reverse.npz", missing=tmp_path / "none.npz",
                 foreign=tmp_path / "foreign.npz", tmp=tmp_path)
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("attnspec ")


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "--steps: expected a positive integer"),
    (["demo", "--task", "sort"], "invalid choice: 'sort'"),
    (["demo", "--no-attention", "--score", "general"], "not allowed with argument"),
    (["demo", "--time-budget", "-1"], "--time-budget: expected a number > 0"),
    (["translate", "only-checkpoint"], "required: TEXT"),
    (["translate", "c.npz", "x", "--beam", "0"], "--beam: expected a positive integer"),
])
def test_bad_arguments_are_rejected_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_short_reverse_training_is_far_better_than_chance(tmp_path):
    """250 steps on reverse (strings of 1-12 characters over 36 symbols) reach >= 50% exact match.

    Chance is tiny: a uniform guess of the right length is right with probability
    36^-L, 0.24% averaged over L = 1..12, and returning the input unchanged (a
    model that learned to copy instead of reverse) is right only on palindromes,
    sum_L 36^-floor(L/2) / 12 = 8.8%. 50% is far above both, yet well under
    the 79% that seed 0 measures, so rounding differences between platforms do
    not make it flaky.
    """
    from attnspec.impl.demo import run_demo

    result = run_demo("reverse", steps=250, out=tmp_path, quiet=True, examples=0)
    assert result.steps == 250 and result.test_accuracy >= 0.5, result
    assert (tmp_path / "reverse.npz").is_file()


def test_accuracy_by_length_buckets():
    from attnspec.impl.compare import accuracy_by_length

    pairs = [("a", "a"), ("ab", "ab"), ("abc", "abc"), ("abcd", "abcd")]
    rows = accuracy_by_length(pairs, ["a", "ax", "abc", "ab"], [1, 3, 5])
    assert rows == [(1, 2, 2, 0.5, 0.75), (3, 4, 2, 0.5, 0.75)]  # "ab" for "abcd": 2 of 4 characters


@pytest.mark.slow
def test_dates_demo_reaches_99_percent_in_ten_minutes(tmp_path):
    """The issue's requirement, with the default settings: >= 99% held-out exact match, < 10 minutes."""
    pytest.importorskip("matplotlib")
    from attnspec.impl.demo import run_demo

    result = run_demo("dates", out=tmp_path, quiet=True)
    assert result.test_accuracy >= 0.99 and result.seconds < 600, result
    assert result.heatmap is not None and result.heatmap.is_file()
