"""gradcheck-core: tells you, fast and precisely, whether a gradient is right.

>>> import gradcheck_core as gc
>>> report = gc.check(loss, params, grad)      # doctest: +SKIP
>>> print(report)                               # doctest: +SKIP
>>> gc.plot_report(report, "report.png")        # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__
from .check import assert_gradients, check
from .compare import Comparison, ParameterRow, compare
from .errors import CheckFailed, GradcheckError, InputError
from .functions import check_function, check_loss
from .plot import plot_report
from .report import BlockResult, Finding, Report

__all__ = [
    "BlockResult",
    "CheckFailed",
    "Comparison",
    "Finding",
    "GradcheckError",
    "InputError",
    "ParameterRow",
    "Report",
    "__version__",
    "assert_gradients",
    "check",
    "check_function",
    "check_loss",
    "compare",
    "plot_report",
]
