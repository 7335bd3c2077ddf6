"""Report, BlockResult and Finding: what a check found, and how it reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CheckFailed

__all__ = ["Finding", "BlockResult", "Report"]

FINDING_KINDS = (
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
)


@dataclass
class Finding:
    """One thing the diagnosis noticed.

    Attributes
    ----------
    kind : str
        ``"scale"``, ``"sign"``, ``"transpose"``, ``"zero_gradient"``,
        ``"missing_term"``, ``"kink"``, ``"nondeterministic"``,
        ``"low_precision"``, ``"sparse_error"``, ``"inaccurate"``.
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
        return {"kind": self.kind, "block": self.block, "message": self.message, "detail": _plain(self.detail)}


@dataclass
class BlockResult:
    """The comparison for one parameter.

    ``analytic`` and ``numeric`` hold the checked coordinates (``indices``
    says which, as flat indices into the parameter).  ``verdict`` is
    ``"pass"``, ``"fail"`` or ``"inconclusive"``.
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
        from .render import render_text

        return render_text(self)

    def __repr__(self) -> str:
        return (
            f"<Report {self.verdict} rel_error={self.rel_error:.2e} blocks={len(self.blocks)} "
            f"failed={self.failed_blocks} nfev={self.nfev}>"
        )

    def plot(self, path: str | None = None, **kwargs: Any) -> Any:
        """Draw the report with matplotlib (needs the ``plot`` extra)."""
        from .plot import plot_report

        return plot_report(self, path, **kwargs)


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
