"""A picklable evaluation of a JAX loss at rows of points.

An executor that runs in other processes (a Dask cluster, a process pool)
receives :class:`RowWorker`: the user's loss (cloudpickle takes closures),
the flattened parameters and Python's and numpy's generator states, and none
of the adapter's live state (compiled executables, the runner).  Each
process compiles the loss once, the first time it evaluates a row.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from .x64_mode import x64

__all__ = ["RowWorker"]


class RowWorker:
    """``loss(p)`` at each row of a matrix of float64 points, as floats.

    Parameters
    ----------
    loss : callable
        ``loss(p)``.
    flat : Flat
        The parameters.
    float64 : bool
        Evaluate with JAX's 64-bit mode on (else in the parameters' dtypes).
    """

    def __init__(self, loss: Callable[..., Any], flat: Flat, float64: bool) -> None:
        self.loss = loss
        self.flat = flat
        self.float64 = float64
        #: Replay the generators before each row (set by the check once it knows the loss draws).
        self.draws = True
        self.states = (np.random.get_state(), random.getstate())
        self._compiled: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = None  # compiled again where it runs
        return state

    def _of_vector(self, v: Any) -> Any:
        dtypes = iter([getattr(t, "dtype", None) for t in self.flat.values])

        def make(piece: Any, _original: Any) -> Any:
            dtype = next(dtypes)
            return piece if self.float64 or dtype is None else piece.astype(dtype)

        return jnp.reshape(self.loss(self.flat.unravel(v, make)), ())

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        dtype = np.float64 if self.float64 else np.float32
        with x64(self.float64):
            for k, row in enumerate(np.asarray(rows, dtype=np.float64)):
                if self.draws:
                    np.random.set_state(self.states[0])
                    random.setstate(self.states[1])
                out[k] = self._one(np.asarray(row, dtype=dtype))
        return out

    def _one(self, row: np.ndarray) -> float:
        value: Any = None
        if self._compiled is None:
            try:
                self._compiled = jax.jit(self._of_vector)
                value = self._compiled(row)
            except Exception:  # not traceable (a float() or a Python branch on a value)
                self._compiled = False
        elif self._compiled is not False:
            value = self._compiled(row)
        if self._compiled is False:
            value = self._of_vector(jnp.asarray(row))
        array = np.asarray(value)
        if array.size != 1:
            raise InputError(f"the loss returned an array of shape {array.shape}, not a scalar.")
        return float(array.reshape(()))
