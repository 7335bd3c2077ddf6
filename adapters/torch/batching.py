"""Batched evaluation: the points of a sweep through ``torch.func.vmap``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
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


#: Points of more parameters than this are evaluated one by one: each row of a
#: batch is a copy of the whole point, and beyond about this size building them
#: costs more than vmap saves, where one-by-one evaluations move a few entries in
#: place (a sampled sweep of a 32,050-parameter MLP: the same time both ways;
#: of 66,760 parameters: vmap 1.35 times slower; of 13,360: 1.5 to 2.3 times faster).
MAX_PARAMETERS = 1 << 14


class ModuleParameters:
    """The parameter slots of modules that a ``loss()`` reads, for evaluation under vmap.

    A loss without arguments reads its parameters from modules.  Under vmap
    each slot (``module._parameters[name]``, every place a parameter is
    registered, shared ones included) holds the row's tensor while the loss
    runs, as ``torch.func.functional_call`` does for ``forward``.  A loss
    that reads a parameter some other way (a reference kept from before the
    check) would see it unmoved: while the vectorised call runs, the
    parameters themselves hold NaN (an expanded tensor, no memory), so such
    a loss gives NaN, or raises when it writes to them, and the values
    disagree with the looped ones the first batch is compared with.

    Built by :meth:`of`, which gives None unless every parameter has a slot.
    """

    def __init__(
        self, slots: list[tuple[torch.nn.Module, str, int]], flat: Flat, originals: list[torch.Tensor]
    ) -> None:
        self.slots = slots
        self.flat = flat
        #: The parameters' own ``.data``, which :meth:`poisoned` puts back.
        self.originals = originals

    @classmethod
    def of(
        cls, modules: Sequence[torch.nn.Module], flat: Flat, originals: list[torch.Tensor]
    ) -> ModuleParameters | None:
        """The slots of the parameters (``flat.values``) in ``modules``; None if one has none."""
        index = {id(t): k for k, t in enumerate(flat.values)}
        slots = [
            (m, name, index[id(p)])
            for m in modules
            for name, p in m._parameters.items()
            if p is not None and id(p) in index
        ]
        if not index or {k for _, _, k in slots} != set(range(len(flat.values))):
            return None
        return cls(slots, flat, originals)

    @contextlib.contextmanager
    def holding(self, row: torch.Tensor) -> Iterator[None]:
        """Every slot holds its parameter's piece of ``row`` while inside."""
        pieces = [row[leaf.slice].reshape(leaf.shape) for leaf in self.flat.leaves]
        saved = [(m, name, m._parameters[name]) for m, name, _ in self.slots]
        try:
            for m, name, k in self.slots:
                m._parameters[name] = pieces[k]
            yield
        finally:
            for m, name, p in saved:
                m._parameters[name] = p

    @contextlib.contextmanager
    def poisoned(self) -> Iterator[None]:
        """The parameters hold NaN while inside; their own values after."""
        try:
            for t in self.flat.values:
                t.data = torch.full((), float("nan"), dtype=t.dtype, device=t.device).expand(t.shape)
            yield
        finally:
            for t, data in zip(self.flat.values, self.originals):
                t.data = data


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
        modules: ModuleParameters | None = None,
        guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.adapter = adapter
        #: Entered around every call (the evaluations' lock, where they take turns).
        self.guard = guard or contextlib.nullcontext
        #: Where the loss reads its parameters from modules (``loss()``): the
        #: modules' parameter slots that take each row's tensors.
        self.modules = modules
        self.promotion = promotion
        self.loss = loss
        self.flat = flat
        self.evaluate = evaluate
        self.snapshot = snapshot
        self.promote = promote
        devices = {t.device for t in flat.values}
        self.device = next(iter(devices))
        self.possible = (
            adapter.vmap
            and promote
            and len(devices) == 1
            and hasattr(torch, "func")
            and flat.n <= MAX_PARAMETERS
        )
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
        flat, loss, modules = self.flat, self.loss, self.modules

        def one(row: torch.Tensor) -> torch.Tensor:
            if modules is None:
                return loss(flat.unravel(row, lambda piece, original: piece)).reshape(())
            with modules.holding(row):
                return loss().reshape(())

        if self.device.type == "cpu" and rows.dtype == np.float64 and rows.flags.c_contiguous:
            # the rows are the caller's scratch copies of the points: read in place
            points = torch.from_numpy(rows)
        else:
            points = _tensor(rows, torch.float64, self.device)
        self.snapshot.replay()
        with (
            contextlib.nullcontext() if modules is None else modules.poisoned(),
            float64_scope(self.promote, self.promotion),
        ):
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
        with self.guard():
            return self._evaluate(rows)

    def _evaluate(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if self.works is False or not self.faster:
            return self.loop(rows)
        done = np.empty(0)
        if self.works is None:
            probe, rows = rows[: self.probe], rows[self.probe :]
            done = self._timed_loop(probe)
            try:
                fast = self._vmap(probe)
            # The loss has just run at these points one by one: whatever the vectorised
            # call raises there says that it cannot run under vmap (also the check's own
            # error of a loss that differentiates the parameters it holds, which under vmap
            # are not the tensors in the modules): loop from now on.
            except Exception:
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
