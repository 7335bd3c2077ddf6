"""Per-parameter comparison of analytic and numerical gradients: the pass rule.

The rule, coordinate by coordinate::

    |a_i - n_i| <= atol + rtol * max(|a_i|, |n_i|) + e_i

``e_i`` is the error bound of the numerical estimate ``n_i``: its round-off
(from the measured noise of the loss and the step taken) plus, where the
scheme gives one, its truncation error.  The rule is relative to each entry's
own size, so a correct gradient of size 1e-11 passes and one that is 15% off
fails, and it widens exactly as much as the loss's noise requires, so a float32
loss does not fail a correct gradient.

A coordinate that breaks the rule in the first sweep is only a *suspect*: the
check loop looks at it again with Richardson extrapolation and one-sided
differences before calling it bad (or a kink).
"""

from __future__ import annotations

import math

import numpy as np

from .flatten import Leaf
from .report import BlockResult

__all__ = ["DEFAULT_RTOL", "block_result", "rel_error", "tolerance", "undecidable"]

DEFAULT_RTOL = 1e-6


def tolerance(a: np.ndarray, n: np.ndarray, err: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """The largest gap allowed between ``a_i`` and ``n_i``."""
    return atol + rtol * np.maximum(np.abs(a), np.abs(n)) + err


def rel_error(a: np.ndarray, n: np.ndarray) -> float:
    """``||a - n|| / (||a|| + ||n||)``, 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64).ravel()
    n = np.asarray(n, dtype=np.float64).ravel()
    # the 2-norms as np.linalg.norm takes them (sqrt of the dot product), bit for bit
    d = a - n
    denom = math.sqrt(float(a @ a)) + math.sqrt(float(n @ n))
    return math.sqrt(float(d @ d)) / denom if denom > 0 else 0.0


def undecidable(a: np.ndarray, n: np.ndarray, err: np.ndarray, scale: float) -> np.ndarray:
    """Coordinates whose error bound is too large to tell right from wrong.

    The bound exceeds a quarter of the entry's own size and is not negligible
    next to the largest gradient entry of the whole check (``scale``).
    """
    return (err > 0.25 * np.maximum(np.abs(a), np.abs(n))) & (err > 1e-3 * scale)


def block_result(
    leaf: Leaf,
    indices: np.ndarray,
    a: np.ndarray,
    n: np.ndarray,
    tol: np.ndarray,
    bad: np.ndarray,
    kink: np.ndarray,
    unsure: np.ndarray,
    *,
    checked_by: str = "coordinates",
) -> BlockResult:
    """Summarise one parameter's coordinates into a :class:`BlockResult`."""
    diff = np.abs(a - n)
    n_bad = int(bad.sum())
    if len(indices):
        # the worst entry: the largest excess over tolerance among bad ones,
        # else the largest absolute gap
        pick = (
            int(np.argmax(np.where(bad, diff / np.maximum(tol, 1e-300), -np.inf)))
            if n_bad
            else int(np.argmax(diff))
        )
        worst = tuple(int(i) for i in np.unravel_index(int(indices[pick]), leaf.shape))
        max_abs = float(diff.max())
    else:
        worst, max_abs = None, 0.0
    counted = ~kink
    if n_bad:
        verdict = "fail"
    elif len(indices) and (counted.sum() == 0 or unsure[counted].mean() > 0.5):
        verdict = "inconclusive"
    else:
        verdict = "pass"
    if verdict != "fail":  # the worst entry of a block that is not wrong means nothing
        worst = None
    return BlockResult(
        name=leaf.name,
        shape=leaf.shape,
        passed=verdict == "pass",
        verdict=verdict,
        rel_error=rel_error(a, n),
        max_abs_error=max_abs,
        worst_index=worst,
        n_checked=len(indices),
        n_bad=n_bad,
        analytic=np.asarray(a, dtype=np.float64),
        numeric=np.asarray(n, dtype=np.float64),
        indices=np.asarray(indices, dtype=np.int64),
        tolerance=np.asarray(tol, dtype=np.float64),
        n_kink=int(kink.sum()),
        dtype=leaf.dtype,
        checked_by=checked_by,
    )
