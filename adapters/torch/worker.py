"""A picklable evaluation of a functional torch loss at rows of points.

An executor that runs in other processes (a Dask cluster, a process pool)
receives :class:`RowWorker`: the user's loss (cloudpickle takes closures and
the modules they hold), the flattened parameters and the states of the random
generators, and none of the adapter's live state (locks, snapshots, local
functions).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from .float64 import Promotion, _tensor, _work_dtype, float64_scope

__all__ = ["RowWorker"]

# One evaluation at a time in a process where they share a module or the
# random generators (threads of an in-process cluster).
_LOCK = threading.RLock()


class RowWorker:
    """``loss(p)`` at each row of a matrix of float64 points, as floats.

    Parameters
    ----------
    loss : callable
        The functional loss ``loss(p)``.
    flat : Flat
        The parameters (their tensors give dtypes and devices).
    float64, promote : bool
        As for the adapter's target: evaluate in float64, and with the float64
        mode for tensors the loss creates.
    shares_modules : bool
        The loss swaps tensors into modules (``functional_call``):
        evaluations in one process take turns.
    states : tuple, optional
        The states of torch's, numpy's and Python's generators to replay, as
        the caller saved them at the start (default: read now).
    """

    def __init__(
        self,
        loss: Callable[..., Any],
        flat: Flat,
        float64: bool,
        promote: bool,
        shares_modules: bool,
        states: tuple[Any, Any, Any] | None = None,
    ) -> None:
        self.loss = loss
        self.flat = flat
        self.float64 = float64
        self.promote = promote
        self.shares_modules = shares_modules
        #: Replay the generators before each row (set by the check once it knows the loss draws).
        self.draws = True
        self.states = (
            (torch.get_rng_state(), np.random.get_state(), random.getstate()) if states is None else states
        )

    def _replay(self) -> None:
        torch.set_rng_state(self.states[0])
        np.random.set_state(self.states[1])
        random.setstate(self.states[2])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        dtypes = [_work_dtype(t, self.float64) for t in self.flat.values]
        devices = [t.device for t in self.flat.values]
        promotion = Promotion()
        out = np.empty(len(rows))
        for k, row in enumerate(np.asarray(rows, dtype=np.float64)):
            pieces = iter(zip(dtypes, devices))

            def make(piece: np.ndarray, _original: Any, pieces: Any = pieces) -> torch.Tensor:
                dtype, device = next(pieces)
                return _tensor(piece, dtype, device)

            p = self.flat.unravel(row, make)
            if self.draws or self.shares_modules:
                with _LOCK:
                    if self.draws:
                        self._replay()
                    value = self._evaluate(p, promotion)
            else:
                value = self._evaluate(p, promotion)
            out[k] = value
        return out

    def _evaluate(self, p: Any, promotion: Promotion) -> float:
        with float64_scope(self.promote, promotion):
            value = self.loss(p)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise InputError(f"the loss returned a tensor of shape {tuple(value.shape)}, not a scalar.")
            return float(value.detach().reshape(()).cpu())
        return float(value)
