"""Batched evaluation: the points of a sweep through ``torch.func.vmap``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from gradcheck_core.flatten import Flat

from .float64 import Promotion, _tensor, float64_scope
from .state import _Snapshot

# What torch.func.vmap raises for code it cannot vectorise (an .item(), an
# in-place write into a captured tensor, an operator without a batching rule):
# then the points are evaluated one by one.  Any other exception (a ValueError
# of the loss's own) is not retried: it reaches the caller as it is.
_VMAP_FAILURES = (RuntimeError, NotImplementedError, TypeError)


class _BatchSettings(Protocol):
    """What :class:`_Batched` reads from its adapter (a ``TorchAdapter``)."""

    vmap: bool
    batch_rows: int

    def to_numpy(self, value: Any) -> np.ndarray: ...


class _Batched:
    """``evaluate_batch`` through ``torch.func.vmap``, with a looped fallback.

    The first call evaluates a few points both ways.  If vmap raises, or its
    values differ from the looped ones, every later call loops (replaying the
    random generators before each point).  Otherwise points go through vmap
    in chunks whose size is tuned on the way: sizes 8, 16, 32, ... are tried
    while the time per point keeps close to the best seen, then the best
    size is kept.  If even that is slower per point than the loop (a loss
    over a large batch of data, where vectorising only adds memory traffic),
    the loop takes over.  Times are minima, which are robust on a busy machine.
    """

    sizes = (8, 16, 32, 64, 128, 256, 512)
    probe = 3

    def __init__(
        self,
        adapter: _BatchSettings,
        loss: Callable[..., Any],
        flat: Flat,
        evaluate: Callable[[np.ndarray], Any],
        snapshot: _Snapshot,
        promote: bool,
        promotion: Promotion,
    ) -> None:
        self.adapter = adapter
        self.promotion = promotion
        self.loss = loss
        self.flat = flat
        self.evaluate = evaluate
        self.snapshot = snapshot
        self.promote = promote
        devices = {t.device for t in flat.values}
        self.device = next(iter(devices))
        self.possible = adapter.vmap and promote and len(devices) == 1 and hasattr(torch, "func")
        #: None until tried; False after vmap failed or disagreed with the loop.
        self.works: bool | None = None
        #: False once the loop proved faster than vmap.
        self.faster = True
        self.chunk = self.sizes[0]
        self.settled = False
        self.loop_seconds = float("inf")
        self.trials: dict[int, float] = {}

    def _one(self, x: np.ndarray) -> float:
        out = self.evaluate(x)
        return float(np.asarray(self.adapter.to_numpy(out), dtype=np.float64).reshape(-1)[0])

    def loop(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            self.snapshot.replay()
            out[k] = self._one(row)
        return out

    def _timed_loop(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            start = time.perf_counter()
            self.snapshot.replay()
            out[k] = self._one(row)
            self.loop_seconds = min(self.loop_seconds, time.perf_counter() - start)
        return out

    def _vmap(self, rows: np.ndarray) -> np.ndarray:
        flat, loss = self.flat, self.loss

        def one(row: torch.Tensor) -> torch.Tensor:
            return loss(flat.unravel(row, lambda piece, original: piece)).reshape(())

        points = _tensor(rows, torch.float64, self.device)
        self.snapshot.replay()
        with float64_scope(self.promote, self.promotion):
            values = torch.func.vmap(one, randomness="error")(points)
        return np.asarray(self.adapter.to_numpy(values), dtype=np.float64).reshape(-1)

    def _adapt(self, size: int, per_point: float) -> None:
        """Record a chunk's time per point; pick the next size, or settle."""
        self.trials[size] = min(self.trials.get(size, float("inf")), per_point)
        best_size = min(self.trials, key=lambda s: self.trials[s])
        best = self.trials[best_size]
        bigger = [s for s in self.sizes if size < s <= self.adapter.batch_rows]
        if bigger and per_point <= 1.25 * best:
            self.chunk = bigger[0]
            return
        self.chunk = best_size
        self.settled = True
        self.faster = best <= self.loop_seconds

    def vectorised(self, rows: np.ndarray) -> np.ndarray:
        parts = []
        pos = 0
        while pos < len(rows):
            if not self.faster:
                parts.append(self.loop(rows[pos:]))
                break
            part = rows[pos : pos + self.chunk]
            start = time.perf_counter()
            parts.append(self._vmap(part))
            if not self.settled and len(part) == self.chunk:
                self._adapt(self.chunk, (time.perf_counter() - start) / len(part))
            pos += len(part)
        return np.concatenate(parts) if parts else np.empty(0)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if self.works is False or not self.faster:
            return self.loop(rows)
        done = np.empty(0)
        if self.works is None:
            probe, rows = rows[: self.probe], rows[self.probe :]
            done = self._timed_loop(probe)
            try:
                fast = self._vmap(probe)
            except _VMAP_FAILURES:  # the loss cannot run under vmap: loop from now on
                self.works = False
            else:
                scale = np.maximum(np.abs(done), 1e-300)
                self.works = bool(np.all(np.abs(fast - done) <= 1e-11 * scale + 1e-300))
            if not self.works:
                return np.concatenate([done, self.loop(rows)])
        try:
            return np.concatenate([done, self.vectorised(rows)])
        except _VMAP_FAILURES:
            self.works = False
            return np.concatenate([done, self.loop(rows)])
