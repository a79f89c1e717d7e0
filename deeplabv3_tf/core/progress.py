"""A dependency-free progress bar with rate and ETA, for long loops."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Prints `desc [####....] n/total rate/s ETA h:mm:ss` to a stream.

    On a terminal the line is redrawn in place at most every `interval`
    seconds; elsewhere (logs, CI) a line is printed every 10% of the work.

    Args:
      total: Number of units of work.
      desc: Label in front of the bar.
      unit: Name of a unit ("img", "step").
      stream: Where to write (stderr by default).
      interval: Minimum seconds between redraws on a terminal.
      initial: Units already done (a resumed job).
      enabled: False draws nothing.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it",
                 stream=None, interval: float = 0.2, initial: int = 0,
                 enabled: bool = True):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.count = initial
        self._initial = initial
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1, **postfix) -> None:
        """Advances by `n` units; `postfix` values are shown after the ETA."""
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        done = self.count >= self.total
        if self._tty:
            if done or now - self._last_draw >= self.interval:
                self._last_draw = now
                self.stream.write("\r" + self.line(postfix))
                self.stream.flush()
        else:
            decile = 10 * self.count // max(self.total, 1)
            if decile != self._last_decile or done:
                self._last_decile = decile
                self.stream.write(self.line(postfix) + "\n")
                self.stream.flush()

    def line(self, postfix: dict | None = None) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.count - self._initial) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.count) / rate if rate > 0 else 0.0
        filled = int(20 * self.count / max(self.total, 1))
        bar = "#" * filled + "." * (20 - filled)
        extra = "".join(f" {k}={v}" for k, v in (postfix or {}).items())
        return (f"{self.desc} [{bar}] {self.count}/{self.total} "
                f"{rate:.1f} {self.unit}/s ETA {_duration(remaining)}{extra}")

    def close(self) -> None:
        """Ends the in-place line on a terminal."""
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
