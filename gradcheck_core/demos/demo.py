"""What a demo is: its cases, the outcomes they expect, and what it needs to run."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import GradcheckError
from ..report import Report

if TYPE_CHECKING:  # pragma: no cover
    from .output import Output

__all__ = ["Case", "Demo", "Outcome"]


@dataclass
class Case:
    """One check a demo runs, with the outcome it expects.

    ``expect`` is the verdict; ``failed`` the names of the parameters that
    must fail (others must not); ``finding`` a ``(kind, block)`` the report
    must contain.
    """

    label: str
    report: Report
    expect: str
    failed: tuple[str, ...] | None = None
    finding: tuple[str, str | None] | None = None

    def verify(self) -> tuple[bool, str]:
        """``(as_expected, explanation)``."""
        r = self.report
        if r.verdict != self.expect:
            return False, f"expected {self.expect.upper()}, got {r.verdict.upper()}"
        if self.failed is not None and set(r.failed_blocks) != set(self.failed):
            return False, f"expected {sorted(self.failed)} to fail, got {sorted(r.failed_blocks)}"
        if self.finding is not None:
            kind, block = self.finding
            if not any(f.kind == kind and (block is None or f.block == block) for f in r.findings):
                where = f" on {block}" if block else ""
                return False, f"expected a {kind!r} finding{where}, got {[f.kind for f in r.findings]}"
        return True, f"{self.expect.upper()} as expected"


@dataclass
class Outcome:
    """What a demo produced: its cases and the figures it can draw."""

    cases: list[Case] = field(default_factory=list)
    figures: list[tuple[str, Callable[[str], object]]] = field(default_factory=list)


#: What to install for a module a demo needs.
_INSTALL = {"sklearn": "scikit-learn"}
#: What to do when a module is installed but fails to import.
_IMPORT_HINT = {
    "keras": (
        "Keras needs a backend: pip install tensorflow-cpu (or jax, or torch), or set KERAS_BACKEND "
        "to one that is installed (tensorflow, jax, torch, numpy)"
    ),
}


def requirement(module: str) -> str:
    """The name a person installs for ``module`` (``scikit-learn`` for ``sklearn``)."""
    return _INSTALL.get(module, module)


@dataclass
class Demo:
    """A built-in example."""

    name: str
    title: str
    summary: str
    needs: tuple[str, ...]
    body: Callable[[Output], Outcome]
    adapter: str | None = None

    def missing(self, load: bool = True) -> str | None:
        """Why the demo cannot run here (one line), or None.

        ``load=False`` only looks for the modules without importing them
        (quick, for ``--list``).
        """
        for module in self.needs:
            extra = _INSTALL.get(module, f"'gradcheck-core[{module}]'")
            if importlib.util.find_spec(module) is None:
                return f"needs {module}, which is not installed (pip install {extra})"
            if load:
                try:
                    importlib.import_module(module)
                except ImportError as exc:  # installed, but what it needs is not (Keras's backend)
                    hint = _IMPORT_HINT.get(module, f"pip install {extra}")
                    return f"needs {module}, which is installed but cannot be imported ({type(exc).__name__}: {exc}); {hint}"
        if self.adapter is not None and not load:
            if importlib.util.find_spec(f"gradcheck_core.adapters.{self.adapter}") is None:
                return f"the {self.adapter} adapter of gradcheck-core is not available in this installation"
            return None
        if self.adapter is not None:
            from ..adapters import get_adapter

            try:
                get_adapter(self.adapter)
            except GradcheckError:
                return f"the {self.adapter} adapter of gradcheck-core is not available in this installation"
        return None
