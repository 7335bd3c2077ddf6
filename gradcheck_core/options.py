"""The options of a check: their defaults and their validation, in one place.

:func:`gradcheck_core.check` takes exactly the keyword-only parameters of
:class:`Options` that :data:`CHECK_OPTIONS` lists, with the same defaults
(``tests/test_options.py`` holds them to that); :func:`check_function` and
:func:`check_loss` pass their ``**options`` straight to :class:`Options`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import differences as fd
from .errors import InputError
from .tolerance import DEFAULT_RTOL

__all__ = ["CHECK_OPTIONS", "MODES", "REFINE_PER_BLOCK", "Options", "generator"]

MODES = ("auto", "full", "fast")
# Suspect coordinates looked at again with Richardson, per parameter.
REFINE_PER_BLOCK = 20


def generator(seed: int | None) -> np.random.Generator:
    """``np.random.default_rng(seed)``: the same stream, made in a third of the time for a whole-number seed.

    Parameters
    ----------
    seed : int or None
        A non-negative whole number, or None for fresh entropy.

    Returns
    -------
    numpy.random.Generator
        PCG64 seeded by ``SeedSequence(seed)``, as ``default_rng`` seeds it;
        the seed sequence of a whole number is made once and kept (making it
        is two thirds of ``default_rng``'s cost, paid by every check).
    """
    if seed is None:
        return np.random.default_rng()
    return np.random.Generator(np.random.PCG64(_seed_sequence(int(seed))))


@functools.lru_cache(maxsize=256)
def _seed_sequence(seed: int) -> np.random.SeedSequence:
    # generate_state() reads a sequence without changing it: one object serves every generator
    return np.random.SeedSequence(seed)


class Options:
    """Validated options of a check (see :func:`gradcheck_core.check` for their meaning).

    ``max_refine`` (suspects refined per parameter) is internal: it is not an
    option of :func:`gradcheck_core.check`.

    Raises
    ------
    InputError
        For a value out of range, or ``sample`` combined with ``mode="fast"``.
    """

    def __init__(
        self,
        *,
        mode: str = "auto",
        method: str = "central",
        step: float | None = None,
        rtol: float | None = None,
        atol: float = 0.0,
        sample: int | None = None,
        seed: int | None = 0,
        float64: bool = True,
        progress: bool | None = None,
        executor: Executor | str | None = None,
        directions: int = 3,
        order: int = 1,
        hessian: Any = None,
        hvp: Callable[..., Any] | None = None,
        max_refine: int = REFINE_PER_BLOCK,
    ) -> None:
        if mode not in MODES:
            raise InputError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}.")
        if method not in fd.METHODS:
            raise InputError(f"method={method!r} is not one of {', '.join(map(repr, fd.METHODS))}.")
        if step is not None and not (isinstance(step, (int, float)) and 0 < step < 1):
            raise InputError(f"step={step!r} must be a number between 0 and 1 (a relative step, e.g. 1e-6).")
        if rtol is not None and not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
            raise InputError(f"rtol={rtol!r} must be a number between 0 and 1, e.g. 1e-6.")
        if not (isinstance(atol, (int, float)) and atol >= 0):
            raise InputError(f"atol={atol!r} must be a non-negative number.")
        if sample is not None and not (isinstance(sample, (int, np.integer)) and sample > 0):
            raise InputError(
                f"sample={sample!r} must be a positive whole number of coordinates per parameter."
            )
        if sample is not None and mode == "fast":
            raise InputError(
                "sample= picks coordinates for a full sweep; it cannot be combined with mode='fast'."
            )
        if not (isinstance(directions, int) and directions > 0):
            raise InputError(f"directions={directions!r} must be a positive whole number.")
        if seed is not None and not (
            isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0
        ):
            raise InputError(
                f"seed={seed!r} must be a non-negative whole number (e.g. seed=0), or None for "
                "fresh random choices each run."
            )
        if not isinstance(float64, (bool, np.bool_)):
            raise InputError(
                f"float64={float64!r} must be True or False (not a {type(float64).__name__}); "
                "float64=True evaluates in float64 where the framework allows."
            )
        if progress is not None and not isinstance(progress, (bool, np.bool_)):
            raise InputError(
                f"progress={progress!r} must be True, False or None (a bar when the check runs long)."
            )
        if not (executor is None or executor == "threads" or callable(getattr(executor, "submit", None))):
            raise InputError(
                f"executor={executor!r} is not an executor: pass a concurrent.futures.Executor (a "
                "ThreadPoolExecutor, a ProcessPoolExecutor, a Dask client's get_executor()), or "
                "executor='threads' for a thread pool made for the check."
            )
        if order not in (1, 2) or isinstance(order, bool):
            raise InputError(
                f"order={order!r} must be 1 (the gradient) or 2 (the Hessian, through Hessian-vector products)."
            )
        if hessian is not None and hvp is not None:
            raise InputError("pass the second derivative once: hessian= or hvp=, not both.")
        if (hessian is not None or hvp is not None) and order != 2:
            raise InputError(
                f"{'hessian' if hessian is not None else 'hvp'}= is a second derivative: use it with order=2."
            )
        if hvp is not None and not callable(hvp):
            raise InputError(
                f"hvp= must be a function hvp(p, w) returning the Hessian-vector product, not a {type(hvp).__name__}."
            )
        self.mode = mode
        self.method = method
        self.step = step
        self.rtol = DEFAULT_RTOL if rtol is None else float(rtol)
        self.atol = float(atol)
        self.sample = None if sample is None else int(sample)
        self.seed = seed
        self.float64 = bool(float64)
        self.progress = progress
        self.executor = executor
        self.directions = directions
        self.order = order
        self.hessian = hessian
        self.hvp = hvp
        self.max_refine = int(max_refine)


#: The options :func:`gradcheck_core.check` takes as keyword-only parameters.
CHECK_OPTIONS: tuple[str, ...] = tuple(
    name for name in inspect.signature(Options).parameters if name != "max_refine"
)
