"""Where a demo writes: rich on a terminal, plain text elsewhere."""

from __future__ import annotations

import sys
import textwrap
from typing import Any, TextIO

from ..render import _wants_colour, print_report, rich_available
from ..report import Report

__all__ = ["Output"]


class Output:
    """Where a demo writes: rich on a terminal, plain text elsewhere."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        wanted = _wants_colour(self.stream) if color is None else bool(color)
        self.rich = wanted and rich_available()
        self.console: Any = None
        if self.rich:
            from rich.console import Console

            self.console = Console(file=self.stream, force_terminal=True, highlight=False)

    def heading(self, text: str) -> None:
        if self.console is not None:
            self.console.rule(f"[bold]{text}", align="left")
        else:
            self.stream.write(f"\n== {text} ==\n")

    def say(self, text: str = "", style: str | None = None) -> None:
        """A paragraph, wrapped to the terminal (rich) or to 100 columns (plain)."""
        if self.console is not None:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            indent = text[: len(text) - len(text.lstrip())]
            wrapped = textwrap.fill(text, width=100, subsequent_indent=indent + "  ") if text else ""
            self.stream.write(wrapped + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """One line as it is, never wrapped (skip notes)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def report(self, report: Report) -> None:
        print_report(report, self.stream, color=self.rich)
