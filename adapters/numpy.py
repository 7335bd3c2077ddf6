"""The numpy adapter: handwritten backward passes checked in float64.

A loss ``loss(p)`` receives float64 copies of the parameters (float32 arrays
included), so the user's arrays are never touched.  A zero-argument
``loss()`` that reads the arrays directly is evaluated by writing the
perturbed values into those arrays; their original bytes are put back when the
check ends, also after an exception or Ctrl-C.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gradcheck_core.differences import add_scaled
from gradcheck_core.errors import InputError

from .base import Adapter, Target, python_rng_states, takes_argument

_FLOAT64 = np.dtype(np.float64)


class NumpyAdapter(Adapter):
    """numpy arrays; complex parameters take a complex gradient ``dL/dRe + 1j * dL/dIm``."""

    name = "numpy"
    supports_complex = True

    def is_leaf(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic, float)) and not isinstance(value, bool)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
        flat = self.flatten(params)
        if takes_argument(loss):
            build = _views_of(flat)

            def at(own: np.ndarray) -> Any:
                """The loss at a float64 point it owns (it gets views of it)."""
                return loss(build(own) if build is not None else flat.unravel(own, _piece))

            def evaluate(x: np.ndarray) -> Any:
                return at(x.copy() if x.dtype == _FLOAT64 else np.array(x, dtype=np.float64))

            evaluate_moved = _moved_of(flat, loss)
            if evaluate_moved is None:

                def evaluate_moved(i: int, v: float) -> Any:
                    # the point as evaluate() builds it, without copying it twice
                    own = flat.x0.copy()
                    own[i] = v
                    return at(own)

            def evaluate_along(block: slice, w: np.ndarray, s: float) -> Any:
                # the point built once, as the loss's own (no second copy of a vector as long as x0)
                own = flat.x0.copy()
                add_scaled(own[block], w, s)
                return at(own)

            def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
                return fn(flat.unravel(flat.x0 if x is None else x, _float64_copy))

            def evaluate_complex(z: np.ndarray) -> Any:
                return loss(flat.unravel(z, lambda piece, _: np.array(piece, dtype=np.complex128)))

            yield Target(
                flat=flat,
                evaluate=evaluate,
                gradient=None,
                call_grad=call_grad,
                evaluate_complex=None if flat.has_complex else evaluate_complex,
                evaluate_moved=evaluate_moved,
                evaluate_along=evaluate_along,
                rngs=python_rng_states(),
                framework=self.name,
                worker=RowWorker(loss, flat, np.random.get_state()),
            )
            return
        # loss() reads the arrays themselves: perturb them in place.
        arrays = []
        for leaf, value in zip([g[0] for g in flat.groups], flat.values):
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"loss takes no argument, so parameter {leaf.name!r} must be a numpy array "
                    f"that the loss reads, but it is a {type(value).__name__}, which cannot be "
                    "changed in place. Write the loss as loss(p) and read the values from p."
                )
            if not value.flags.writeable:
                raise InputError(
                    f"parameter {leaf.name!r} is a read-only array, so a loss() without "
                    "arguments cannot be checked by perturbing it; write the loss as loss(p)."
                )
            arrays.append(value)
        precision = [
            f"parameter {leaf.name!r} is {leaf.dtype} and the loss reads it in place, so each "
            "perturbation is rounded to that precision; write the loss as loss(p) to have it "
            "evaluated with float64 values"
            for leaf in [g[0] for g in flat.groups]
            if leaf.dtype not in ("float64", "float128", "longdouble", "complex128", "complex256")
        ]
        saved = [a.copy() for a in arrays]

        def write(x: np.ndarray) -> None:
            for a, piece in zip(arrays, flat.split(x)):
                a[...] = piece

        def evaluate_in_place(x: np.ndarray) -> Any:
            write(x)
            return loss()

        def call_grad_in_place(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            if x is None:
                for a, s in zip(arrays, saved):
                    np.copyto(a, s)
            else:
                write(x)
            return fn()

        try:
            yield Target(
                flat=flat,
                evaluate=evaluate_in_place,
                gradient=None,
                call_grad=call_grad_in_place,
                precision=precision,
                rngs=python_rng_states(),
                framework=self.name,
            )
        finally:
            for a, s in zip(arrays, saved):
                np.copyto(a, s)


class RowWorker:
    """Evaluates ``loss(p)`` at rows of perturbed vectors, in another process if need be.

    Picklable when the loss is (a module-level function): what a process pool
    executor sends to its workers.  numpy's global generator is reset to the
    check's saved state before each row, as in the main process.
    """

    def __init__(self, loss: Callable[..., Any], flat: Any, rng_state: Any) -> None:
        self.loss = loss
        self.flat = flat
        self.rng_state = rng_state

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            np.random.set_state(self.rng_state)
            value = np.asarray(self.loss(self.flat.unravel(row, _float64_copy)))
            if value.size != 1:
                raise InputError(f"the loss returned an array of shape {value.shape}, not a scalar.")
            out[k] = float(value.reshape(()).real)
        return out


def _views_of(flat: Any) -> Callable[[np.ndarray], Any] | None:
    """``flat.unravel(x, _piece)`` for real array parameters in dicts, lists and tuples, prepared once.

    The structure is built from views of ``x`` without walking the skeleton
    at every evaluation.  None for other structures (Python floats, complex
    values, named tuples, other mappings): they take :meth:`Flat.unravel`.
    """
    if flat.has_complex or not all(isinstance(v, np.ndarray) for v in flat.values):
        return None
    # a vector leaf is its slice as it is (a reshape would cost as much again)
    cuts = [(leaf.slice, None if len(leaf.shape) == 1 else leaf.shape) for leaf in flat.leaves]
    tree = flat.skeleton
    if tree[0] == "dict" and tree[1] is dict and all(c[0] == "leaf" for c in tree[3]):
        # the common case, a dict of arrays: one plain loop (a comprehension costs a
        # function call of its own at every evaluation)
        named = [(key, *cuts[c[1]]) for key, c in zip(tree[2], tree[3])]

        def build_dict(x: np.ndarray) -> dict[Any, np.ndarray]:
            views = {}
            for key, cut, shape in named:
                views[key] = x[cut] if shape is None else x[cut].reshape(shape)
            return views

        return build_dict
    if tree[0] == "leaf":
        cut, shape = cuts[0]
        return (lambda x: x[cut]) if shape is None else (lambda x: x[cut].reshape(shape))

    make = _structure_of(flat.skeleton)
    if make is None:
        return None

    def build(x: np.ndarray) -> Any:
        return make([x[cut] if shape is None else x[cut].reshape(shape) for cut, shape in cuts])

    return build


def _structure_of(tree: Any) -> Callable[[list[np.ndarray]], Any] | None:
    """``make(pieces)``: the structure of the skeleton ``tree`` around one piece per leaf.

    For dicts, lists and tuples (and single leaves); None for other nodes.
    """
    kind = tree[0]
    if kind == "leaf":
        k = tree[1]
        return lambda pieces: pieces[k]
    if kind == "dict" and tree[1] is dict:
        keys, parts = tree[2], [_structure_of(c) for c in tree[3]]
        if any(p is None for p in parts):
            return None
        pairs = list(zip(keys, parts))
        return lambda pieces: {key: part(pieces) for key, part in pairs}  # type: ignore[misc]
    if kind == "seq" and tree[1] in (list, tuple):
        typ, parts = tree[1], [_structure_of(c) for c in tree[2]]
        if any(p is None for p in parts):
            return None
        return lambda pieces: typ([part(pieces) for part in parts])  # type: ignore[misc]
    return None


def _moved_of(flat: Any, loss: Callable[..., Any]) -> Callable[[int, float], Any] | None:
    """``evaluate_moved(i, v)``: ``loss`` at ``flat.x0`` but for entry ``i`` set to ``v``.

    Each array the loss gets is a new float64 copy of its parameter's piece
    of ``x0``, made in the parameter's shape (cheaper than views of one
    copied vector, each reshaped).  For real array parameters in dicts, lists
    and tuples; None for other structures.
    """
    if flat.has_complex or not all(isinstance(v, np.ndarray) for v in flat.values):
        return None
    x0 = flat.x0
    # each parameter's piece of x0 in its shape (views: nothing is copied here)
    pieces = [x0[leaf.slice].reshape(leaf.shape) for leaf in flat.leaves]
    starts = [leaf.offset for leaf in flat.leaves]
    vectors = [len(leaf.shape) == 1 for leaf in flat.leaves]
    find = bisect.bisect_right

    def move(piece: np.ndarray, b: int, i: int, v: float) -> None:
        """Set entry ``i`` of the vector, which falls in parameter ``b``, to ``v`` in that parameter's copy."""
        if vectors[b]:
            piece[i - starts[b]] = v
        else:
            piece.flat[i - starts[b]] = v

    tree = flat.skeleton
    if tree[0] == "dict" and tree[1] is dict and all(c[0] == "leaf" for c in tree[3]):
        # the common case, a dict of arrays: one plain loop (a comprehension costs a
        # function call of its own at every evaluation)
        named = [(key, pieces[c[1]]) for key, c in zip(tree[2], tree[3])]
        key_of = {c[1]: key for key, c in zip(tree[2], tree[3])}
        spots = [(key_of[b], starts[b], vectors[b]) for b in range(len(pieces))]

        def evaluate_dict(i: int, v: float) -> Any:
            p = {}
            for key, piece in named:
                p[key] = piece.copy()
            # the last parameter that starts at or before entry i holds it
            key, start, vector = spots[find(starts, i) - 1]
            if vector:
                p[key][i - start] = v
            else:
                p[key].flat[i - start] = v
            return loss(p)

        return evaluate_dict
    make = _structure_of(tree)
    if make is None:
        return None

    def evaluate_tree(i: int, v: float) -> Any:
        copies = [piece.copy() for piece in pieces]
        b = find(starts, i) - 1
        move(copies[b], b, i, v)
        return loss(make(copies))

    return evaluate_tree


def _piece(piece: np.ndarray, original: Any) -> Any:
    """A piece of a point the loss owns (a view of its private copy), a float for a float."""
    return float(piece) if isinstance(original, float) else piece


def _float64_copy(piece: np.ndarray, original: Any) -> Any:
    out = np.array(piece, dtype=np.complex128 if np.iscomplexobj(piece) else np.float64)
    if isinstance(original, float):
        return float(out)
    return out


ADAPTER = NumpyAdapter()
