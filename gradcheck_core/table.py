"""Plain fixed-width tables and the cell formats they share.

What ``str(report)`` and ``str(comparison)`` print: plain characters only,
so a table reads the same in a log file, a CI job or a pytest failure.
"""

from __future__ import annotations

__all__ = ["fixed_width", "number", "shape"]


def number(x: float) -> str:
    """A figure in a table cell: ``1.23e-04``, or ``-`` for NaN."""
    return f"{x:.2e}" if x == x else "-"


def shape(dims: tuple[int, ...]) -> str:
    """A shape in a table cell: ``(3, 4)``, ``(5,)``, ``()``."""
    return "(" + ", ".join(str(s) for s in dims) + ("," if len(dims) == 1 else "") + ")"


def fixed_width(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell.

    Parameters
    ----------
    rows : list of list of str
        The header first; every row has as many cells.

    Returns
    -------
    list of str
        One line per row, trailing blanks stripped.
    """
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
