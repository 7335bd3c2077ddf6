"""The user's loss as a counted function of one float64 vector.

:class:`LossFunction` wraps an adapter's target: it counts evaluations,
replays the random generators the loss draws from before every evaluation
(so dropout sees the same mask each time), turns whatever the loss returns
into a float64 scalar (or says why it cannot), and evaluates many points at
once through the adapter's batch evaluation or an executor.
:func:`prepared` opens an adapter's target and wraps it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from . import differences as fd
from .adapters import detect
from .adapters.base import restore_states
from .errors import InputError
from .interrupts import interrupts_deferred, raise_pending

if TYPE_CHECKING:  # pragma: no cover
    from .options import Options

__all__ = ["PART_SECONDS", "LossFunction", "prepared"]

# An executor that runs in other processes gets parts of rows worth at least
# this many seconds of evaluations (each part carries the loss with it).
PART_SECONDS = 0.05
# Two parts per worker where each would take at least this long (balance), else one.
BALANCED_PART_SECONDS = 1.0


class LossFunction:
    """The user's loss as a counted, validated function of a float64 vector."""

    def __init__(self, target: Any, adapter: Any, executor: Executor | None = None) -> None:
        self.target = target
        self.adapter = adapter
        self.flat = target.flat
        self.nfev = 0
        self.out_dtype: str | None = None
        self.first_output: Any = None  # the raw first loss output, for precision notes
        self.executor = executor
        self._serial = threading.Lock()
        self._saved = [r.get() for r in target.rngs]
        # Generators the loss actually draws from; decided after the first call.
        self._active: list[int] | None = None
        # While True, a non-finite loss away from x0 comes back as NaN (the
        # sweep then looks closer) instead of raising.
        self.tolerate = False
        #: Seconds the first evaluation took (None before it).
        self.eval_seconds: float | None = None
        # (type, dtype) of a 0-d floating first output: later outputs like it convert with float()
        self._fast_output: tuple[Any, Any, bool] | None = None

    # -- RNG replay ---------------------------------------------------------
    def replay(self) -> None:
        for k in range(len(self._saved)) if self._active is None else self._active:
            self.target.rngs[k].set(self._saved[k])

    def _learn_active(self) -> None:
        if self._active is None:
            self._active = [
                k for k, (r, s) in enumerate(zip(self.target.rngs, self._saved)) if not unchanged(r, s)
            ]

    def restore_rngs(self) -> None:
        restore_states(self.target.rngs, self._saved)

    # -- values -------------------------------------------------------------
    def scalar(self, out: Any, x: np.ndarray | Callable[[], np.ndarray] | None) -> float:
        """``out`` as a float64 number, or an :class:`InputError` that says why it is none.

        ``x`` is the point it was computed at (or a function that builds it), for the message.
        """
        if self.out_dtype is not None and type(out) in (float, np.float64):  # the common case, fast
            value = float(out)
            if not math.isfinite(value):
                return self._non_finite(value, x)
            return value
        fast = self._fast_output
        if (
            fast is not None
            and type(out) is fast[0]
            and getattr(out, "dtype", None) == fast[1]
            and getattr(out, "ndim", None) == 0
        ):
            # a 0-d floating array or tensor of the type and dtype the first output had
            value = float(out.detach()) if fast[2] else float(out)
            if not math.isfinite(value):
                return self._non_finite(value, x)
            return value
        if out is None:
            raise InputError(
                "the loss returned None: a missing `return`? It must return the loss as a number "
                "(a float, or a 0-d / 1-element array or tensor)."
            )
        if isinstance(out, (str, bytes, bool, np.bool_)):
            raise InputError(
                f"the loss returned a {type(out).__name__} ({out!r}), not a number: a comparison or a "
                "message rather than the loss value? Return the loss as a float (or a 0-d array or tensor)."
            )
        array = np.asarray(self.adapter.to_numpy(out) if not isinstance(out, (float, int)) else out)
        if array.size != 1:
            raise InputError(
                f"the loss returned an array of shape {array.shape}, not a scalar; gradient "
                "checks need one number: reduce it, e.g. return loss.mean() or loss.sum()."
            )
        if array.dtype.kind == "c":
            raise InputError(
                "the loss returned a complex number; return a real scalar (use "
                "method='complex' only with a real loss that is evaluated on complex inputs)."
            )
        if array.dtype.kind == "b":
            raise InputError(
                f"the loss returned a boolean ({type(out).__name__} {out!r}), not a number: a comparison "
                "rather than the loss value? Return the loss as a floating point scalar."
            )
        if array.dtype.kind not in "fiu" and array.dtype.kind != "V":
            raise InputError(
                f"the loss returned a {type(out).__name__} ({_short(out)}) of dtype {array.dtype}, not a "
                "number; return the loss as a floating point scalar (a float, or a 0-d array or tensor)."
            )
        if self.out_dtype is None:
            self.out_dtype = str(array.dtype)
            self.first_output = out
            if array.dtype.kind == "f" and getattr(out, "ndim", None) == 0 and hasattr(out, "dtype"):
                # a tensor that carries a graph (torch) converts without it, quietly
                self._fast_output = (type(out), out.dtype, callable(getattr(out, "detach", None)))
        value = float(array.reshape(()).astype(np.float64))
        if not math.isfinite(value):
            return self._non_finite(value, x)
        return value

    def _non_finite(self, value: float, x: np.ndarray | Callable[[], np.ndarray] | None) -> float:
        if callable(x):
            x = x()
        if self.tolerate and x is not None and not np.array_equal(x, self.flat.x0):
            return float("nan")
        raise InputError(self._not_finite(value, x))

    def _not_finite(self, value: float, x: np.ndarray | None) -> str:
        if x is None or np.array_equal(x, self.flat.x0):
            return (
                f"the loss is {value} at the given parameters; it must be finite to be "
                "differentiated. Look for log(0), division by zero or overflow in the forward pass."
            )
        moved = np.flatnonzero(x != self.flat.x0)
        where = ""
        if len(moved) == 1:
            b, local = self.flat.block_of(int(moved[0]))
            where = f" when {self.flat.leaves[b].name}{list(local)} moved by {x[moved[0]] - self.flat.x0[moved[0]]:.3g}"
        return (
            f"the loss became {value}{where}: it is not finite right next to the given "
            "parameters (a log or division at the edge of its domain). Move the parameters "
            "away from the edge, or pass a smaller step=."
        )

    def __call__(self, x: np.ndarray) -> float:
        raise_pending()
        if self._active is None or self._active:  # a loss that draws nothing has nothing to replay
            self.replay()
        if self.eval_seconds is None:
            start = time.perf_counter()
            out = self.target.evaluate(x)
            self.eval_seconds = time.perf_counter() - start
        else:
            out = self.target.evaluate(x)
        self.nfev += 1
        if self._active is None:
            self._learn_active()
        return self.scalar(out, x)

    def moves(
        self,
        x0: np.ndarray,
        idx: np.ndarray,
        shift: np.ndarray,
        tick: Callable[[int], None] | None = None,
    ) -> np.ndarray | None:
        """The losses at ``x0`` moved by ``shift_k`` on coordinate ``idx_k``, one after another.

        The values, counts, random replays and errors of ``self(x)`` at each of
        these points in turn, from one loop that costs less per evaluation.

        Parameters
        ----------
        x0 : numpy.ndarray
            The float64 point every move starts from.
        idx : numpy.ndarray
            The coordinate each evaluation moves.
        shift : numpy.ndarray
            How far each one moves: the point is ``x0`` but for ``x0[idx_k] + shift_k``.
        tick : callable, optional
            ``tick(k)`` after every ``k`` evaluations (a progress bar); the
            ticks add up to ``len(idx)``.

        Returns
        -------
        numpy.ndarray or None
            One value per move; None before the first evaluation (which
            learns what the loss draws and returns) and for a point that is
            not float64: then evaluate the points one by one with ``self(x)``.
        """
        if self._active is None or self.eval_seconds is None or self.out_dtype is None:
            return None
        if x0.dtype != np.float64:
            return None
        # each moved entry as ``x[i] + s`` computes it, in one numpy sum
        pairs = list(zip(idx.tolist(), (x0[idx] + shift).tolist()))
        every = _tick_every(self.eval_seconds) if tick is not None else max(1, len(pairs))
        # the target builds each point itself where it can (from x0 only)
        evaluate_moved = self.target.evaluate_moved if x0 is self.flat.x0 else None
        evaluate = self.target.evaluate
        draws = bool(self._active)
        replay = self.replay
        values: list[float] = []
        append = values.append
        isfinite = math.isfinite
        float64 = np.float64
        # Otherwise one vector moves in place, and evaluate() copies it, as for self(x).
        x = None if evaluate_moved is not None else x0.copy()
        done = 0  # evaluations that returned: nfev counts them also when a later one raises
        try:
            for first in range(0, len(pairs), every):
                for i, v in pairs[first : first + every]:
                    raise_pending()
                    if draws:
                        replay()
                    if x is None:
                        out = evaluate_moved(i, v)  # type: ignore[misc]
                    else:
                        x[i] = v
                        out = evaluate(x)
                        x[i] = x0[i]
                    done += 1
                    # the common outputs, as scalar() converts them
                    kind = type(out)
                    if kind is float:
                        value = out
                    elif kind is float64:
                        value = float(out)
                    else:
                        append(self.scalar(out, functools.partial(_moved_point, x0, i, v)))
                        continue
                    if not isfinite(value):
                        value = self._non_finite(value, _moved_point(x0, i, v))
                    append(value)
                if tick is not None:
                    tick(min(every, len(pairs) - first))
        finally:
            self.nfev += done
        return np.array(values, dtype=np.float64)

    @property
    def moves_entries(self) -> bool:
        """Whether the target builds points with one entry moved itself (:meth:`moves` is its loop)."""
        return self.target.evaluate_moved is not None

    @property
    def along(self) -> Callable[[slice, np.ndarray, float], float] | None:
        """``along(block, w, s)``: the loss at ``x0`` moved by ``s * w`` on ``block`` (None: not offered).

        Offered where the target evaluates such points without building them
        as vectors as long as ``x0`` (fast mode moves one block at a time).
        """
        if self.target.evaluate_along is None:
            return None
        return self._along

    def _along(self, block: slice, w: np.ndarray, s: float) -> float:
        """What ``self(x)`` returns for ``x = x0`` but for ``x0[block] + s * w`` on ``block``."""
        evaluate_along = self.target.evaluate_along
        if evaluate_along is None:
            raise RuntimeError("the target does not evaluate moved points")
        raise_pending()
        self.replay()
        out = evaluate_along(block, w, s)
        self.nfev += 1
        self._learn_active()

        def point() -> np.ndarray:
            x = self.flat.x0.copy()
            x[block] = x[block] + fd.scaled(w, s)
            return x

        return self.scalar(out, point)

    def complex(self, z: np.ndarray) -> complex:
        if self.target.evaluate_complex is None:
            raise InputError(
                f"method='complex' needs a loss that takes its parameters as an argument and "
                f"can be evaluated on complex values; this {self.target.framework} loss cannot. "
                "Use method='richardson' for comparable accuracy."
            )
        raise_pending()
        self.replay()
        out = self.target.evaluate_complex(z)
        self.nfev += 1
        value = complex(np.asarray(self.adapter.to_numpy(out)).reshape(()))
        if not (math.isfinite(value.real) and math.isfinite(value.imag)):
            raise InputError(f"the loss is {value} at a complex-step point; use method='richardson'.")
        return value

    @property
    def shifted(self) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray | None] | None:
        """``shifted(x, idx, shift)``: the losses at ``x`` moved by ``shift_k`` on coordinate ``idx_k``.

        Offered where the target builds such points itself (a compiled
        ``vmap`` over the moved coordinate): no matrix of rows as long as
        ``x`` each.  Returns None where the target is not ready for it; the
        caller then builds the rows for :attr:`batch`.
        """
        if self.executor is not None or self.target.evaluate_shifted is None:
            return None
        return self._shifted

    def _shifted(self, x: np.ndarray, idx: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
        evaluate_shifted = self.target.evaluate_shifted
        if evaluate_shifted is None:
            return None
        raise_pending()
        self.replay()
        values = evaluate_shifted(x, idx, shift)
        if values is None:
            return None
        out = np.asarray(values, dtype=np.float64).reshape(-1)
        self.nfev += len(idx)
        bad = ~np.isfinite(out)
        if bad.any() and not self.tolerate:
            k = int(np.flatnonzero(bad)[0])
            point = np.array(x, dtype=np.float64)
            point[idx[k]] += shift[k]
            raise InputError(self._not_finite(float(out[k]), point))
        return out

    @property
    def batch(self) -> Callable[[np.ndarray], np.ndarray] | None:
        if self.executor is not None:
            return self._executor_batch
        if self.target.evaluate_batch is None:
            return None
        return self._native_batch

    def _native_batch(self, rows: np.ndarray) -> np.ndarray:
        raise_pending()
        self.replay()
        out = np.asarray(self.target.evaluate_batch(rows), dtype=np.float64).reshape(-1)
        self.nfev += len(rows)
        bad = ~np.isfinite(out)
        if bad.any() and not self.tolerate:
            raise InputError(self._not_finite(float(out[bad][0]), rows[int(np.flatnonzero(bad)[0])]))
        return out

    def _executor_batch(self, rows: np.ndarray) -> np.ndarray:
        raise_pending()
        executor = self.executor
        if executor is None:
            raise RuntimeError("no executor to evaluate the rows with")
        # Threads of this process evaluate through the target itself; other
        # processes get the target's picklable worker, where it has one.
        worker = getattr(self.target, "worker", None)
        parts_wanted = min(len(rows), 64)
        if worker is None or isinstance(executor, ThreadPoolExecutor):
            worker = self._row_values
        else:
            if hasattr(worker, "draws"):
                worker.draws = bool(self._active)
            parts_wanted = _part_count(len(rows), self.eval_seconds, _worker_count(executor))
        parts = np.array_split(rows, max(1, parts_wanted))
        if isinstance(executor, ProcessPoolExecutor):
            _require_picklable(worker)
        results = _run_all(executor, worker, parts)
        self.nfev += len(rows)
        out = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in results])
        bad = ~np.isfinite(out)
        if bad.any() and not self.tolerate:
            raise InputError(self._not_finite(float(out[bad][0]), rows[int(np.flatnonzero(bad)[0])]))
        return out

    def _row_values(self, rows: np.ndarray) -> np.ndarray:
        # Threads evaluate at the same time only where that is safe: not when
        # the evaluations write into the parameters, nor when the loss draws
        # from a global generator (each evaluation must start from the replayed
        # state).
        serial = not getattr(self.target, "thread_safe", True) or bool(self._active)
        if not serial:
            return np.array([self.scalar(self.target.evaluate(r), r) for r in rows])
        out = np.empty(len(rows))
        for k, r in enumerate(rows):
            with self._serial:
                self.replay()
                out[k] = self.scalar(self.target.evaluate(r), r)
        return out


# Progress ticks of moves() come after evaluations worth about this many seconds
# (at most _TICK_MOST evaluations): a bar redraws ten times a second at most.
_TICK_SECONDS = 0.01
_TICK_MOST = 64


def _tick_every(eval_seconds: float) -> int:
    """How many evaluations of ``eval_seconds`` each go between two progress ticks."""
    if eval_seconds <= 0:
        return _TICK_MOST
    return max(1, min(_TICK_MOST, int(_TICK_SECONDS / eval_seconds)))


def _moved_point(x0: np.ndarray, i: int, v: float) -> np.ndarray:
    """``x0`` with entry ``i`` set to ``v``: the point an error message names."""
    x = x0.copy()
    x[i] = v
    return x


def _part_count(rows: int, eval_seconds: float | None, workers: int | None) -> int:
    """How many parts ``rows`` evaluations go to other processes in.

    Each part travels to another process with the loss: parts of at least
    :data:`PART_SECONDS` of evaluations keep that cost small.  Then one part
    per worker, or two where each would still take a second or more
    (:data:`BALANCED_PART_SECONDS`): each part costs a round trip and the
    loss's unpickling on its worker (and a Dask scheduler sends a worker its
    next task only when it has finished the one before), more parts than
    workers buy only balance between workers of unequal speed, and a count
    that is not a multiple of the workers leaves some of them idle at the end.
    """
    if workers is not None:
        two_each = eval_seconds is not None and rows * eval_seconds >= 2 * workers * BALANCED_PART_SECONDS
        return max(1, min(rows, (2 if two_each else 1) * workers))
    wanted = min(rows, 64)
    if eval_seconds is not None:
        wanted = min(wanted, max(2, math.ceil(rows * eval_seconds / PART_SECONDS)))
    return max(1, wanted)


def _worker_count(executor: Executor) -> int | None:
    """How many evaluations ``executor`` runs at once, where it says (a process pool, a Dask client)."""
    count = getattr(executor, "_max_workers", None)  # concurrent.futures pools
    if isinstance(count, int) and count > 0:
        return count
    client = getattr(executor, "_client", None)  # distributed's ClientExecutor
    nthreads = getattr(client, "nthreads", None)
    if callable(nthreads):
        try:
            total = sum(int(v) for v in dict(nthreads()).values())
        except Exception:  # a client that cannot answer now: keep the parts as they are
            return None
        return total or None
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require_picklable(worker: Callable[..., Any]) -> None:
    """A process pool sends the loss to its workers: say so when it cannot be pickled."""
    try:
        pickle.dumps(worker)
    except Exception as exc:  # pickle raises PicklingError, TypeError or AttributeError
        raise InputError(
            f"a process pool cannot take this loss ({type(exc).__name__}: {exc}): it sends the loss "
            "to its workers with the standard pickle module, which needs a module-level function, "
            "not a lambda or a closure. Use executor='threads' (a thread pool, any loss), or a Dask "
            "client's executor, which pickles closures (cloudpickle) but not objects that hold "
            "locks, open files or connections."
        ) from exc


def _run_all(executor: Executor, worker: Callable[[np.ndarray], Any], parts: list[np.ndarray]) -> list[Any]:
    """``worker`` on every part through ``executor``, results in order.

    When any part raises (or the wait is interrupted), parts not yet started
    are cancelled and running ones are waited for, so that no worker still
    evaluates the loss (drawing from the random generators, writing into the
    parameters) after the check has put everything back; then the first
    exception is raised as the loss raised it.
    """
    futures: list[Future[Any]] = []
    try:
        for part in parts:
            futures.append(executor.submit(worker, part))
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        wait(futures)
        for f in futures:  # the first failure in order: the loss's own exception
            if not f.cancelled() and f.exception() is not None:
                error = f.exception()
                if error is not None:
                    raise error from None
        raise


@contextlib.contextmanager
def _own_executor(executor: Any) -> Iterator[Executor | None]:
    """``executor="threads"``: a thread pool made for this check and shut down after it."""
    if executor != "threads":
        yield executor
        return
    pool = ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1), thread_name_prefix="gradcheck")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def unchanged(generator: Any, saved: Any) -> bool:
    """Whether ``generator`` (an :class:`~.adapters.base.RngState`) is still at its ``saved`` state.

    Its cheap test first (numpy's MT19937 bytes), else the states read and compared.
    """
    return generator.unchanged(saved) or _same_state(generator.get(), saved)


def _same_state(a: Any, b: Any) -> bool:
    """Whether two saved generator states are equal (False when unsure)."""
    try:
        if _legacy_numpy_state(a) and _legacy_numpy_state(b):
            # numpy's legacy state ('MT19937', key, pos, has_gauss, cached_gaussian):
            # the key compared as one array, the rest as numbers (no exception raised and caught)
            return a[0] == b[0] and a[2:] == b[2:] and bool(np.array_equal(a[1], b[1]))
        if isinstance(a, tuple) and isinstance(b, tuple):
            # Python's random state, (3, 625 ints, None), compares at once; any
            # other tuple holding arrays raises and is compared entry by entry below.
            with contextlib.suppress(ValueError, TypeError):
                if a == b:
                    return True
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
            return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
        if isinstance(a, (str, bytes, int, float, type(None))):
            return a == b
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # an opaque state: replay it every time
        return False


@contextlib.contextmanager
def prepared(
    loss: Any, params: Any, opts: Options, adapter: Any = None
) -> Iterator[tuple[Any, Any, LossFunction]]:
    """Open the adapter's target for ``loss`` and ``params`` and count its evaluations.

    Parameters
    ----------
    loss, params
        As for :func:`gradcheck_core.check`.
    opts : Options
        ``float64`` and ``executor`` are used.
    adapter : optional
        Default: the adapter of ``params``.

    Yields
    ------
    adapter, target, LossFunction
        The random generators are restored to their saved states on exit.
    """
    adapter = adapter if adapter is not None else detect(params)
    with (
        interrupts_deferred(),
        _own_executor(opts.executor) as executor,
        adapter.target(loss, params, float64=opts.float64) as target,
    ):
        fun = LossFunction(target, adapter, executor)
        try:
            yield adapter, target, fun
        finally:
            fun.restore_rngs()


def _legacy_numpy_state(state: Any) -> bool:
    """Whether ``state`` has the form of ``np.random.get_state()``: a name, a key array and three numbers."""
    return (
        type(state) is tuple
        and len(state) == 5
        and isinstance(state[0], str)
        and isinstance(state[1], np.ndarray)
        and all(isinstance(v, (int, float)) for v in state[2:])
    )
