"""Plain fixed-width tables and the cell formats they share.

What ``str(report)`` and ``str(comparison)`` print: plain characters only,
so a table reads the same in a log file, a CI job or a pytest failure; and
the same tables as HTML with inline colours, for a Jupyter notebook
(``_repr_html_``).
"""

from __future__ import annotations

from html import escape

__all__ = ["VERDICT_COLOUR", "fixed_width", "html_document", "html_table", "number", "shape"]

#: The colour of a verdict, in the terminal (rich) and in HTML alike.
VERDICT_COLOUR = {"fail": "#c62828", "inconclusive": "#b26a00", "pass": "#2e7d32"}


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


def html_table(header: list[str], rows: list[list[str]], verdicts: list[str]) -> str:
    """Rows of cells as an HTML table, each row coloured by its verdict.

    Parameters
    ----------
    header : list of str
        Column titles.
    rows : list of list of str
        The cells of each row, as in the plain table.
    verdicts : list of str
        ``"pass"``, ``"fail"`` or ``"inconclusive"`` per row: failing rows red,
        inconclusive ones amber, the verdict cell in bold.

    Returns
    -------
    str
        A ``<table>`` with inline styles (notebooks drop style sheets); every
        cell's text is escaped.
    """
    cell = "padding:1px 8px;text-align:left;font-family:monospace"
    head = "".join(f'<th style="{cell}">{escape(h)}</th>' for h in header)
    body = []
    for r, verdict in zip(rows, verdicts):
        colour = VERDICT_COLOUR.get(verdict, "inherit") if verdict != "pass" else "inherit"
        first = f'<td style="{cell};font-weight:bold;color:{VERDICT_COLOUR.get(verdict, "inherit")}">'
        cells = [first + escape(r[0]) + "</td>"]
        cells += [f'<td style="{cell}">{escape(c)}</td>' for c in r[1:]]
        body.append(f'<tr style="color:{colour}">' + "".join(cells) + "</tr>")
    return (
        '<table style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def html_document(verdict: str, headline: str, rest: str, table_html: str, notes: list[str]) -> str:
    """A headline with its coloured verdict word, a table and notes, as one HTML block.

    Parameters
    ----------
    verdict : str
        The verdict that colours ``headline``.
    headline : str
        The verdict word (shown bold, in the verdict's colour).
    rest : str
        What follows the verdict word on the first line.
    table_html : str
        From :func:`html_table`.
    notes : list of str
        Lines under the table (findings, messages), each escaped.
    """
    colour = VERDICT_COLOUR.get(verdict, "inherit")
    top = (
        f'<div style="font-family:monospace"><b style="color:{colour}">{escape(headline)}</b>'
        f"{escape(rest)}</div>"
    )
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    listing = f'<ul style="font-family:monospace;margin-top:4px">{items}</ul>' if notes else ""
    return f"<div>{top}{table_html}{listing}</div>"
