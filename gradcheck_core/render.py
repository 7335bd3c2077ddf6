"""Rendering a Report: a plain fixed-width table, or a coloured one with rich.

:func:`render_text` is what ``str(report)`` returns: a header line, one row
per parameter (failing parameters first), and the findings under the table.
It uses nothing but plain characters, so it reads the same in a log file, a
CI job or a pytest failure.

:func:`print_report` is for people watching a terminal: with the optional
``rich`` package and an interactive stream it draws the same table in colour
(failing rows red, inconclusive ones yellow) with the findings and their
remedies under it; anywhere else it writes :func:`render_text`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from .report import BlockResult, Report

__all__ = ["render_text", "render_rich", "print_report", "block_rows", "HEADER", "rich_available"]

_MARK = {"fail": "FAIL", "inconclusive": "????", "pass": "ok"}
_ORDER = {"fail": 0, "inconclusive": 1, "pass": 2}
_STYLE = {"fail": "bold red", "inconclusive": "yellow", "pass": "green"}
_ROW_STYLE = {"fail": "red", "inconclusive": "yellow", "pass": ""}
_WORD = {"fail": "FAIL", "inconclusive": "inconclusive", "pass": "ok"}


def _fmt(x: float) -> str:
    return f"{x:.2e}" if x == x else "-"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _sorted_blocks(report: Report) -> list[BlockResult]:
    return sorted(report.blocks, key=lambda b: _ORDER.get(b.verdict, 1))


def _checked(b: BlockResult) -> str:
    return f"{b.n_checked}/{b.size}" if b.checked_by == "coordinates" else f"{b.n_checked} dirs"


def _worst(b: BlockResult) -> str:
    return str(b.worst_index) if b.worst_index is not None and b.verdict != "pass" else "-"


def block_rows(report: Report) -> list[list[str]]:
    """Table rows (strings), failing parameters first, in flatten order within a group."""
    rows = []
    for b in _sorted_blocks(report):
        rows.append(
            [
                _MARK.get(b.verdict, b.verdict),
                b.name,
                _shape(b.shape),
                _fmt(b.rel_error),
                _fmt(b.max_abs_error),
                _worst(b),
                _checked(b),
                str(b.n_bad),
            ]
        )
    return rows


HEADER = ["", "parameter", "shape", "rel error", "max abs err", "worst index", "checked", "bad"]


def _headline(report: Report) -> str:
    return (
        f"gradient check: {report.verdict.upper()}  rel_error={_fmt(report.rel_error)}  "
        f"({report.framework}, {report.mode} mode, {report.method} differences, "
        f"{report.nfev} evaluations, {report.seconds:.2f} s)"
    )


def fixed_width(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def render_text(report: Report) -> str:
    """The report as a fixed-width table with the findings under it.

    Parameters
    ----------
    report : Report
        The result of a check.

    Returns
    -------
    str
        A header line, the table (``FAIL`` rows first, ``????`` marks an
        inconclusive parameter) and one line per finding.
    """
    lines = [_headline(report), *fixed_width([HEADER, *block_rows(report)])]
    if report.findings:
        lines.append("findings:")
        for f in report.findings:
            where = f"[{f.block}] " if f.block else ""
            lines.append(f"  - {f.kind}: {where}{f.message}")
    return "\n".join(lines)


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
    head.append(f"   rel_error {_fmt(report.rel_error)}", style="bold")
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
    for b in _sorted_blocks(report):
        table.add_row(
            Text(_WORD.get(b.verdict, b.verdict), style=_STYLE.get(b.verdict, "")),
            b.name,
            _shape(b.shape),
            _fmt(b.rel_error),
            _fmt(b.max_abs_error),
            _worst(b),
            _checked(b),
            str(b.n_bad),
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
        terminal; ``False``: always the plain text of :func:`render_text`;
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
    stream.write(render_text(report) + "\n")
    stream.flush()
