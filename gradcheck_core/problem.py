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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import differences as fd
from .flatten import Flat
from .options import Options

__all__ = [
    "FLAT_STEPS",
    "ROUNDOFF_SAFETY",
    "TRUNCATION_SAFETY",
    "Problem",
    "ScalarFunction",
    "flat_slope",
    "step_span",
]

# Round-off bounds from the noise estimate are multiplied by this: the noise
# figure is a standard deviation, a bound must hold for every coordinate.
ROUNDOFF_SAFETY = 8.0
TRUNCATION_SAFETY = 2.0
# Relative steps of the flatness probe (:meth:`Problem.flat_slope`): above float32
# resolution, so that a float32 input does not look flat merely by rounding.
FLAT_STEPS = (1e-5, 1e-7)
# A function that moves by at most this many ulps of its value, at steps up to its
# coordinate's size, and no more at the largest step than at the smallest, is constant
# up to rounding (Problem.rounding_only).
ROUNDING_ULPS = 64.0


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
    floor : float
        The rounding error of ``fun``'s own result type at ``f0`` (half an ulp):
        the resolution below which two values of ``fun`` cannot differ.
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
    floor: float = 0.0
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

    def flat_slope(self, direction: np.ndarray) -> float | None:
        """:func:`flat_slope` of this problem's function at ``flat.x0``."""
        return flat_slope(self.fun, self.flat.x0, self.f0, direction, self.floor)

    def moves_faintly(self, direction: np.ndarray) -> bool:
        """Whether ``fun``, flat at the probe step, first moves by mere ulps at larger steps.

        Steps grow tenfold from the probe step up to the coordinate's own size
        (a relative 1).  A staircase stays exactly flat and then jumps by a
        whole stair (thousands of ulps of ``f0``, at least): its zero
        derivative is right.  A smooth function with a slope too small for the
        probe first moves by a few ulps: a slope may hide there, to be judged
        at the larger steps.
        """
        for change in self._changes_along(direction, (1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
            if not np.isfinite(change):
                return False
            if change > 0:
                return bool(change <= 1e3 * self._ulp())
        return False

    def rounding_only(self, direction: np.ndarray) -> bool:
        """Whether ``fun`` moves along ``direction`` by its rounding only, even at large steps.

        Steps of a relative 1e-2, 1e-1 and 1.  A slope ``s``, however small,
        moves ``fun`` by ``s t``: a hundred times more at the largest step than
        at the smallest.  A function that is constant up to its rounding (the
        correlation of two observations, +-1 up to ulps) moves by a few ulps of
        ``f0`` at every step, without growing: its derivative is zero.
        """
        changes = list(self._changes_along(direction, (1e-2, 1e-1, 1.0)))
        if len(changes) < 3 or not np.all(np.isfinite(changes)):
            return False
        ulp = self._ulp()
        return changes[-1] <= ROUNDING_ULPS * ulp and changes[-1] <= 4 * max(changes[0], ulp)

    def _ulp(self) -> float:
        """The resolution of ``fun`` at ``f0``: its floor, at least half a float64 ulp of ``f0``."""
        return max(self.floor, 0.5 * fd.EPS * abs(self.f0), 1e-300)

    def _changes_along(self, direction: np.ndarray, rels: tuple[float, ...]) -> Iterator[float]:
        """``max |fun(x0 +- t direction) - f0|`` for ``t = rel * span``, one ``rel`` at a time.

        Past the edge of the function's domain at steps beyond a relative 1e-2
        (an exception from the loss there: bernoulli's ``p`` past 1), a NaN
        ends the sequence; nearer the point the exception is the user's and is
        raised.
        """
        x0 = self.flat.x0
        span = step_span(x0, direction)
        for rel in rels:
            t = rel * span
            try:
                change = max(
                    abs(fd.along(self.fun, x0, direction, t) - self.f0),
                    abs(fd.along(self.fun, x0, direction, -t) - self.f0),
                )
            except Exception:
                if rel <= 1e-2:
                    raise
                yield float("nan")
                return
            yield change

    def below_resolution(self, slope: float, direction: np.ndarray) -> bool:
        """Whether ``slope`` along ``direction`` moves ``fun`` too little for float64 to show.

        Over the probe step the change ``slope * t`` stays below a few ulps of a
        value of size ``max(1, |f0|)``: a forward pass that underflows or
        cancels (``1 + erf(x)`` at x = -8.5 is exactly 0) stays flat even though
        such a slope is right.  Where the function is flat and the analytic
        slope is this small, nothing can be decided.
        """
        x0 = self.flat.x0
        span = step_span(x0, direction)
        return abs(slope) * FLAT_STEPS[0] * span < 4 * fd.EPS * max(1.0, abs(self.f0))


def step_span(x0: np.ndarray, direction: np.ndarray) -> float:
    """The step along ``direction`` that moves its coordinates by their own size, ``max(1, |x|)``."""
    moved = direction != 0
    return max(1.0, float(np.max(np.abs(x0[moved])))) / float(np.max(np.abs(direction)))


def flat_slope(
    fun: Callable[[np.ndarray], float], x0: np.ndarray, f0: float, direction: np.ndarray, floor: float = 0.0
) -> float | None:
    """The error bound of a slope of exactly zero along ``direction``, if ``fun`` is flat there.

    ``fun`` is flat along ``direction`` when it takes exactly ``f0`` at
    ``x0 +- t direction`` for a probe step ``t`` (no coordinate moving by more
    than :data:`FLAT_STEPS` relative to its size): a staircase (floor, round,
    sign) seen inside one stair, or a saturated function.  The slope there is
    zero up to the output's resolution (``floor``, at least half a float64 ulp
    of ``f0``) over the step; that bound is returned (None where ``fun``
    moves, or is not finite, at every probe step).  A staircase's quantisation
    is not round-off noise: this bound replaces the measured noise, which counts
    the stairs as noise.
    """
    if not np.any(direction != 0):
        return None
    span = step_span(x0, direction)
    floor = max(floor, 0.5 * fd.EPS * abs(f0))
    for rel in FLAT_STEPS:
        t = rel * span
        if fd.along(fun, x0, direction, t) == f0 and fd.along(fun, x0, direction, -t) == f0:
            return 2 * floor / t
    return None
