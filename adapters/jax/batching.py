"""Batched evaluation: blocks of perturbed points through ``jax.jit(jax.vmap(...))``.

The full sweep evaluates blocks of perturbed points with
``jax.jit(jax.vmap(...))``, checked on its first rows against single calls.
A block is as large as the scratch memory allowed for one call
(:data:`BATCH_MEMORY`); a shorter block is padded to a size already compiled
when that is cheaper than compiling a new one.  A loss that cannot be
vectorised, or whose vectorised values disagree with single calls, is
evaluated point by point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradcheck_core.flatten import Flat

from ..base import python_rng_states
from .callbacks import raise_if_users
from .programs import compiled_program, compiles, program_notes
from .x64_mode import x64

__all__ = [
    "BATCH_MEMORY",
    "COMPILED_RTOL",
    "MIN_BATCH",
    "PROBE_ROWS",
    "TRIAL_CALLS",
    "TRIAL_GAIN",
    "TRIAL_WORTH",
    "BatchedEvaluation",
]

#: Scratch memory (bytes) one batched call may use; larger chunks are split.
#: On a CPU, blocks that stay in cache run two to three times faster per row
#: than large ones; accelerators want large blocks.
BATCH_MEMORY = {"cpu": 4 << 20, "gpu": 512 << 20}
#: Rows of a first batched call that measures the scratch memory per row,
#: where the compiled single evaluation could not tell it.
PROBE_ROWS = 8
#: Fewer rows than this are evaluated one by one with the compiled loss: a
#: batch size of its own would cost a compilation that a short loop does not.
MIN_BATCH = 32
#: Timed calls of each block size a long CPU sweep compares (the first call of a size not counted).
TRIAL_CALLS = 60
#: A block size is tried where the sweep left takes this many times the budget block's compile time.
TRIAL_WORTH = 5.0
#: The wider block is kept where its calls take less than this part of the other's per point (means:
#: the calls' times vary by 2 x, and the sizes differ in how often a call is slow, not in the fastest).
TRIAL_GAIN = 0.95
#: Relative difference allowed between a compiled and a plain evaluation at
#: the same point (XLA fuses and reorders; anything larger means the compiled
#: function is not the same function, e.g. a Python side effect was frozen).
COMPILED_RTOL = 1e-9


class BatchedEvaluation:
    """The batched half of the runner (:class:`.runner.Runner`), which sets these attributes."""

    flat: Flat
    float64: bool
    device: Any
    out_dtype: Any
    vmapped: Any
    executables: dict[int, Any]
    max_rows: int
    row_scratch: float | None
    compile_seconds: float
    row_seconds: float
    shifted_seconds: dict[int, list[float]]
    shifted_done: int
    trial_marks: list[int] | None
    fresh_sizes: set[int]
    sweep_rows: int | None
    compiled: bool
    single: Any
    timed_sizes: set[int]
    batch_failed: bool
    shifted_executables: dict[int, Any]
    shifted_failed: bool
    shifted_checked: bool
    evaluate: Callable[[np.ndarray], Any]
    scalar_of_vector: Callable[[Any], Any]
    compiled_input: Callable[[np.ndarray], Any]

    def evaluate_batch(self, rows: np.ndarray) -> np.ndarray:
        """The losses at ``rows`` (one flat float64 point each), as float64.

        Parameters
        ----------
        rows : numpy.ndarray
            Shape ``(k, n)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(k,)``.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if self.vmapped is None and (self.batch_failed or len(rows) < MIN_BATCH):
            return self._loop(rows)
        if self.vmapped is None:
            first = self._try_batch(rows)
            if first is None:
                self.batch_failed = True  # from now on: point by point
                return self._loop(rows)
        else:
            first = np.empty(0)
        out = np.empty(len(rows))
        out[: len(first)] = first
        step = max(1, min(len(rows), self.max_rows))
        with x64(self.float64):
            for start in range(len(first), len(rows), step):
                part = rows[start : start + step]
                try:
                    out[start : start + len(part)] = self._padded(part)
                except Exception as exc:
                    raise_if_users(exc)  # Ctrl-C inside a callback stays a KeyboardInterrupt
                    raise
        return out

    def evaluate_shifted(self, x: np.ndarray, idx: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
        """The losses at ``x`` moved by ``shift[k]`` on coordinate ``idx[k]``, the points built by XLA.

        A full sweep's rows differ from ``x`` in one coordinate each; built
        inside one compiled ``vmap`` they cost no matrix of rows on the host.
        Its first values are checked against single calls; until they agree,
        a loss that cannot be vectorised this way comes back as None (the
        caller then builds rows for :meth:`evaluate_batch`), as it does in
        float32 checks, where the rows path rounds the points as the
        parameters' dtype does.  Tried before the rows path where the
        compiled single evaluation told its scratch memory (the block size
        follows from it): the sweep then compiles one vectorised program,
        not two.
        """
        if self.batch_failed or self.shifted_failed or not self.float64:
            return None
        if self.vmapped is None and not self.shifted_checked:
            if self.row_scratch is None or len(idx) < MIN_BATCH:
                return None  # the rows path measures the block size (or loops) first
            self.max_rows = self._rows_per_call(self.row_scratch)
        idx = np.asarray(idx, dtype=np.int64)
        shift = np.asarray(shift, dtype=np.float64)
        out = np.empty(len(idx))
        step = max(1, min(len(idx), self.max_rows))
        # tracing runs the loss's Python: the single calls that check the first values start
        # from the generators' states as they were
        states = [] if self.shifted_checked else [(r, r.get()) for r in python_rng_states()]
        try:
            with x64(self.float64):
                base = self.compiled_input(x)
                start = 0
                while start < len(idx):
                    if self.shifted_checked:
                        step = max(1, min(len(idx), self._tuned_rows(len(idx) - start)))
                    i, s = idx[start : start + step], shift[start : start + step]
                    out[start : start + len(i)] = self._shifted_padded(base, i, s)
                    start += len(i)
                    self.shifted_done += len(i)
        except Exception as exc:
            raise_if_users(exc)
            if self.shifted_checked or not isinstance(exc, (RuntimeError, NotImplementedError, TypeError)):
                raise  # the loss's own exception, or a program that ran before
            self.shifted_failed = True  # not vectorised this way: the rows path decides
            return None
        finally:
            for r, st in states:
                r.set(st)
        if not self.shifted_checked:
            rows = np.repeat(np.asarray(x, dtype=np.float64)[None, :], min(2, len(idx)), axis=0)
            rows[np.arange(len(rows)), idx[: len(rows)]] += shift[: len(rows)]
            if not _same(out[: len(rows)], self._loop(rows), self.out_dtype):
                self.shifted_failed = True
                return None
            self.shifted_checked = True
        return out

    def _rows_per_call(self, scratch: float) -> int:
        """Rows one vectorised call evaluates: as many as fit the scratch budget (each at least a point)."""
        budget = BATCH_MEMORY.get(_platform(self.device), BATCH_MEMORY["gpu"])
        return max(1, int(budget // max(scratch, 8.0 * self.flat.n)))

    def _block_size(self, k: int, compiled: dict[int, Any]) -> int:
        """``k`` rows, or a compiled block size above it where padding costs less than compiling."""
        size = min((s for s in compiled if s >= k), default=k)
        return k if (size - k) * self.row_seconds > self.compile_seconds else size

    def _shifted_padded(self, base: Any, i: np.ndarray, s: np.ndarray) -> np.ndarray:
        k = len(i)
        size = self._block_size(k, self.shifted_executables)
        if size > k:
            i = np.concatenate([i, np.repeat(i[-1:], size - k)])
            s = np.concatenate([s, np.repeat(s[-1:], size - k)])
        compiled_before = size in self.shifted_executables
        if not compiled_before:
            of_vector = self.scalar_of_vector

            def moved(b: Any, i_: Any, s_: Any) -> Any:
                return jax.vmap(lambda j, t: of_vector(b.at[j].add(t)))(i_, s_)

            start, before = time.perf_counter(), compiles()
            self.shifted_executables[size] = compiled_program(jax.jit(moved).trace(base, i, s), self.device)
            self.compile_seconds = time.perf_counter() - start
            if compiles() > before:
                self.fresh_sizes.add(size)
        start = time.perf_counter()
        out = np.asarray(self.shifted_executables[size](base, i, s), dtype=np.float64)[:k]
        if compiled_before:  # a first call may include work of its own
            self.row_seconds = (time.perf_counter() - start) / size
            self.shifted_seconds.setdefault(size, []).append(self.row_seconds)
        return out

    def _tuned_rows(self, here_left: int) -> int:
        """Points per call for the rest of a sweep: the scratch budget's, or twice as many where faster.

        How fast a block runs per point depends on the model as much as on
        its scratch memory (on one CPU, a 5,410-parameter MLP ran 15% faster
        per point at twice the budget's block, a small CNN 8% slower), so on
        a CPU a long sweep measures both: :data:`TRIAL_CALLS` timed calls of
        the budget's block, as many of the wider block (its first call left
        out), and as many of the budget's again, each size running on (taking
        turns call by call, the two sizes ran alike: the faster block is
        faster when it runs on), and the wider block's mean time per point
        is compared with the budget's calls on both sides of it (a machine
        that slows down or speeds up meanwhile moves both alike).  The faster
        is kept for the rest of the sweep, and where the wider block was not
        compiled during this sweep, in the notes of the compiled loss
        (:func:`.programs.program_notes`), for later checks of the same
        program.  Tried only where the sweep left (a
        full sweep's two points per coordinate, less those evaluated) is worth
        :data:`TRIAL_WORTH` times what compiling the budget's block took and
        leaves room for the trial, and where this call has two wide blocks
        left (``here_left``; a sampled sweep, shorter than a full one, may pay
        for one compile in vain); accelerators keep the budget's block, which
        is a memory limit there.
        """
        budget = self.max_rows
        if not self.compiled or _platform(self.device) != "cpu":
            return budget
        if self.sweep_rows is not None:
            return self.sweep_rows
        wide = 2 * budget
        here = self.shifted_seconds.get(budget, [])
        there = self.shifted_seconds.get(wide, [])
        if self.trial_marks is None:  # not tried yet: chosen by an earlier check, or worth a compile?
            chosen = program_notes(self.single).get("sweep_rows")
            if chosen is not None and chosen[0] == budget:
                self.sweep_rows = int(chosen[1])
                return self.sweep_rows
            if len(here) < TRIAL_CALLS or not self._trial_pays(budget, wide, here, here_left):
                return budget
            self.trial_marks = [len(here)]
        if len(there) < TRIAL_CALLS:
            return wide
        if len(self.trial_marks) == 1:
            self.trial_marks.append(len(here))
        began, ended = self.trial_marks
        if len(here) - ended < TRIAL_CALLS:
            return budget
        beside = here[began - TRIAL_CALLS : began] + here[ended : ended + TRIAL_CALLS]
        self.sweep_rows = wide if _mean(there) < TRIAL_GAIN * _mean(beside) else budget
        # Compiled during this sweep, the wider block ran slower for a while than it does once
        # warm (one XLA thread: 91 to 100 us a point, then 73): this sweep takes the choice, and
        # the next check of the program, which finds it compiled, tries again.
        if wide not in self.fresh_sizes:
            program_notes(self.single)["sweep_rows"] = (budget, self.sweep_rows)
        return self.sweep_rows

    def _trial_pays(self, budget: int, wide: int, here: list[float], here_left: int) -> bool:
        """Whether the sweep left is long enough to try the wider block (see :meth:`_tuned_rows`)."""
        compiled = self.shifted_executables.get(budget)
        compile_seconds = program_notes(compiled).get("compile_seconds") if compiled is not None else None
        if compile_seconds is None and wide not in self.shifted_executables:
            return False
        room = max(here_left, 2 * self.flat.n - self.shifted_done)  # a full sweep's points left
        return (
            room * _mean(here) >= TRIAL_WORTH * (compile_seconds or 0.0)
            and room >= 3 * TRIAL_CALLS * wide
            and here_left >= 2 * wide
        )

    def _loop(self, rows: np.ndarray) -> np.ndarray:
        states = [(r, r.get()) for r in python_rng_states()]
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            for r, s in states:
                r.set(s)
            out[k] = float(np.asarray(self.evaluate(row), dtype=np.float64).reshape(()))
        return out

    def _executable(self, batch: Any) -> Any:
        """The vectorised loss compiled for ``batch``'s shape (cached per size)."""
        size = int(batch.shape[0])
        if size not in self.executables:
            start = time.perf_counter()
            self.executables[size] = compiled_program(self.vmapped.trace(batch), self.device)
            self.compile_seconds = time.perf_counter() - start
        return self.executables[size]

    def _try_batch(self, rows: np.ndarray) -> np.ndarray | None:
        """Compile the vectorised loss and check its first two rows against single calls.

        Returns the losses at the rows it evaluated (the first ones), or None
        when the loss cannot be vectorised.  Scratch memory per row (from the
        compiled single evaluation, else from a first small block) sets how
        many rows a call evaluates at once.
        """
        if self.row_scratch is not None:
            self.max_rows = self._rows_per_call(self.row_scratch)
            rows = rows[: self.max_rows]
        else:
            rows = rows[:PROBE_ROWS]
        states = [(r, r.get()) for r in python_rng_states()]
        try:
            with x64(self.float64):
                self.vmapped = jax.jit(jax.vmap(self.scalar_of_vector))
                batch = self.compiled_input(rows)
                compiled = self._executable(batch)
                got = np.asarray(compiled(batch), dtype=np.float64).reshape(-1)
                self.timed_sizes.add(len(rows))
                if self.row_scratch is None:
                    try:
                        scratch = float(compiled.memory_analysis().temp_size_in_bytes) / len(rows)
                    except Exception:  # not every backend reports it
                        scratch = 0.0
                    self.max_rows = self._rows_per_call(scratch)
        except Exception as exc:
            raise_if_users(exc)
            if not isinstance(exc, (RuntimeError, NotImplementedError, TypeError)):
                raise  # the loss's own exception (raised while traced for vmap), not retried
            self.vmapped = None
            return None
        finally:
            for r, s in states:
                r.set(s)
        try:  # outside the try above: the loss's own errors come through
            want = self._loop(rows[:2])
        finally:
            for r, s in states:
                r.set(s)
        if not _same(got[:2], want, self.out_dtype):
            self.vmapped = None
            return None
        return got

    def _padded(self, part: np.ndarray) -> np.ndarray:
        """Evaluate rows, padded to a compiled block size where that is cheaper than compiling."""
        k = len(part)
        size = self._block_size(k, self.executables)
        if size > k:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        batch = self.compiled_input(part)
        start = time.perf_counter()
        out = np.asarray(self._executable(batch)(batch), dtype=np.float64)[:k]
        if size in self.timed_sizes:  # the first call of a size includes compiling it
            self.row_seconds = (time.perf_counter() - start) / size
        self.timed_sizes.add(size)
        return out


def _mean(seconds: list[float]) -> float:
    return sum(seconds) / len(seconds)


def _same(a: Any, b: Any, dtype: Any = np.float64) -> bool:
    """Two evaluations of a loss computed in ``dtype`` agree (up to XLA's reordering of sums)."""
    try:
        a, b = np.asarray(a), np.asarray(b)
    except Exception:
        return False
    if a.shape != b.shape:
        return False
    if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    try:
        eps = float(np.finfo(dtype).eps)
    except (TypeError, ValueError):
        eps = float(np.finfo(np.float32).eps)
    rtol = max(COMPILED_RTOL, 1e4 * eps)
    a64, b64 = a.astype(np.complex128), b.astype(np.complex128)
    return bool(np.all(np.abs(a64 - b64) <= rtol * np.maximum(np.abs(a64), np.abs(b64)) + 1e-300))


def _platform(device: Any) -> str:
    try:
        return str((device or jax.devices()[0]).platform)
    except Exception:
        return "cpu"
