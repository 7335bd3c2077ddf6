"""One derivative check, as fast mode and the full sweep both see it.

Whatever produced it (a loss and its backward pass, one output of a function
projected on a cotangent, ...), a check is a scalar function ``fun`` of one
float64 vector, the point ``flat.x0`` it is differentiated at, and the
analytic gradient ``analytic`` there, together with what was measured before
any difference was taken: the value ``f0``, the noise of ``fun`` and the
time one evaluation takes.  :func:`gradcheck_core.sweep.run_full` and
:func:`gradcheck_core.fast.run_fast` turn a :class:`Problem` into one
:class:`~gradcheck_core.report.BlockResult` per block of ``flat``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import differences as fd
from .flatten import Flat
from .options import Options

__all__ = ["ROUNDOFF_SAFETY", "TRUNCATION_SAFETY", "Problem", "ScalarFunction"]

# Round-off bounds from the noise estimate are multiplied by this: the noise
# figure is a standard deviation, a bound must hold for every coordinate.
ROUNDOFF_SAFETY = 8.0
TRUNCATION_SAFETY = 2.0


class ScalarFunction(Protocol):
    """A real function of one float64 vector, as the sweeps evaluate it.

    :class:`~gradcheck_core.counted_loss.LossFunction` is one.
    """

    #: While True, a non-finite value away from ``x0`` comes back as NaN instead of raising.
    tolerate: bool

    def __call__(self, x: np.ndarray) -> float: ...

    def complex(self, z: np.ndarray) -> complex: ...

    @property
    def batch(self) -> Callable[[np.ndarray], np.ndarray] | None: ...


@dataclass
class Problem:
    """What the sweeps need, gathered in one place.

    Attributes
    ----------
    fun : ScalarFunction
        The function whose gradient is checked.
    flat : Flat
        The point ``flat.x0`` and the blocks (parameters) it is made of.
    analytic : numpy.ndarray
        The gradient to check at ``flat.x0``, one entry per coordinate.
    f0 : float
        ``fun(flat.x0)``.
    noise, noise_rel : float
        The measured round-off of ``fun``, absolute and relative to its scale.
    opts : Options
        The options of the check.
    rng : numpy.random.Generator
        Draws sampled coordinates and random directions.
    t_eval : float
        Seconds one evaluation of ``fun`` takes.
    step : float, optional
        The relative step of the sweep's scheme when it is chosen outside this
        check (one step shared by the outputs of a function); default: from
        the user's ``step`` or the noise.
    """

    fun: ScalarFunction
    flat: Flat
    analytic: np.ndarray
    f0: float
    noise: float
    noise_rel: float
    opts: Options
    rng: np.random.Generator
    t_eval: float
    step: float | None = None

    def rel_step(self, method: str) -> float:
        """The relative step for ``method``: the user's ``step``, else one chosen from the noise."""
        if self.opts.step is not None and method == self.opts.method:
            return float(self.opts.step)
        if self.step is not None and method == self.opts.method:
            return self.step
        return fd.relative_step(method, self.noise_rel)

    def bounds(self, roundoff: np.ndarray, trunc: np.ndarray) -> np.ndarray:
        """Error bounds of numerical estimates from their round-off and truncation errors."""
        return ROUNDOFF_SAFETY * roundoff + TRUNCATION_SAFETY * trunc
