"""The dependency-free progress bar (minivit.progress)."""

from __future__ import annotations

import io

import pytest

from minivit.progress import Progress, format_count, format_duration, progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_prints_only_a_few_lines():
    out = io.StringIO()
    items = list(progress(range(5000), desc="epoch 1", unit="img", file=out))
    assert items == list(range(5000))
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 5 and "\r" not in out.getvalue()
    assert lines[-1].startswith("epoch 1: 100%") and "5000/5000" in lines[-1]
    assert "img/s" in lines[-1]


def test_non_tty_unknown_total():
    out = io.StringIO()
    with Progress(desc="stream", file=out) as bar:
        for _ in range(1000):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "1000 it" in lines[0]


def test_tty_redraws_one_line_with_postfix():
    out = FakeTTY()
    bar = Progress(total=10, desc="train", unit="img", file=out, mininterval=0)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss=0.123456, acc=0.5)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "\r" in text
    last = text.rstrip("\n").split("\r")[-1]
    assert "100%" in last and "10/10" in last and "loss=0.1235, acc=0.5" in last
    assert "<00:00" in last  # elapsed<eta


def test_disabled_prints_nothing(monkeypatch):
    out = FakeTTY()
    assert sum(progress(range(10), file=out, disable=True)) == 45
    monkeypatch.setenv("MINIVIT_PROGRESS", "0")
    list(progress(range(10), file=out))
    assert out.getvalue() == ""


def test_format_eta_rate_and_scaling():
    bar = Progress(total=100, unit="B", unit_scale=True, file=io.StringIO())
    bar.n = 50
    text = bar.format(now=bar.start_time + 10.0)
    assert " 50%" in text and "[00:10<00:10, 5 B/s]" in text
    bar.n, bar.total = 2_500_000, 10_000_000
    assert "2.5M/10M" in bar.format(now=bar.start_time + 1.0)
    assert format_duration(75.3) == "01:15" and format_duration(3725) == "1:02:05"
    assert format_duration(float("inf")) == "?"
    assert format_count(1_530_000, True) == "1.53M" and format_count(12) == "12"


def test_iterating_without_iterable_is_an_error():
    with pytest.raises(TypeError):
        iter(Progress(total=3, file=io.StringIO())).__next__()
