"""What the side-by-side benchmarks share: one row per sample, two tools, a time limit.

Each tool's outcome on a sample is an :class:`Outcome`; :func:`summary` prints
the verdict counts, the time and the evaluations of each tool, and how the
disagreements split; :func:`time_limit` stops a tool that runs too long on one
sample.  Used by ``torch_opinfo.py`` and ``jax_functions.py``.
"""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("pass", "fail", "inconclusive", "error", "timeout")


@dataclass
class Outcome:
    """What one tool said about one sample."""

    verdict: str  # pass | fail | inconclusive | error | timeout
    seconds: float
    nfev: int
    reason: str = ""


@dataclass
class Row:
    """One sample: its name, dtype and input shapes, and both tools' outcomes."""

    op: str
    dtype: str
    sample: int
    shapes: list[list[int]]
    other: Outcome
    gc: Outcome
    skipped: list[str] = field(default_factory=list)

    @property
    def disagree(self) -> bool:
        return self.other.verdict != self.gc.verdict


def first_line(text: object, width: int = 300) -> str:
    """The first non-empty line of ``text``, cut to ``width`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:width]


def summary(rows: list[Row], dtype: str, other_name: str, unit: str = "ops") -> str:
    """The table: verdict counts, time and evaluations per tool, and the disagreements."""
    lines = [f"{len(rows)} samples of {len({r.op for r in rows})} {unit}, {dtype}"]
    lines.append(
        f"{'tool':<30}" + "".join(f"{v:>13}" for v in VERDICTS) + f"{'seconds':>10}{'evaluations':>13}"
    )
    for tool, name in (("other", other_name), ("gc", "gc.check_function")):
        outcomes = [getattr(r, tool) for r in rows]
        counts = Counter(o.verdict for o in outcomes)
        lines.append(
            f"{name:<30}"
            + "".join(f"{counts.get(v, 0):>13}" for v in VERDICTS)
            + f"{sum(o.seconds for o in outcomes):>10.1f}{sum(o.nfev for o in outcomes):>13}"
        )
    both = Counter((r.other.verdict, r.gc.verdict) for r in rows if r.disagree)
    lines.append(f"disagreements: {sum(both.values())}")
    short = other_name.rsplit(".", 1)[-1]
    for (o, c), n in sorted(both.items()):
        lines.append(f"  {short} {o:<12} gc {c:<12} {n}")
    return "\n".join(lines)


def disagreement_line(row: Row, other_short: str) -> str:
    """One disagreement with both tools' reasons."""
    o, c = row.other, row.gc
    return (
        f"  {row.op} #{row.sample} {row.shapes}: {other_short} {o.verdict}"
        f"{' (' + o.reason + ')' if o.reason else ''} | gc {c.verdict}"
        f"{' (' + c.reason + ')' if c.reason else ''}"
    )


class SampleTimeout(Exception):
    """A tool ran past the per-sample time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SampleTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise SampleTimeout(f"ran past the {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
