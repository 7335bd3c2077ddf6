"""gradcheck-core: tells you, fast and precisely, whether a gradient is right.

>>> import gradcheck_core as gc
>>> report = gc.check(loss, params, grad)      # doctest: +SKIP
>>> print(report)                               # doctest: +SKIP
"""

from __future__ import annotations

from .check import assert_gradients, check, check_function, check_loss
from .crosscheck import Comparison, ParameterRow, compare
from .errors import CheckFailed, GradcheckError, InputError
from .report import BlockResult, Finding, Report

__version__ = "0.1.0"

__all__ = [
    "check",
    "assert_gradients",
    "check_function",
    "check_loss",
    "compare",
    "Comparison",
    "ParameterRow",
    "Report",
    "BlockResult",
    "Finding",
    "GradcheckError",
    "InputError",
    "CheckFailed",
    "__version__",
]
