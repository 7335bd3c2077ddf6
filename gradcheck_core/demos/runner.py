"""Running demos: each one's cases verified, its figures saved, a summary at the end."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from ..errors import GradcheckError
from .catalogue import DEMOS
from .demo import requirement
from .output import Output

__all__ = ["list_demos", "run"]


def list_demos(stream: TextIO | None = None) -> None:
    """Print the demos, one per line, with what they need."""
    stream = sys.stdout if stream is None else stream
    width = max(len(name) for name in DEMOS)
    needs = {
        d.name: "needs " + (", ".join(requirement(m) for m in d.needs) or "numpy only")
        for d in DEMOS.values()
    }
    need_width = max(len(n) for n in needs.values())
    for demo in DEMOS.values():
        missing = demo.missing(load=False)
        note = f"  [skipped here: {missing}]" if missing else ""
        stream.write(
            f"{demo.name.ljust(width)}  {needs[demo.name].ljust(need_width)}  {demo.summary}{note}\n"
        )
    stream.flush()


def run(
    names: list[str] | None = None,
    *,
    stream: TextIO | None = None,
    color: bool | None = None,
    plot_dir: str | None = None,
) -> int:
    """Run demos (all by default).

    Parameters
    ----------
    names : list of str, optional
        Demo names (see :data:`DEMOS`); default all.
    stream : text stream, optional
        Where to write (default ``sys.stdout``).
    color : bool, optional
        Force (True) or forbid (False) the rich output; default: on a terminal.
    plot_dir : str, optional
        Save each demo's figures there as ``NAME.png`` (and ``NAME-steps.png``).

    Returns
    -------
    int
        0 when every demo that ran turned out as expected, 1 when one did
        not, 2 when a demo asked for by name cannot run here (it says why).
        Without names, demos that cannot run are skipped with the reason
        and do not change the status.
    """
    out = Output(stream, color)
    chosen = names if names else list(DEMOS)
    unknown = [n for n in chosen if n not in DEMOS]
    if unknown:
        raise GradcheckError(f"no demo named {unknown[0]!r}; the demos are {', '.join(DEMOS)}.")
    if plot_dir is not None:
        os.makedirs(plot_dir, exist_ok=True)
    status = 0
    summary = []
    for name in chosen:
        demo = DEMOS[name]
        missing = demo.missing()
        if missing:
            if names:
                out.line(f"cannot run {name}: {missing}")
                summary.append(f"{name}: cannot run")
                status = max(status, 2)
            else:
                out.line(f"skipped {name}: {missing}")
                summary.append(f"{name}: skipped")
            continue
        out.heading(f"{name}: {demo.title}")
        start = time.perf_counter()
        try:
            outcome = demo.body(out)
        except Exception as exc:  # a demo that breaks must not hide the others
            out.say(f"{name} stopped: {type(exc).__name__}: {exc}", style="bold red")
            summary.append(f"{name}: ERROR")
            status = max(status, 1)
            continue
        seconds = time.perf_counter() - start
        verdicts = []
        for case in outcome.cases:
            ok, why = case.verify()
            verdicts.append(ok)
            out.say(
                f"  [{'ok' if ok else 'UNEXPECTED'}] {case.label}: {why}", style="green" if ok else "bold red"
            )
        if plot_dir is not None:
            for suffix, draw in outcome.figures:
                path = os.path.join(plot_dir, f"{name}{suffix}.png")
                try:
                    draw(path)
                    out.say(f"  figure: {path}")
                except ImportError as exc:
                    out.say(f"  no figure: {exc}")
        out.say(f"  ({seconds:.1f} s)", style="dim")
        if not all(verdicts):
            status = max(status, 1)
        summary.append(f"{name}: {'as expected' if all(verdicts) else 'UNEXPECTED'}")
    if len(chosen) > 1:
        out.say("")
        out.line("summary: " + "; ".join(summary))
    return status
