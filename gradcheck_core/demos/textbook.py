"""The textbook gradient check: a central-difference loop with a fixed step and one relative error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["plain_loop"]


def plain_loop(
    loss: Callable[[Any], Any], params: Any, grad: np.ndarray, eps: float = 1e-7
) -> tuple[float, np.ndarray]:
    """What the textbook loop computes: one relative error over all entries.

    Central differences with a fixed step ``eps`` on every coordinate, then
    ``||grad - approx|| / (||grad|| + ||approx||)``.

    Parameters
    ----------
    loss : callable
        ``loss(p)`` with ``p`` shaped like ``params`` (numpy).
    params : numpy array or dict/list of arrays
        Where to differentiate.
    grad : numpy.ndarray
        The gradient to judge, as one flat vector in flatten order.
    eps : float
        The step.

    Returns
    -------
    difference, approx
    """
    from ..adapters import detect

    flat = detect(params).flatten(params)
    x0 = flat.x0
    approx = np.empty(flat.n)
    for i in range(flat.n):
        xp, xm = x0.copy(), x0.copy()
        xp[i] += eps
        xm[i] -= eps
        fp = float(np.asarray(loss(flat.unravel(xp))))
        fm = float(np.asarray(loss(flat.unravel(xm))))
        approx[i] = (fp - fm) / (2 * eps)
    g = np.asarray(grad, dtype=np.float64).reshape(-1)
    denom = np.linalg.norm(g) + np.linalg.norm(approx)
    return float(np.linalg.norm(g - approx) / denom) if denom else 0.0, approx
