"""A small, dependency-free progress bar in the spirit of tqdm.

    for xb, yb in progress(loader, desc="epoch 1", unit="img"):
        ...

    with Progress(total=n_images, desc="train", unit="img") as bar:
        for xb, yb in loader:
            ...
            bar.update(len(xb))
            bar.set_postfix(loss=loss, acc=acc)

On a terminal the bar redraws one line with ``\\r`` (at most ``mininterval`` apart). When the
stream is not a terminal (CI, a log file) it writes only a few full lines: one each time another
quarter of the total is done (or every ``nontty_interval`` seconds when the total is unknown) and
one at the end. Set ``disable=True``, or the environment variable ``MINIVIT_PROGRESS=0``, to
silence it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Generic, Iterable, Iterator, TextIO, TypeVar

__all__ = ["Progress", "progress", "format_duration", "format_count"]

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``'01:15'``; ``3725`` -> ``'1:02:05'``; unknown -> ``'?'``."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_count(n: float, scale: bool = False) -> str:
    """Format a count; with ``scale`` use SI suffixes (``1530000`` -> ``'1.53M'``)."""
    if not scale:
        return f"{n:d}" if float(n).is_integer() else f"{n:.1f}"
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 999.5:
            return f"{n:.0f}{suffix}" if suffix == "" else f"{n:.3g}{suffix}"
        n /= 1000.0
    return f"{n:.3g}P"


def _format_rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def _format_value(v: Any) -> str:
    if isinstance(v, float) or hasattr(v, "dtype"):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        return f"{f:.4g}"
    return str(v)


class Progress(Generic[T]):
    """A progress bar over an optional iterable; see the module docstring.

    Args:
        iterable: what to iterate over (optional: use ``update`` by hand without it).
        total: the expected number of units (default ``len(iterable)`` when it has one).
        desc: a short label printed first.
        unit: the unit of the count and rate (``"it"``, ``"img"``, ``"B"``...).
        unit_scale: print counts and rates with k/M/G suffixes.
        file: the stream (default ``sys.stderr``).
        disable: print nothing at all.
        leave: on a terminal, keep the finished bar (else erase it).
        mininterval: seconds between two redraws on a terminal.
        nontty_interval: seconds between two lines off a terminal when the total is unknown.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        unit_scale: bool = False,
        file: TextIO | None = None,
        disable: bool = False,
        leave: bool = True,
        mininterval: float = 0.1,
        nontty_interval: float = 60.0,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.unit_scale = unit_scale
        self.file = file if file is not None else sys.stderr
        self.disable = disable or os.environ.get("MINIVIT_PROGRESS", "1") == "0"
        self.leave = leave
        self.mininterval = mininterval
        self.nontty_interval = nontty_interval
        self.n: float = 0
        self.postfix: dict[str, str] = {}
        self.start_time = time.perf_counter()
        self._last_draw = self.start_time  # off a terminal: first line after an interval
        self._last_quarter = 0
        self._closed = False
        self._width = 0
        try:
            self.is_tty = bool(self.file.isatty())
        except (AttributeError, ValueError):
            self.is_tty = False
        if not self.disable and self.is_tty:
            self._draw()

    # -- iteration and updates ---------------------------------------------------------
    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Add ``n`` units done and redraw if it is time to."""
        self.n += n
        if self.disable or self._closed:
            return
        now = time.perf_counter()
        if self.is_tty:
            if now - self._last_draw >= self.mininterval:
                self._draw(now)
        elif self.total:
            quarter = int(4 * self.n / self.total)
            if quarter > self._last_quarter and self.n < self.total:
                self._last_quarter = quarter
                self._line(now)
        elif now - self._last_draw >= self.nontty_interval:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs after the bar (floats with 4 significant digits)."""
        self.postfix = {k: _format_value(v) for k, v in values.items()}
        if self.is_tty and not self.disable and not self._closed:
            now = time.perf_counter()
            if now - self._last_draw >= self.mininterval:
                self._draw(now)

    def set_description(self, desc: str) -> None:
        """Change the label printed first."""
        self.desc = desc

    def close(self) -> None:
        """Print the final state (once)."""
        if self._closed:
            return
        self._closed = True
        if self.disable:
            return
        now = time.perf_counter()
        if self.is_tty:
            if self.leave:
                self._draw(now)
                self.file.write("\n")
            else:
                self.file.write("\r" + " " * self._width + "\r")
        else:
            self._line(now)
        self.file.flush()

    # -- rendering --------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the bar was created."""
        return time.perf_counter() - self.start_time

    def format(self, now: float | None = None, bar_width: int = 20) -> str:
        """The bar as text, e.g.
        ``'train:  42%|########            | 21/50 [00:03<00:04, 7.10 it/s] loss=0.5'``."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start_time, 1e-9)
        rate = self.n / elapsed
        scale = self.unit_scale
        rate_s = f"{format_count(rate, True) if scale else _format_rate(rate)} {self.unit}/s"
        count = format_count(self.n, scale)
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(max(self.n / self.total, 0.0), 1.0)
            filled = int(frac * bar_width)
            bar = "#" * filled + " " * (bar_width - filled)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            text = (
                f"{prefix}{100 * frac:3.0f}%|{bar}| {count}/{format_count(self.total, scale)}"
                f" [{format_duration(elapsed)}<{format_duration(eta)}, {rate_s}]"
            )
        else:
            text = f"{prefix}{count} {self.unit} [{format_duration(elapsed)}, {rate_s}]"
        if self.postfix:
            text += " " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def _draw(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        text = self.format(now)
        pad = " " * max(self._width - len(text), 0)
        self._width = len(text)
        self.file.write("\r" + text + pad)
        self.file.flush()
        self._last_draw = now

    def _line(self, now: float) -> None:
        self.file.write(self.format(now) + "\n")
        self.file.flush()
        self._last_draw = now

    def __repr__(self) -> str:
        return f"Progress({self.format()!r})"


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Progress[T]:
    """Wrap ``iterable`` in a :class:`Progress` bar (same keyword arguments)."""
    return Progress(iterable, **kwargs)
