"""Compiled programs kept between checks, so that checking the same loss again compiles nothing.

Compiling the loss (one call, the vectorised sweep per block size, its
gradient) is most of a check's time for a small JAX model, and a test suite
or a notebook checks the same loss many times.  A program is kept under the
text of the jaxpr the loss traces to, with its constants and the device: a
loss traced again to the same jaxpr with equal constants computes the same
function, whatever Python object it is (a new lambda each time, say), and
one whose captured arrays have changed traces to other constants and is
compiled afresh.  The few most recent programs are kept (:data:`KEPT`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KEPT", "Programs", "programs_for"]

#: How many compiled programs are kept (the least recently used go first).
KEPT = 8


@dataclass
class Programs:
    """What was compiled for one traced loss."""

    single: Any = None  # the loss of one flat vector
    gradient: Any = None  # its jax.grad
    batched: dict[int, Any] = field(default_factory=dict)  # the vectorised loss, per block size
    row_scratch: float | None = None  # scratch bytes one evaluation needs


_kept: OrderedDict[tuple[str, str], tuple[list[Any], Programs]] = OrderedDict()
_lock = threading.Lock()


def programs_for(closed_jaxpr: Any, device: Any) -> Programs:
    """The programs compiled for ``closed_jaxpr`` on ``device`` (empty ones the first time)."""
    key = (str(closed_jaxpr.jaxpr), str(device))
    consts = list(closed_jaxpr.consts)
    with _lock:
        hit = _kept.get(key)
        if hit is not None and _equal(hit[0], consts):
            _kept.move_to_end(key)
            return hit[1]
        programs = Programs()
        # numpy constants are the caller's arrays, which may change in place later: keep copies
        _kept[key] = ([np.array(c) if isinstance(c, np.ndarray) else c for c in consts], programs)
        _kept.move_to_end(key)
        while len(_kept) > KEPT:
            _kept.popitem(last=False)
        return programs


def _equal(a: list[Any], b: list[Any]) -> bool:
    """Constants of two traces are the same values (same dtypes and shapes)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        try:
            xa, ya = np.asarray(x), np.asarray(y)
        except Exception:
            return False
        if xa.dtype != ya.dtype or xa.shape != ya.shape or not np.array_equal(xa, ya, equal_nan=True):
            return False
    return True
