"""Report, BlockResult and Finding: what a check found, and how it reads as plain text.

``str(report)`` is a header line, one row per parameter (failing parameters
first), and the findings under the table, in plain characters (see
:mod:`gradcheck_core.table`).  Coloured output is in
:mod:`gradcheck_core.render`, figures in :mod:`gradcheck_core.plot`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import table
from .errors import CheckFailed

__all__ = ["HEADER", "BlockResult", "Finding", "Report", "block_cells", "sorted_blocks"]

FINDING_KINDS = (
    "non_finite_gradient",
    "mismatch",
    "scale",
    "sign",
    "transpose",
    "zero_gradient",
    "missing_term",
    "kink",
    "nondeterministic",
    "low_precision",
    "sparse_error",
    "inaccurate",
    "not_twice_differentiable",
    "hessian_entry",
    "batched_grad",
    "grad_dtype",
    "method_changed",
    "undefined_grad",
    "nothing_checked",
    "non_finite_output",
    "saturation",
    "forward_mode",
    "no_forward_mode",
    "roundoff_floor",
)


@dataclass
class Finding:
    """One thing the diagnosis noticed.

    Attributes
    ----------
    kind : str
        ``"scale"``, ``"sign"``, ``"transpose"``, ``"zero_gradient"``,
        ``"missing_term"``, ``"kink"``, ``"nondeterministic"``,
        ``"low_precision"``, ``"sparse_error"``, ``"inaccurate"``,
        ``"non_finite_gradient"``, ``"saturation"``, ``"mismatch"`` (and
        others named by the check that adds them, e.g. ``"forward_mode"``).
    block : str or None
        The parameter it concerns, None for the whole check.
    message : str
        A sentence that says what was seen and what to do.
    detail : dict
        Figures behind the message (``factor`` for ``scale``, ...).
    """

    kind: str
    block: str | None
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "block": self.block,
            "message": self.message,
            "detail": _plain(self.detail),
        }


@dataclass
class BlockResult:
    """The comparison for one parameter.

    ``analytic`` and ``numeric`` hold the checked coordinates (``indices``
    says which, as flat indices into the parameter).  ``verdict`` is
    ``"pass"``, ``"fail"`` or ``"inconclusive"``.  ``worst_index`` is the most
    wrong entry of a failing block, None otherwise (in both modes).
    ``checked_by`` is ``"coordinates"`` (entry by entry: ``n_checked`` of
    them) or ``"directions"`` (fast mode and forward-mode rows: ``n_checked``
    directional derivatives, plus the entries localisation compared one by
    one, in ``indices``).
    """

    name: str
    shape: tuple[int, ...]
    passed: bool
    verdict: str
    rel_error: float
    max_abs_error: float
    worst_index: tuple[int, ...] | None
    n_checked: int
    n_bad: int
    analytic: np.ndarray
    numeric: np.ndarray
    indices: np.ndarray
    tolerance: np.ndarray
    n_kink: int = 0
    dtype: str = "float64"
    checked_by: str = "coordinates"
    #: fast mode: analytic and numerical directional derivatives, one per direction
    directional_analytic: np.ndarray = field(default_factory=lambda: np.zeros(0))
    directional_numeric: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: fast mode: evaluations spent localising wrong entries
    n_tests: int = 0

    def compared(self) -> tuple[np.ndarray, np.ndarray]:
        """The values behind ``rel_error``: entries, or directions in fast mode."""
        if self.checked_by == "directions":
            return self.directional_analytic, self.directional_numeric
        return self.analytic, self.numeric

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        out = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "passed": self.passed,
            "verdict": self.verdict,
            "rel_error": self.rel_error,
            "max_abs_error": self.max_abs_error,
            "worst_index": list(self.worst_index) if self.worst_index is not None else None,
            "n_checked": self.n_checked,
            "n_bad": self.n_bad,
            "n_kink": self.n_kink,
            "checked_by": self.checked_by,
            "n_tests": self.n_tests,
        }
        if arrays:
            out["indices"] = self.indices.tolist()
            out["analytic"] = self.analytic.tolist()
            out["numeric"] = self.numeric.tolist()
            out["directional_analytic"] = self.directional_analytic.tolist()
            out["directional_numeric"] = self.directional_numeric.tolist()
        return _plain(out)


@dataclass
class Report:
    """The result of a gradient check.

    ``verdict`` is ``"pass"``, ``"fail"`` or ``"inconclusive"`` (the loss is
    too noisy, random or imprecise to decide); ``passed`` is ``verdict ==
    "pass"``.  ``rel_error`` is ``||a - n|| / (||a|| + ||n||)`` over every
    checked coordinate.
    """

    verdict: str
    rel_error: float
    blocks: list[BlockResult]
    findings: list[Finding]
    nfev: int
    seconds: float
    method: str
    step: float
    mode: str = "full"
    framework: str = "numpy"
    n_params: int = 0
    noise: float = 0.0
    loss_value: float = float("nan")
    rtol: float = 0.0
    atol: float = 0.0
    what: str = "gradient"
    #: What was left out of the check, and why: ``(what, reason)`` pairs
    #: (an output autograd calls non-differentiable, an empty input, held-fixed entries).
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def __bool__(self) -> bool:  # `if report:` reads naturally
        return self.passed

    def block(self, name: str) -> BlockResult:
        """The :class:`BlockResult` named ``name``."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no parameter named {name!r}; there are {[b.name for b in self.blocks]}")

    @property
    def failed_blocks(self) -> list[str]:
        return [b.name for b in self.blocks if b.verdict == "fail"]

    def findings_of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    # -- output -----------------------------------------------------------------
    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """Everything as plain Python values (``arrays=True`` adds the checked entries)."""
        return _plain(
            {
                "verdict": self.verdict,
                "passed": self.passed,
                "rel_error": self.rel_error,
                "mode": self.mode,
                "method": self.method,
                "step": self.step,
                "rtol": self.rtol,
                "atol": self.atol,
                "noise": self.noise,
                "loss_value": self.loss_value,
                "nfev": self.nfev,
                "seconds": self.seconds,
                "framework": self.framework,
                "n_params": self.n_params,
                "blocks": [b.to_dict(arrays) for b in self.blocks],
                "findings": [f.to_dict() for f in self.findings],
                "skipped": [{"what": w, "reason": r} for w, r in self.skipped],
            }
        )

    def to_json(self, arrays: bool = False, **kwargs: Any) -> str:
        """The report as JSON text."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(arrays), **kwargs)

    def raise_if_failed(self) -> Report:
        """Raise :class:`GradcheckError` with the report text unless it passed."""
        if self.verdict != "pass":
            raise CheckFailed(str(self), self)
        return self

    def __str__(self) -> str:
        """A fixed-width table with the findings under it.

        A header line, the table (``FAIL`` rows first, ``????`` marks an
        inconclusive parameter) and one line per finding.
        """
        lines = [_headline(self), *table.fixed_width([HEADER, *_block_rows(self)])]
        if self.findings:
            lines.append("findings:")
            for f in self.findings:
                where = f"[{f.block}] " if f.block else ""
                lines.append(f"  - {f.kind}: {where}{f.message}")
        if self.skipped:
            lines.append("not checked:")
            lines.extend(f"  - {what}: {reason}" for what, reason in self.skipped)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The table and findings of ``str(report)`` as HTML, for Jupyter (colours kept)."""
        rest = (
            f"  rel_error={table.number(self.rel_error)}  ({self.framework}, {self.mode} mode, "
            f"{self.method} differences, {self.nfev} evaluations, {self.seconds:.2f} s)"
        )
        blocks = sorted_blocks(self)
        rows = [[_MARK.get(b.verdict, b.verdict), *block_cells(b)] for b in blocks]
        grid = table.html_table(HEADER, rows, [b.verdict for b in blocks])
        notes = [f"{f.kind}: " + (f"[{f.block}] " if f.block else "") + f.message for f in self.findings]
        notes += [f"not checked: {what}: {reason}" for what, reason in self.skipped]
        return table.html_document(self.verdict, f"gradient check: {self.verdict.upper()}", rest, grid, notes)

    def __repr__(self) -> str:
        return (
            f"<Report {self.verdict} rel_error={self.rel_error:.2e} blocks={len(self.blocks)} "
            f"failed={self.failed_blocks} nfev={self.nfev}>"
        )


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples to JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


# ----------------------------------------------------------------------------- text

_MARK = {"fail": "FAIL", "inconclusive": "????", "pass": "ok"}
_ORDER = {"fail": 0, "inconclusive": 1, "pass": 2}

#: Column titles of the parameter table (the first column holds the verdict).
HEADER = ["", "parameter", "shape", "rel error", "max abs err", "worst index", "checked", "bad"]


def sorted_blocks(report: Report) -> list[BlockResult]:
    """The report's blocks, failing ones first, in flatten order within a verdict."""
    return sorted(report.blocks, key=lambda b: _ORDER.get(b.verdict, 1))


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _checked(b: BlockResult) -> str:
    """``12/20`` entries; in fast mode ``3 directions, 12 entries located``; ``jvp, 1 direction``."""
    if b.checked_by == "coordinates":
        return f"{b.n_checked}/{b.size}"
    text = _count(len(b.directional_analytic), "direction", "directions")
    if b.name.endswith("(jvp)"):
        text = f"jvp, {text}"
    if len(b.indices):
        text += f", {_count(len(b.indices), 'entry', 'entries')} located"
    return text


def _worst(b: BlockResult) -> str:
    return str(b.worst_index) if b.worst_index is not None and b.verdict != "pass" else "-"


def block_cells(b: BlockResult) -> list[str]:
    """One parameter's cells, every column of :data:`HEADER` but the verdict."""
    return [
        b.name,
        table.shape(b.shape),
        table.number(b.rel_error),
        table.number(b.max_abs_error),
        _worst(b),
        _checked(b),
        str(b.n_bad),
    ]


def _block_rows(report: Report) -> list[list[str]]:
    """Table rows (strings), failing parameters first, in flatten order within a group."""
    return [[_MARK.get(b.verdict, b.verdict), *block_cells(b)] for b in sorted_blocks(report)]


def _headline(report: Report) -> str:
    return (
        f"gradient check: {report.verdict.upper()}  rel_error={table.number(report.rel_error)}  "
        f"({report.framework}, {report.mode} mode, {report.method} differences, "
        f"{report.nfev} evaluations, {report.seconds:.2f} s)"
    )
