"""What a long command shows while it works: one progress owner for every loop over files.

``for item in progress(items, "predicting"):`` writes to stderr

* on a terminal, one line redrawn at most 10 times a second:
  ``predicting 120/640 (19%), 12.3/s, 42 s left``;
* elsewhere (a log file, CI), a line at every 10% and at the end, so logs stay short.

Nothing is shown for fewer than :data:`MIN_ITEMS` items, or with ``KSEG_PROGRESS=0``.
Imports nothing from kseg: every layer may use it.
"""

import os
import sys
import time

#: Loops shorter than this are not worth a progress line.
MIN_ITEMS = 8
#: Set to 0 to silence every progress line.
ENV_PROGRESS = "KSEG_PROGRESS"


def _format_seconds(s):
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Counts done items of a known total and reports them (see the module's docstring)."""

    def __init__(self, total, what, stream=None, enabled=None):
        self.total, self.what = int(total), what
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = os.environ.get(ENV_PROGRESS, "1") not in ("0", "")
        self.enabled = bool(enabled) and self.total >= MIN_ITEMS
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._next_decile = 1

    def line(self):
        """The progress line for the current count."""
        elapsed = time.perf_counter() - self._t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.what} {self.done}/{self.total} ({pct:.0f}%)"
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            text += f", {rate:.1f}/s" if rate < 100 else f", {rate:.0f}/s"
            if self.done < self.total:
                text += f", {_format_seconds((self.total - self.done) / rate)} left"
            else:
                text += f", {_format_seconds(elapsed)}"
        return text

    def update(self, n=1):
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line() + ("\n" if self.done == self.total else ""))
                self.stream.flush()
        else:
            decile = self.done * 10 // self.total
            if decile >= self._next_decile:  # one line per 10% (the last one at 100%)
                self._next_decile = decile + 1
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def close(self):
        """End the line of an interrupted loop on a terminal."""
        if self.enabled and self.tty and 0 < self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def progress(items, what, total=None, stream=None, enabled=None):
    """Yield ``items`` while reporting how many are done (``total`` defaults to ``len(items)``)."""
    if total is None:
        total = len(items)
    bar = Progress(total, what, stream=stream, enabled=enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()


def step(message, stream=None, enabled=None):
    """Announce one long step that has no count (a conversion, a check) on stdout, with
    the command's other reports (stderr keeps to warnings and the one-line error)."""
    if enabled is None:
        enabled = os.environ.get(ENV_PROGRESS, "1") not in ("0", "")
    if enabled:
        stream = stream if stream is not None else sys.stdout
        stream.write(message + " ...\n")
        stream.flush()
