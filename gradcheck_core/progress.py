"""A small progress bar for long sweeps, on stderr, only where someone watches."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts finished evaluations and redraws a one-line bar.

    ``enabled=None`` (the default of ``check``) shows the bar only when stderr
    is a terminal and the sweep is expected to take longer than ``after``
    seconds; ``True`` always shows it, ``False`` never.
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool | None,
        expected_seconds: float,
        after: float = 2.0,
        stream: TextIO | None = None,
        label: str = "gradcheck",
    ) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", lambda: False)
            enabled = bool(isatty()) and expected_seconds > after
        self.enabled = bool(enabled) and total > 0
        self.total = total
        self.done = 0
        self.label = label
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        frac = min(1.0, self.done / self.total)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(30 * frac)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {self.done}/{self.total} "
            f"coordinates, {elapsed:.1f} s, ~{eta:.0f} s left"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
