"""Working parameters: tensors at ``x0`` that evaluations move one block at a time.

Fast mode evaluates the loss at points that differ from ``x0`` in one block
(one parameter, or part of one).  Building a new float64 tensor for every
parameter at each such point costs a copy of the whole model per evaluation;
here the loss reads a fixed set of tensors holding ``x0``, an evaluation
writes the moved entries of its block into them, evaluates, and writes
``x0``'s entries back (also when the loss raises).

On the CPU, when every parameter is evaluated in float64, the tensors are
views of ``flat.x0`` itself, so they cost no memory; the entries are written
back from the user's own tensors, whose float64 values they are exactly, and
``x0`` is whole again after every evaluation.  Elsewhere (a GPU, a parameter
evaluated in another dtype) they are tensors of their own, written back from
``x0``.

A loss that writes into its parameters in place (``p.mul_(2)`` under
``torch.no_grad()``) bumps the tensor's version counter: the parameter is
then written back whole before the next evaluation, so every evaluation
starts from ``x0``.  A write through ``.data`` bypasses the counter and is
not seen.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gradcheck_core.differences import add_scaled, scaled
from gradcheck_core.flatten import Flat
from gradcheck_core.pages import give_back

from .float64 import _tensor

__all__ = ["WorkingParameters"]

_EXACT_SOURCES = (torch.float16, torch.float32, torch.float64)


def _exact_source(tensor: torch.Tensor, values: np.ndarray) -> np.ndarray | None:
    """``tensor`` as a 1-d numpy array whose float64 values are exactly ``values`` (None if it has none)."""
    t = tensor.detach()
    if (
        t.device.type != "cpu"
        or t.dtype not in _EXACT_SOURCES
        or t.layout != torch.strided
        or t.is_conj()
        or t.is_neg()
    ):
        return None
    array = t.reshape(-1).numpy()
    if array.shape != values.shape or not np.array_equal(array, values):
        return None
    return array


class WorkingParameters:
    """One tensor per parameter holding ``flat.x0``; :meth:`moved` moves one block while inside.

    Parameters
    ----------
    flat : Flat
        The parameters (real values only).
    work : list of torch.dtype
        The dtype each parameter is evaluated in.
    originals : list of torch.Tensor
        The user's tensors (their values, never written to).
    """

    def __init__(self, flat: Flat, work: Sequence[torch.dtype], originals: Sequence[torch.Tensor]) -> None:
        self.flat = flat
        x0 = flat.x0
        self.offsets = [leaf.offset for leaf in flat.leaves]
        sources: list[np.ndarray | None] = []
        if all(t.device.type == "cpu" and dtype == torch.float64 for t, dtype in zip(originals, work)):
            sources = [_exact_source(t, x0[leaf.slice]) for t, leaf in zip(originals, flat.leaves)]
        self.sources: list[np.ndarray] | None = None
        if sources and all(s is not None for s in sources):
            self.sources = [s for s in sources if s is not None]
            self.tensors = [torch.from_numpy(x0[leaf.slice]).view(leaf.shape) for leaf in flat.leaves]
        else:
            self.tensors = [
                _tensor(x0[leaf.slice].reshape(leaf.shape), dtype, t.device)
                for t, dtype, leaf in zip(originals, work, flat.leaves)
            ]
        # The tensors whose version counters tell of an in-place write by the
        # loss, with the parameter each belongs to.
        self.watched: list[tuple[int, torch.Tensor]] = list(enumerate(self.tensors))
        self.versions: list[int] = []
        self.lock = threading.RLock()
        self._buffer: np.ndarray | None = None
        self._mark()

    @property
    def shares_x0(self) -> bool:
        """True where the tensors are views of ``flat.x0`` (no memory of their own)."""
        return self.sources is not None

    def watch(self, holders: Sequence[torch.Tensor]) -> None:
        """Also watch ``holders`` (one per parameter: the tensors whose ``.data`` the tensors become)."""
        self.watched += list(enumerate(holders))
        self._mark()

    def structure(self) -> Any:
        """The tensors in the structure of the parameters."""
        tensors = iter(self.tensors)
        return self.flat.unravel(self.flat.x0, lambda piece, original: next(tensors))

    @contextlib.contextmanager
    def at_x0(self) -> Iterator[list[torch.Tensor]]:
        """The tensors, holding ``x0``, for one evaluation there."""
        with self.lock:
            try:
                yield self.tensors
            finally:
                self._repair()

    @contextlib.contextmanager
    def set_aside(self) -> Iterator[None]:
        """``x0``'s memory given back to the system while inside; written again from the sources on exit.

        For the moment the gradient is copied into its flat vector: autograd's
        gradient, the flat vector and ``x0`` are then not all held at once (at
        ten million parameters, 80 MB less).  Only where the tensors are views
        of ``x0`` (whose values are exactly the sources'), and no evaluation
        reads them while inside; elsewhere it does nothing.  The values come
        back also after an exception.
        """
        if self.sources is None:
            yield
            return
        with self.lock:
            given = give_back(self.flat.x0)
            try:
                yield
            finally:
                if given:
                    for k, leaf in enumerate(self.flat.leaves):
                        self._put_back(k, leaf.offset, leaf.offset + leaf.size)
                    self._mark()

    @contextlib.contextmanager
    def moved(self, block: slice, w: np.ndarray, s: float) -> Iterator[list[torch.Tensor]]:
        """The tensors, holding ``x0`` but for ``x0[block] + s * w`` on ``block``, while inside."""
        with self.lock:
            parts = self._parts(block)
            try:
                for k, lo, hi in parts:
                    self._write(k, lo, hi, w[lo - block.start : hi - block.start], s)
                self._mark()
                yield self.tensors
            finally:
                for k, lo, hi in parts:
                    self._put_back(k, lo, hi)
                self._repair()

    @contextlib.contextmanager
    def placed(self, positions: np.ndarray, values: np.ndarray) -> Iterator[list[torch.Tensor]]:
        """The tensors, holding ``x0`` but for ``values`` at the flat ``positions`` (a few), while inside."""
        with self.lock:
            spots = [(max(0, bisect.bisect_right(self.offsets, p) - 1), p) for p in positions.tolist()]
            try:
                for (k, p), v in zip(spots, values.tolist()):
                    if self.sources is not None:
                        self.flat.x0[p] = v
                    else:
                        self._copy_into(k, p, p + 1, np.array([v]))
                self._mark()
                yield self.tensors
            finally:
                for k, p in spots:
                    self._put_back(k, p, p + 1)
                self._repair()

    # -- internals -----------------------------------------------------------------
    def _parts(self, block: slice) -> list[tuple[int, int, int]]:
        """``(parameter, start, stop)`` of the pieces of ``block`` (flat indices) in each parameter."""
        start, stop = int(block.start), int(block.stop)
        parts = []
        k = max(0, bisect.bisect_right(self.offsets, start) - 1)
        while start < stop and k < len(self.offsets):
            leaf = self.flat.leaves[k]
            hi = min(stop, leaf.offset + leaf.size)
            if hi > start:
                parts.append((k, start, hi))
                start = hi
            k += 1
        return parts

    def _write(self, k: int, lo: int, hi: int, w: np.ndarray, s: float) -> None:
        x0 = self.flat.x0
        if self.sources is not None:
            offset = self.offsets[k]
            if hi - lo == 1:  # one entry (a step of the full sweep): the same sum on Python floats
                x0[lo] = float(w[0]) * s + float(self.sources[k][lo - offset])
                return
            # Outside a move x0 holds the sources' float64 values (each move is
            # written back), so s * w is added to it in place, a chunk at a time
            # through a small buffer: the same sums as s * w + source, bit for bit,
            # in one pass over the block instead of two.
            self._buffer = add_scaled(x0[lo:hi], w, s, self._buffer)
            return
        values = x0[lo:hi] + scaled(w, s)
        self._copy_into(k, lo, hi, values)

    def _put_back(self, k: int, lo: int, hi: int) -> None:
        offset = self.offsets[k]
        if self.sources is not None:
            if hi - lo == 1:
                self.flat.x0[lo] = self.sources[k][lo - offset]
            else:
                self.flat.x0[lo:hi] = self.sources[k][lo - offset : hi - offset]
            return
        self._copy_into(k, lo, hi, self.flat.x0[lo:hi])

    def _copy_into(self, k: int, lo: int, hi: int, values: np.ndarray) -> None:
        offset = self.offsets[k]
        with torch.no_grad():
            self.tensors[k].view(-1)[lo - offset : hi - offset].copy_(torch.from_numpy(values))

    def _mark(self) -> None:
        self.versions = [t._version for _, t in self.watched]

    def _repair(self) -> None:
        """Write back whole every parameter the loss wrote into in place."""
        written = {k for (k, t), seen in zip(self.watched, self.versions) if t._version != seen}
        for k in sorted(written):
            leaf = self.flat.leaves[k]
            self._put_back(k, leaf.offset, leaf.offset + leaf.size)
        self._mark()
