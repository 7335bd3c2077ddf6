"""Plain-text rendering of a Report: one row per parameter, failures first."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .report import BlockResult, Report

_MARK = {"fail": "FAIL", "inconclusive": "????", "pass": "ok"}
_ORDER = {"fail": 0, "inconclusive": 1, "pass": 2}


def _fmt(x: float) -> str:
    return f"{x:.2e}" if x == x else "-"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def block_rows(report: Report) -> list[list[str]]:
    """Table rows (strings), failing parameters first, in flatten order within a group."""
    blocks = sorted(report.blocks, key=lambda b: _ORDER[b.verdict])
    rows = []
    for b in blocks:
        checked = f"{b.n_checked}/{b.size}" if b.checked_by == "coordinates" else f"{b.n_checked} dirs"
        rows.append(
            [
                _MARK[b.verdict],
                b.name,
                _shape(b.shape),
                _fmt(b.rel_error),
                _fmt(b.max_abs_error),
                str(b.worst_index) if b.worst_index is not None and b.verdict != "pass" else "-",
                checked,
                str(b.n_bad),
            ]
        )
    return rows


HEADER = ["", "parameter", "shape", "rel error", "max abs err", "worst index", "checked", "bad"]


def render_text(report: Report) -> str:
    """The report as a fixed-width table with the findings under it."""
    rows = [HEADER] + block_rows(report)
    widths = [max(len(r[c]) for r in rows) for c in range(len(HEADER))]
    lines = [
        f"gradient check: {report.verdict.upper()}  rel_error={_fmt(report.rel_error)}  "
        f"({report.framework}, {report.mode} mode, {report.method} differences, "
        f"{report.nfev} evaluations, {report.seconds:.2f} s)"
    ]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if report.findings:
        lines.append("findings:")
        for f in report.findings:
            where = f"[{f.block}] " if f.block else ""
            lines.append(f"  - {f.kind}: {where}{f.message}")
    return "\n".join(lines)
