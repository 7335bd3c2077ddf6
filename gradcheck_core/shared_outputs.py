"""One evaluation of a function serves the checks of all its outputs.

:func:`~gradcheck_core.functions.check_function` checks one scalar per
output, ``phi_j(x) = <u_j, fn(x)_j>``.  Each of those checks evaluates its
scalar at the same points (the point itself, its repeats, the noise probe's
segment, the sweep's steps when the outputs share one step), so one call of
``fn`` at a point gives every ``phi_j`` there: :class:`SharedOutputs`
evaluates ``fn`` once per point, keeps the projections on every cotangent,
and gives each output's check a :class:`~gradcheck_core.adapters.base.Target`
that reads them.  The random generators the function draws from are found
once, after its first call, and replayed before each call only if there are
any.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .adapters.base import restore_states
from .counted_loss import unchanged
from .interrupts import raise_pending

__all__ = ["SharedOutputs"]

# Points that differ from the check's point in at most this many coordinates
# (the sweep's steps) are keyed by those coordinates and their values; others
# by their bytes where short, else by a 160-bit digest of them.
_SPARSE_KEY = 4
_KEY_BYTES = 512
# What a vectorised evaluation raises where the function cannot run that way
# (torch.func.vmap on an .item(), on random draws, on an operator without a
# batching rule): then points are evaluated one by one.
_VECTORISE_FAILURES = (RuntimeError, NotImplementedError, TypeError)


def _whole_key(x: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(x).tobytes()
    return b"w" + raw if len(raw) <= _KEY_BYTES else b"h" + hashlib.blake2b(raw, digest_size=20).digest()


def _keys(rows: np.ndarray, x0_bits: np.ndarray) -> list[bytes]:
    """One key per row of ``rows`` (float64, shape (m, n)): the same point, bit for bit, the same key.

    A row that differs from ``x0`` (``x0_bits``: its bits as int64) in at most
    :data:`_SPARSE_KEY` coordinates is keyed by their positions and values,
    without hashing the whole row.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    moved = rows.view(np.int64) != x0_bits  # bit for bit: -0.0 differs from 0.0, NaN from itself
    counts = moved.sum(axis=1)
    if len(rows) and int(counts.max()) > _SPARSE_KEY:
        return [
            _keys(rows[r : r + 1], x0_bits)[0] if c <= _SPARSE_KEY else _whole_key(rows[r])
            for r, c in enumerate(counts.tolist())
        ]
    where, cols = np.nonzero(moved)
    values = rows[where, cols]
    ends = np.cumsum(counts).tolist()
    keys, lo = [], 0
    for hi in ends:
        keys.append(b"s" + cols[lo:hi].tobytes() + values[lo:hi].tobytes())
        lo = hi
    return keys


class SharedOutputs:
    """All outputs' projections at a point, from one evaluation, remembered per point.

    Parameters
    ----------
    target : Target
        The adapter's target of a loss that returns the vector of every
        output's projection (``k`` values).
    k : int
        The number of projections.
    rows : callable, optional
        ``rows(X)`` -> the projections at the rows of ``X`` (shape (m, k)),
        computed at once (vectorised).  Tried on the first batch against
        point-by-point evaluations, and used only where they agree to
        round-off and the function draws no random numbers.
    draws : bool, optional
        False where the caller already knows that the function draws from
        none of ``target.rngs`` (learnt from its first call): then no state
        is saved, compared or replayed.  Default: found after the first
        evaluation here.

    The ``n``-th evaluation of output ``j`` at a point returns the ``n``-th
    value computed there, so repeated evaluations (which look for
    nondeterminism) see the function's real repeats.
    """

    def __init__(
        self,
        target: Any,
        k: int,
        rows: Callable[[np.ndarray], np.ndarray] | None = None,
        draws: bool | None = None,
    ) -> None:
        self.target = target
        self.k = k
        self.rows = rows
        #: None until tried; False after the vectorised rows failed or disagreed.
        self.rows_work: bool | None = None
        self.evaluations = 0
        self._x0_bits = np.ascontiguousarray(target.flat.x0, dtype=np.float64).view(np.int64)
        #: The first point-by-point evaluation at ``x0``, kept until the vectorised rows are tried:
        #: they are then tried against it (``x0`` evaluated as one more row) instead of against an
        #: evaluation of their first row made for that alone.
        self._plain_x0: np.ndarray | None = None
        #: Values of ``fn`` at ``x0`` computed before they were asked for, in order: a call made
        #: before the check (:meth:`seed_x0`), the vectorised rows' value there once they agreed
        #: with the plain one (a real repeat, for the repeats that look for nondeterminism).  The
        #: next evaluations at ``x0`` read them instead of calling ``fn``.  Only for one output
        #: with nothing stored; with stored values they are kept as the values at ``x0``.
        self._x0_known: list[np.ndarray] = []
        self._values: dict[bytes, list[np.ndarray]] = {}
        self._seen: list[dict[bytes, int]] = [{} for _ in range(k)]
        self._prefetched = False  # True once prefetch stored values for later evaluations
        #: Points to evaluate with the next vectorised call, for later evaluations to read (:meth:`expect`).
        self._expected: np.ndarray | None = None
        #: Those points and their values once evaluated, and how far each output's batches have read them.
        self._ahead: tuple[np.ndarray, np.ndarray] | None = None
        self._ahead_read = [0] * k
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        # Generators the function draws from; decided after its first call.
        self._active: list[int] | None = [] if draws is False else None
        self._saved = [] if draws is False else [r.get() for r in target.rngs]

    def _evaluate(self, x: np.ndarray) -> np.ndarray:
        raise_pending()
        if self._active is None or self._active or not getattr(self.target, "thread_safe", True):
            with self._serial:
                for k in range(len(self._saved)) if self._active is None else self._active:
                    self.target.rngs[k].set(self._saved[k])
                out = self.target.evaluate(x)
                if self._active is None:
                    self._active = [
                        k
                        for k, (r, s) in enumerate(zip(self.target.rngs, self._saved))
                        if not unchanged(r, s)
                    ]
        else:
            out = self.target.evaluate(x)
        self.evaluations += 1
        out = np.asarray(out, dtype=np.float64).reshape(-1)
        if self.rows is not None and self.rows_work is None and self._plain_x0 is None and self._is_x0(x):
            self._plain_x0 = out
        return out

    def _is_x0(self, x: np.ndarray) -> bool:
        """Whether ``x`` is ``x0``, bit for bit."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        return x.shape == self._x0_bits.shape and bool(np.array_equal(x.view(np.int64), self._x0_bits))

    def value(self, j: int, x: np.ndarray) -> float:
        """Output ``j``'s projection at ``x`` (evaluating ``fn`` only at a new point or repeat)."""
        if self.k == 1 and not self._prefetched:
            # One output and nothing evaluated ahead: every call is a new evaluation (a point
            # seen before is a repeat), so nothing needs remembering.  A later prefetch
            # evaluates the points it is given afresh, which a repeat here would have done.
            if self._x0_known and self._is_x0(x):
                with self._lock:
                    known = self._x0_known.pop(0) if self._x0_known else None
                if known is not None:
                    return float(known[0])
            return float(self._evaluate(x)[0])
        key = _keys(x[None, :], self._x0_bits)[0]
        with self._lock:
            n = self._seen[j].get(key, 0)
            self._seen[j][key] = n + 1
            values = self._values.get(key)
            if values is not None and n < len(values):
                return float(values[n][j])
        out = self._evaluate(x)
        with self._lock:
            self._values.setdefault(key, []).append(out)
        return float(out[j])

    def batch(self, j: int, rows: np.ndarray) -> np.ndarray:
        """Output ``j``'s projections at the rows of ``rows``, new points evaluated at once.

        With one output and nothing evaluated ahead there is no other to
        share them with: the rows are evaluated (afresh, as a plain check
        would) without being remembered.
        """
        if self._ahead is not None:
            ahead = self._read_ahead(j, rows)
            if ahead is not None:
                return ahead
        if self.k == 1 and not self._prefetched:
            return self._evaluate_rows(rows)[:, 0]
        keys = _keys(rows, self._x0_bits)
        known: list[float] = []
        done: list[int] = []
        todo: list[int] = []
        seen, stored = self._seen[j], self._values
        with self._lock:
            for r, key in enumerate(keys):
                n = seen.get(key, 0)
                seen[key] = n + 1
                values = stored.get(key)
                if values is not None and n < len(values):
                    done.append(r)
                    known.append(values[n][j])
                else:
                    todo.append(r)
        out = np.empty(len(rows))
        out[done] = known
        if todo:
            fresh = self._evaluate_rows(rows[todo])
            with self._lock:
                for r, values in zip(todo, fresh):
                    stored.setdefault(keys[r], []).append(values)
            out[todo] = fresh[:, j]
        return out

    def prefetch(self, rows: np.ndarray) -> None:
        """Evaluate the rows not yet seen at once; later evaluations there read them."""
        keys = _keys(rows, self._x0_bits)
        with self._lock:
            todo = [r for r, key in enumerate(keys) if key not in self._values]
        if todo:
            fresh = self._evaluate_rows(rows[todo])
            with self._lock:
                self._prefetched = True
                # (evaluations now read the store: what is known at x0 goes there, first)
                if self._x0_known:
                    self._values.setdefault(self._x0_key(), [])[:0] = self._x0_known
                    self._x0_known = []
                for r, values in zip(todo, fresh):
                    self._values.setdefault(keys[r], []).append(values)

    def _read_ahead(self, j: int, rows: np.ndarray) -> np.ndarray | None:
        """Output ``j``'s values at ``rows`` where they are the next points evaluated ahead, bit for bit.

        The points :meth:`expect` was given are asked for in their order (a
        sweep's batches); each output reads them once, as the first
        evaluations there.  None where ``rows`` are other points.
        """
        if self._ahead is None:
            return None
        points, values = self._ahead
        at = self._ahead_read[j]
        end = at + len(rows)
        if end > len(points) or rows.shape[1:] != points.shape[1:]:
            return None
        wanted = np.ascontiguousarray(rows, dtype=np.float64)
        if not np.array_equal(wanted.view(np.int64), points[at:end].view(np.int64)):
            return None
        with self._lock:
            if self._ahead_read[j] != at:  # read meanwhile by another thread
                return None
            self._ahead_read[j] = end
        return values[at:end, j].copy()

    def expect(self, rows: np.ndarray) -> None:
        """Evaluate ``rows`` with the next vectorised call, for later evaluations to read.

        For points known ahead (a small check's sweep at the step it will
        most likely take): one vectorised call then serves the noise probe
        and the sweep.  Where the next call is not vectorised (the function
        cannot be, or draws random numbers), they are not evaluated at all.
        """
        if self.rows is not None and self.rows_work is not False and len(rows):
            self._expected = rows

    def _evaluate_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every projection at every row: vectorised where that works, else point by point.

        Points given to :meth:`expect` are evaluated with the rows of a
        vectorised call (not of a point-by-point one) and kept for later.
        """
        expected, self._expected = self._expected, None
        if self.rows is None or self.rows_work is False or self._active != []:
            return np.array([self._evaluate(r) for r in rows]).reshape(len(rows), self.k)
        raise_pending()
        m = len(rows)
        if expected is not None:
            rows = np.concatenate([rows, expected])
        if self.rows_work is not None:
            values = np.asarray(self.rows(rows), dtype=np.float64).reshape(len(rows), self.k)
            self.evaluations += len(rows)
        else:
            values = self._tried(rows, m)
        if len(values) > m and expected is not None:
            self._ahead = (np.ascontiguousarray(expected, dtype=np.float64), values[m:])
        return values[:m]

    def _tried(self, rows: np.ndarray, m: int) -> np.ndarray:
        """The first vectorised call, tried against a point-by-point evaluation.

        The one at x0 made already (x0 then evaluated as one more row), else
        one of the first row.  Where the vectorised call fails or disagrees,
        the first ``m`` rows are evaluated point by point (the others, points
        evaluated ahead, are dropped).
        """
        vectorised = self.rows
        if vectorised is None:
            raise RuntimeError("no vectorised evaluation to try")
        at_x0 = self._plain_x0
        if at_x0 is None:
            probe, tried = self._evaluate(rows[0]), rows
        else:
            probe, tried = at_x0, np.concatenate([self._x0_bits.view(np.float64)[None, :], rows])
        self._plain_x0 = None  # tried now (the probe's own evaluation may have kept one)
        values: np.ndarray | None = None
        with contextlib.suppress(*_VECTORISE_FAILURES):
            values = np.asarray(vectorised(tried), dtype=np.float64).reshape(len(tried), self.k)
        scale = max(float(np.max(np.abs(probe))), 1e-300)
        self.rows_work = values is not None and bool(np.all(np.abs(values[0] - probe) <= 1e-13 * scale))
        if values is None or not self.rows_work:
            rest = rows[:m] if at_x0 is not None else rows[1:m]  # the rows a plain evaluation has to do
            done = [] if at_x0 is not None else [probe[None, :]]
            return np.concatenate([*done, self._evaluate_rows(rest)])
        self.evaluations += len(tried) - 1  # (the probe was counted when it was evaluated)
        if at_x0 is not None:
            self.evaluations += 1  # x0's row, evaluated again
            self._keep_x0_again(values[0])
            return values[1:]
        values[0] = probe
        return values

    def _x0_key(self) -> bytes:
        return _keys(self._x0_bits.view(np.float64)[None, :], self._x0_bits)[0]

    def seed_x0(self, values: np.ndarray) -> None:
        """Every projection at ``x0`` from a call of ``fn`` made before (counted as an evaluation).

        The first evaluation at ``x0`` reads them; the vectorised rows are
        tried against them.  Only for values computed the way an evaluation
        here computes them (the same float64 inputs, the generators
        replayed), given before any evaluation at ``x0``.
        """
        values = np.array(values, dtype=np.float64).reshape(self.k)
        with self._lock:
            self.evaluations += 1
            if self.rows is not None and self.rows_work is None and self._plain_x0 is None:
                self._plain_x0 = values
            if self.k == 1 and not self._prefetched:
                self._x0_known.append(values)
            else:
                self._values.setdefault(self._x0_key(), []).append(values)

    def _keep_x0_again(self, again: np.ndarray) -> None:
        """Keep the vectorised value at ``x0`` (which agreed with the plain one) as the second there."""
        with self._lock:
            if self.k == 1 and not self._prefetched:
                self._x0_known.append(again.copy())
                return
            stored = self._values.get(self._x0_key())
            if stored is not None and len(stored) == 1:
                stored.append(again.copy())

    def function(self, j: int) -> Callable[[np.ndarray], float]:
        """Output ``j``'s projection as a function of the point."""
        return lambda x: self.value(j, x)

    def restore_rngs(self) -> None:
        """The random generators as they were when this was made."""
        restore_states(self.target.rngs, self._saved)

    def output_target(self, j: int) -> Any:
        """A target whose loss is output ``j``'s projection (no generators of its own to replay)."""
        from .adapters.base import Target

        t = self.target
        complex_eval = t.evaluate_complex
        return Target(
            flat=t.flat,
            evaluate=self.function(j),
            gradient=None,
            call_grad=t.call_grad,
            evaluate_batch=None if self.rows is None else lambda rows: self.batch(j, rows),
            evaluate_complex=None if complex_eval is None else lambda z: np.asarray(complex_eval(z))[j],
            framework=t.framework,
            precision=list(t.precision),
            rngs=[],
            thread_safe=True,
        )


class OutputAdapter:
    """An adapter whose :meth:`target` is a prepared output's target; all else is ``adapter``'s."""

    def __init__(self, adapter: Any, target: Any) -> None:
        self._adapter = adapter
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    @contextlib.contextmanager
    def target(self, loss: Any, params: Any, *, float64: bool = True) -> Iterator[Any]:
        yield self._target
