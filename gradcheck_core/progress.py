"""A small progress bar for long sweeps, only where someone watches.

On a terminal it is one line on stderr, redrawn in place.  In a Jupyter
notebook (an IPython kernel) it is tqdm's notebook bar when tqdm is
installed (``tqdm.auto``), and the same stderr line otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "in_notebook"]


def in_notebook() -> bool:
    """True when the code runs in an IPython kernel (Jupyter, VS Code notebooks).

    Looks at ``sys.modules`` only: IPython is never imported here.
    """
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    if get is None:
        return False
    try:
        shell = get()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _notebook_bar(total: int, label: str) -> Any:
    """tqdm's auto bar (a widget in a notebook), or None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="coord", leave=True)


class Progress:
    """Counts finished evaluations and redraws a one-line bar.

    ``enabled=None`` (the default of ``check``) shows the bar only when stderr
    is a terminal or the check runs in a notebook, and the sweep is expected
    to take longer than ``after`` seconds; ``True`` always shows it, ``False``
    never.  In a notebook with tqdm installed the bar is ``tqdm.auto``'s.
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
        notebook = stream is None and in_notebook()
        if enabled is None:
            isatty = getattr(self.stream, "isatty", lambda: False)
            enabled = (notebook or bool(isatty())) and expected_seconds > after
        self.enabled = bool(enabled) and total > 0
        self.total = total
        self.done = 0
        self.label = label
        self.start = time.perf_counter()
        self._last = 0.0
        #: tqdm's bar when shown in a notebook, else None (the stderr line).
        self.bar = _notebook_bar(total, label) if self.enabled and notebook else None

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
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
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()
