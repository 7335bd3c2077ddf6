"""Rendering a Report for a person: a coloured table with rich, or the plain text.

:func:`print_report` is for people watching a terminal: with the optional
``rich`` package and an interactive stream it draws the table of
``str(report)`` in colour (failing rows red, inconclusive ones yellow) with
the findings and their remedies under it; anywhere else it writes
``str(report)``, the plain fixed-width table that reads the same in a log
file, a CI job or a pytest failure.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .report import block_cells, sorted_blocks
from .table import number

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report

__all__ = ["print_report", "render_rich", "rich_available"]

_STYLE = {"fail": "bold red", "inconclusive": "yellow", "pass": "green"}
_ROW_STYLE = {"fail": "red", "inconclusive": "yellow", "pass": ""}
_WORD = {"fail": "FAIL", "inconclusive": "inconclusive", "pass": "ok"}


def rich_available() -> bool:
    """True when the optional ``rich`` package can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def render_rich(report: Report) -> Any:
    """The report as a rich renderable (a headline, a table, the findings).

    Parameters
    ----------
    report : Report
        The result of a check.

    Returns
    -------
    rich.console.Group
        Print it with a ``rich.console.Console``.

    Raises
    ------
    ImportError
        When ``rich`` is not installed (``pip install 'gradcheck-core[rich]'``).
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append("gradient check: ", style="bold")
    head.append(report.verdict.upper(), style=_STYLE.get(report.verdict, "bold"))
    head.append(f"   rel_error {number(report.rel_error)}", style="bold")
    head.append(
        f"   {report.framework}, {report.mode} mode, {report.method} differences, "
        f"{report.nfev} evaluations, {report.seconds:.2f} s",
        style="dim",
    )

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("verdict")
    table.add_column("parameter", overflow="fold")
    table.add_column("shape")
    table.add_column("rel error", justify="right")
    table.add_column("max abs err", justify="right")
    table.add_column("worst index")
    table.add_column("checked", justify="right")
    table.add_column("bad", justify="right")
    for b in sorted_blocks(report):
        table.add_row(
            Text(_WORD.get(b.verdict, b.verdict), style=_STYLE.get(b.verdict, "")),
            *block_cells(b),
            style=_ROW_STYLE.get(b.verdict, ""),
        )

    parts: list[Any] = [head, table]
    if report.findings:
        parts.append(Text("findings", style="bold"))
        findings = Table.grid(padding=(0, 1))
        findings.add_column(no_wrap=True)
        findings.add_column(ratio=1)
        for f in report.findings:
            label = Text.assemble(("  * ", "dim"), (f.kind, "bold magenta"))
            body = Text()
            if f.block:
                body.append(f.block, style="bold")
                body.append(": ")
            body.append(f.message)
            findings.add_row(label, body)
        parts.append(findings)
    extra = []
    if report.noise == report.noise and report.noise > 0:
        extra.append(f"loss noise {report.noise:.2g}")
    if report.step == report.step:
        extra.append(f"relative step {report.step:.2g}")
    extra.append(f"rtol {report.rtol:g}")
    if report.atol:
        extra.append(f"atol {report.atol:g}")
    parts.append(Text(", ".join(extra), style="dim"))
    return Group(*parts)


def _wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def print_report(report: Report, file: TextIO | None = None, *, color: bool | None = None) -> None:
    """Write a report for a person to read.

    Parameters
    ----------
    report : Report
        The result of a check.
    file : text stream, optional
        Where to write (default ``sys.stdout``).
    color : bool, optional
        ``True``: the rich table with colours even when ``file`` is not a
        terminal; ``False``: always the plain text of ``str(report)``;
        ``None`` (default): rich on an interactive terminal (unless the
        ``NO_COLOR`` environment variable is set), plain text otherwise.
        Without the ``rich`` package the plain text is written in every case.
    """
    stream = sys.stdout if file is None else file
    use_rich = _wants_colour(stream) if color is None else bool(color)
    if use_rich and rich_available():
        from rich.console import Console

        console = Console(file=stream, force_terminal=True if color else None, highlight=False)
        console.print(render_rich(report))
        return
    stream.write(str(report) + "\n")
    stream.flush()
