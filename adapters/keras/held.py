"""Keras variables holding the point of an evaluation, rewritten only where it changed.

Both ways the adapter evaluates a model through its variables (``loss()``
on the model's own weights, ``loss(model)`` on its float64 copy) write each
point into the variables with ``assign``.  Assigning every variable costs a
copy of the whole model per evaluation, while fast mode's points differ
from ``x0`` in one block (one variable, or part of one).  :class:`HeldPoint`
remembers which variables may hold something other than their piece of
``x0`` and assigns only those and the ones the new point moves.

A loss that assigns to the checked variables itself is not seen (Keras
variables have no version counter); the variables are then only right again
at the next point that moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradcheck_core.differences import scaled
from gradcheck_core.flatten import Flat

from .values import _assign

__all__ = ["HeldPoint", "pieces_of"]


def pieces_of(flat: Flat, block: slice) -> list[tuple[int, int, int]]:
    """``(leaf, start, stop)``: the part of ``block`` (flat indices) in each leaf it covers."""
    start, stop = int(block.start), int(block.stop)
    out = []
    for k, leaf in enumerate(flat.leaves):
        lo, hi = max(start, leaf.offset), min(stop, leaf.offset + leaf.size)
        if lo < hi:
            out.append((k, lo, hi))
    return out


class HeldPoint:
    """One Keras variable per leaf of ``flat``; :meth:`put` and :meth:`along` write a point into them.

    Parameters
    ----------
    flat : Flat
        The parameters; ``flat.x0`` is the point the variables start from.
    variables : sequence of keras.Variable
        One per leaf, in flatten order.
    at_x0 : bool
        Whether the variables hold ``flat.x0`` now (the user's own
        variables); False makes the first point assign every one.
    """

    def __init__(self, flat: Flat, variables: Sequence[Any], *, at_x0: bool) -> None:
        self.flat = flat
        self.variables = list(variables)
        #: The leaves whose variables may hold something other than their piece of x0.
        self.away: set[int] = set() if at_x0 else set(range(len(self.variables)))

    def put(self, x: np.ndarray) -> None:
        """Make the variables hold ``x``, assigning only the ones that change."""
        x0 = self.flat.x0
        for k, leaf in enumerate(self.flat.leaves):
            piece, home = x[leaf.slice], x0[leaf.slice]
            at_home = np.array_equal(piece, home)
            if at_home and k not in self.away:
                continue
            _assign(self.variables[k], piece.reshape(leaf.shape))
            if at_home:
                self.away.discard(k)
            else:
                self.away.add(k)

    def along(self, block: slice, w: np.ndarray, s: float) -> None:
        """Make the variables hold ``x0`` but for ``x0[block] + s * w`` on ``block``."""
        x0 = self.flat.x0
        pieces = pieces_of(self.flat, block)
        covered = {k for k, _, _ in pieces}
        for k in sorted(self.away - covered):
            leaf = self.flat.leaves[k]
            _assign(self.variables[k], x0[leaf.slice].reshape(leaf.shape))
            self.away.discard(k)
        for k, lo, hi in pieces:
            leaf = self.flat.leaves[k]
            values = x0[leaf.slice].copy()
            a, b = lo - leaf.offset, hi - leaf.offset
            values[a:b] = values[a:b] + scaled(w[lo - block.start : hi - block.start], s)
            self.away.add(k)
            _assign(self.variables[k], values.reshape(leaf.shape))

    def forget(self) -> None:
        """Record that every variable holds its piece of ``x0`` again (put back by the caller)."""
        self.away.clear()
