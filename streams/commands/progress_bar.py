"""Progress of a long read on stderr: a bar on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
# The clock is read once per this many records: a read of millions stays cheap.
CHECK_EVERY = 1_000


class ProgressBar:
    """Records done against the total (when known), the rate and the time left.

    On a terminal the bar is redrawn in place every `redraw_s`; elsewhere (a log, a pipe,
    or with --quiet) a plain line is written every `line_every_s`, so a short run says
    nothing and a long one still shows it is alive.
    """

    def __init__(
        self,
        total: int | None,
        stream: TextIO,
        *,
        interactive: bool,
        what: str = "records",
        redraw_s: float = 0.2,
        line_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.interactive = interactive
        self.what = what
        self.every_s = redraw_s if interactive else line_every_s
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.shown_at = self.started
        self.next_check = CHECK_EVERY

    def set_total(self, total: int) -> None:
        """The total, once known; the rate counts from here, not from connecting."""
        self.total = total
        self.started = self.shown_at = self.clock()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.done < self.next_check:
            return
        self.next_check = self.done + CHECK_EVERY
        now = self.clock()
        if now - self.shown_at >= self.every_s:
            self.shown_at = now
            self._show(now)

    def close(self) -> None:
        """Ends the bar's line on a terminal; the caller reports the outcome."""
        if self.interactive:
            self._show(self.clock())
            self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total is None or self.total <= 0:
            return f"{self.done:,} {self.what} read, {rate:,.0f}/s, {_clock(elapsed)} elapsed"
        share = min(self.done / self.total, 1.0)
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "--:--" if left is None else _clock(max(left, 0.0))
        text = f"{self.done:,}/{self.total:,} {self.what} {share:4.0%}, {rate:,.0f}/s, ETA {eta}"
        if not self.interactive:
            return text
        filled = round(share * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"

    def _show(self, now: float) -> None:
        if self.interactive:
            self.stream.write(f"\r{self.line(now)}\x1b[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
