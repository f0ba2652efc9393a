"""The progress lines of long commands (kseg.progress)."""

import io

from kseg.progress import MIN_ITEMS, Progress, progress, step


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_tenth_and_the_last_one():
    out = io.StringIO()
    assert list(progress(range(100), "predicting", stream=out, enabled=True)) == list(range(100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("predicting 10/100 (10%)") and lines[-1].startswith("predicting 100/100 (100%)")
    assert all("/s" in line for line in lines)


def test_a_terminal_gets_one_redrawn_line():
    out = _Tty()
    for _ in progress(range(20), "converting", stream=out, enabled=True):
        pass
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "converting 20/20 (100%)" in text


def test_short_loops_and_the_switch_are_quiet(monkeypatch):
    out = io.StringIO()
    list(progress(range(MIN_ITEMS - 1), "x", stream=out, enabled=True))
    monkeypatch.setenv("KSEG_PROGRESS", "0")
    list(progress(range(50), "x", stream=out))
    step("converting", stream=out)
    assert out.getvalue() == ""


def test_an_interrupted_loop_ends_its_terminal_line():
    out = _Tty()
    bar = Progress(50, "augmenting", stream=out, enabled=True)
    bar.update(5)
    bar.close()
    assert out.getvalue().endswith("\n") and "5/50" in out.getvalue()
