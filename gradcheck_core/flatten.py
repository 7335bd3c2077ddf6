"""Structure <-> one float64 vector, with a name for every leaf.

A parameter structure is a single array or any nesting of dicts, lists,
tuples and namedtuples of arrays.  :func:`flatten` walks it in a fixed order
(dict insertion order, sequence order), names every leaf the way API.md says
(``W1``, ``enc.W``, ``layer[0]``, ``[1]``) and concatenates the leaves into a
single float64 vector.  :meth:`Flat.unravel` goes back.

A complex leaf (where the adapter allows complex values) becomes two blocks
of real coordinates, ``z.real`` then ``z.imag``, each shaped like ``z``: the
flat vector holds the real parts followed by the imaginary parts, and
:meth:`Flat.unravel` puts them back together as ``real + 1j * imag``.  A
gradient of a real loss with respect to a complex value is, in this library,
the pair (dL/d real part, dL/d imaginary part); given as one complex array it
is read as ``dL/dRe + 1j * dL/dIm`` (PyTorch's convention for ``.grad``).

Which values count as leaves, and how a leaf becomes a numpy array, is the
adapter's business: both are passed in as functions so that this module never
needs to know about any framework.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Flat", "Leaf", "flatten", "gradient_vector", "leaf_items", "split_structure"]

# A node of the structure skeleton: ("leaf", i) | ("dict", type, keys, children)
# | ("seq", type, children) | ("namedtuple", type, children).
Node = tuple


@dataclass(frozen=True)
class Leaf:
    """One parameter block of the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    dtype: str
    #: ``""`` for a real value; ``"real"`` or ``"imag"`` for a part of a complex one.
    part: str = ""
    #: The value's own name (``z`` for ``z.real``).
    value_name: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


@dataclass
class Flat:
    """A flattened parameter structure.

    Attributes
    ----------
    leaves : list of Leaf
        Name, shape, offset and original dtype of every leaf, in flatten order.
    values : list
        The user's leaf objects, untouched.
    x0 : numpy.ndarray
        All leaves as one float64 vector (a copy).
    """

    leaves: list[Leaf]
    values: list[Any]
    x0: np.ndarray
    skeleton: Node = field(repr=False)

    def __post_init__(self) -> None:
        self._cuts = [(leaf.slice, leaf.shape) for leaf in self.leaves]
        self._real = not any(leaf.part for leaf in self.leaves)
        # One group of leaves per value: [leaf] for a real value, [real, imag] for a complex one.
        self.groups: list[list[Leaf]] = []
        for leaf in self.leaves:
            if leaf.part == "imag":
                self.groups[-1].append(leaf)
            else:
                self.groups.append([leaf])

    @property
    def has_complex(self) -> bool:
        """True if some value is complex (checked as its real and imaginary parts)."""
        return any(leaf.part for leaf in self.leaves)

    @property
    def n(self) -> int:
        return int(self.x0.size)

    @property
    def names(self) -> list[str]:
        return [leaf.name for leaf in self.leaves]

    def split(self, vec: Any) -> list[Any]:
        """Cut a flat vector into one array per value, shaped like the value.

        A complex value comes back as ``real + 1j * imag`` of its two blocks.
        """
        pieces = [vec[cut].reshape(shape) for cut, shape in self._cuts]
        if self._real:
            return pieces
        out, k = [], 0
        for group in self.groups:
            if len(group) == 2:
                out.append(pieces[k] + 1j * pieces[k + 1])
            else:
                out.append(pieces[k])
            k += len(group)
        return out

    def join(self, pieces: Sequence[Any]) -> np.ndarray:
        """The inverse of :meth:`split`: one float64 vector from one array per value.

        A complex array for a complex value contributes its real part, then its
        imaginary part; a real array for a complex value has a zero imaginary part.
        """
        chunks = []
        for group, piece in zip(self.groups, pieces):
            array = np.asarray(piece).reshape(-1)
            if len(group) == 2:
                chunks += [np.real(array).astype(np.float64), np.imag(array).astype(np.float64)]
            else:
                chunks.append(np.asarray(array, dtype=np.float64))
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def unravel(
        self,
        vec: np.ndarray,
        make: Callable[[np.ndarray, Any], Any] | None = None,
    ) -> Any:
        """Rebuild the structure from a flat vector.

        Parameters
        ----------
        vec : numpy.ndarray
            A vector of length ``n`` (float64 or complex128).
        make : callable, optional
            ``make(array, original_leaf)`` turns each piece into the value the
            loss expects (a framework tensor, say).  Default: the numpy array.
        """
        pieces = self.split(vec)
        if make is not None:
            pieces = [make(p, v) for p, v in zip(pieces, self.values)]
        return _rebuild(self.skeleton, pieces)

    def block_of(self, index: int) -> tuple[int, tuple[int, ...]]:
        """Which leaf a flat index falls into, and the index within that leaf."""
        for b, leaf in enumerate(self.leaves):
            if leaf.offset <= index < leaf.offset + leaf.size:
                local = index - leaf.offset
                return b, tuple(int(i) for i in np.unravel_index(local, leaf.shape))
        raise IndexError(index)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _join(prefix: str, key: Any) -> str:
    """The name of child ``key`` of ``prefix``: ``enc.W``; an integer key is a position, ``layers[0]``.

    An empty key (a wrapper node with a single ``value`` child) adds nothing.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return f"{prefix}[{int(key)}]"
    if isinstance(key, str) and not key:
        return prefix
    return f"{prefix}.{key}" if prefix else str(key)


def _walk(value: Any, prefix: str, is_leaf: Callable[[Any], bool], out: list) -> Node:
    """Record ``(name, leaf)`` pairs in ``out`` and return the skeleton node."""
    if isinstance(value, Mapping) and not is_leaf(value):
        keys = list(value.keys())
        children = [_walk(value[k], _join(prefix, k), is_leaf, out) for k in keys]
        return ("dict", type(value), keys, children)
    if _is_namedtuple(value) and not is_leaf(value):
        children = [_walk(v, _join(prefix, f), is_leaf, out) for f, v in zip(value._fields, value)]
        return ("namedtuple", type(value), children)
    if isinstance(value, (list, tuple)) and not is_leaf(value):
        children = [_walk(v, f"{prefix}[{i}]", is_leaf, out) for i, v in enumerate(value)]
        return ("seq", type(value), children)
    out.append((prefix or "param", value))
    return ("leaf", len(out) - 1)


def _rebuild(node: Node, pieces: Sequence[Any]) -> Any:
    kind = node[0]
    if kind == "leaf":
        return pieces[node[1]]
    if kind == "dict":
        _, typ, keys, children = node
        items = [(k, _rebuild(c, pieces)) for k, c in zip(keys, children)]
        try:
            return typ(items)
        except TypeError:
            return dict(items)
    if kind == "namedtuple":
        _, typ, children = node
        return typ(*[_rebuild(c, pieces) for c in children])
    _, typ, children = node
    values = [_rebuild(c, pieces) for c in children]
    return typ(values) if typ in (list, tuple) else list(values)


def leaf_items(value: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """All ``(name, leaf)`` pairs of a structure, in flatten order."""
    out: list[tuple[str, Any]] = []
    _walk(value, "", is_leaf or (lambda v: False), out)
    return out


def split_structure(
    value: Any, is_leaf: Callable[[Any], bool]
) -> tuple[list[tuple[str, Any]], Callable[[Sequence[Any]], Any]]:
    """The ``(name, leaf)`` pairs of a structure and a function that rebuilds it from new leaves.

    Parameters
    ----------
    value : nested dict/list/tuple
        The structure.
    is_leaf : callable
        True for values that are leaves.

    Returns
    -------
    pairs : list of (str, Any)
        As :func:`leaf_items`.
    rebuild : callable
        ``rebuild(leaves)``: the structure with ``leaves`` in flatten order.
    """
    out: list[tuple[str, Any]] = []
    skeleton = _walk(value, "", is_leaf, out)
    return out, lambda pieces: _rebuild(skeleton, pieces)


def _dtype_name(array: np.ndarray, original: Any) -> str:
    dt = getattr(original, "dtype", None)
    if dt is None:
        return "float64" if isinstance(original, float) else str(array.dtype)
    name = getattr(dt, "name", None) or str(dt)
    return str(name).replace("torch.", "")


def check_floating(name: str, array: np.ndarray, original: Any, complex_ok: bool = False) -> None:
    """Raise :class:`InputError` unless ``array`` holds floating values (complex where allowed)."""
    kind = array.dtype.kind
    if kind == "f" or (kind == "V" and array.dtype.itemsize == 2):  # bfloat16 via ml_dtypes
        return
    if kind == "c":
        if complex_ok:
            return
        raise InputError(
            f"parameter {name!r} is complex ({array.dtype}); this framework's adapter checks "
            "real floating parameters only. Split it into real and imaginary parts."
        )
    raise InputError(
        f"parameter {name!r} has dtype {_dtype_name(array, original)}; gradients are "
        "defined only for floating values. Convert it to float64 (for example "
        f"`{name} = {name}.astype(float)` or `.double()`), or leave it out of params."
    )


def flatten(
    params: Any,
    *,
    is_leaf: Callable[[Any], bool],
    to_numpy: Callable[[Any], np.ndarray],
    complex_ok: bool = False,
) -> Flat:
    """Flatten ``params`` into a :class:`Flat`.

    Parameters
    ----------
    params : array or nested dict/list/tuple of arrays
        The parameters.
    is_leaf : callable
        True for values that are leaves (arrays, tensors, variables).
    to_numpy : callable
        Turns a leaf into a numpy array (any floating dtype).
    complex_ok : bool
        Accept complex leaves (each becomes two blocks, ``.real`` and
        ``.imag``); otherwise they raise :class:`InputError`.

    Raises
    ------
    InputError
        For non-floating leaves, or when there is nothing to check.
    """
    pairs: list[tuple[str, Any]] = []
    skeleton = _walk(params, "", is_leaf, pairs)
    if not pairs:
        raise InputError("params is empty: pass the arrays to check, e.g. params={'W1': W1, 'b1': b1}.")
    leaves: list[Leaf] = []
    arrays: list[np.ndarray] = []
    offset = 0
    for name, value in pairs:
        array = np.asarray(to_numpy(value))
        check_floating(name, array, value, complex_ok)
        shape = tuple(int(s) for s in array.shape)
        dtype = _dtype_name(array, value)
        if array.dtype.kind == "c":
            for part, values in (("real", array.real), ("imag", array.imag)):
                leaves.append(Leaf(f"{name}.{part}", shape, offset, dtype, part, name))
                arrays.append(values)
                offset += array.size
            continue
        leaves.append(Leaf(name, shape, offset, dtype, "", name))
        arrays.append(array)
        offset += array.size
    if offset == 0:
        raise InputError(
            f"params has {len(pairs)} leaves but all of them are empty (size 0); there is nothing to check."
        )
    # Written leaf by leaf into one new vector: no float64 copy of a leaf beside it.
    x0 = np.empty(offset, dtype=np.float64)
    for leaf, array in zip(leaves, arrays):
        x0[leaf.slice] = np.reshape(array, -1)
    return Flat(leaves, [v for _, v in pairs], x0, skeleton)


def _gradient_key_candidates(name: str) -> list[str]:
    """``W1`` -> ``W1``, ``dW1``; ``enc.W`` -> ``enc.W``, ``denc.W``, ``enc.dW``."""
    out = [name, "d" + name]
    if "." in name:
        head, _, last = name.rpartition(".")
        out.append(f"{head}.d{last}")
    return out


def gradient_vector(
    grad: Any,
    flat: Flat,
    *,
    to_numpy: Callable[[Any], np.ndarray],
    is_leaf: Callable[[Any], bool],
) -> np.ndarray:
    """Turn a handwritten gradient into a float64 vector in flatten order.

    Accepted forms: the structure of ``params``; a dict keyed by parameter
    names or by names with a ``d`` prefix (``dW1`` for ``W1``; other keys such
    as ``dZ1`` are ignored); one flat vector of length ``n``.
    """
    if grad is None:
        raise InputError("the gradient is None; return the gradient arrays from grad=.")
    # One flat vector in flatten order (also an (n, 1) column, as many tutorials use).
    if is_leaf(grad) or isinstance(grad, np.ndarray):
        array = np.asarray(to_numpy(grad))
        if len(flat.groups) == 1 and array.shape == flat.leaves[0].shape:
            if array.dtype.kind == "c" or flat.has_complex:
                return _finite_vector(flat.join([array]), flat.leaves[0].value_name)
            return _finite_vector(array.reshape(-1), flat.leaves[0].name)
        if array.size == flat.n and array.ndim <= 2 and (array.ndim < 2 or 1 in array.shape):
            return _finite_vector(array.reshape(-1), "the flat gradient")
        expected = flat.leaves[0].shape if len(flat.leaves) == 1 else (flat.n,)
        raise InputError(
            f"the gradient is one array of shape {array.shape}, but the parameters need "
            f"shape {expected} (or a flat vector of length {flat.n} in the order "
            f"{', '.join(flat.names[:6])}{', ...' if len(flat.names) > 6 else ''}). "
            "Return the gradient with the structure of params, or as a dict keyed by name."
        )
    pairs = dict(leaf_items(grad, is_leaf))
    out = np.empty(flat.n, dtype=np.float64)
    missing = []
    for group in flat.groups:
        leaf = group[0]
        name = leaf.value_name or leaf.name
        key = next((k for k in _gradient_key_candidates(name) if k in pairs), None)
        if key is None:
            missing.append(name)
            continue
        array = np.asarray(to_numpy(pairs[key]))
        if array.dtype.kind not in "fiuV" and not (len(group) == 2 and array.dtype.kind == "c"):
            raise InputError(f"gradient {key!r} has dtype {array.dtype}; return real floating arrays.")
        if array.shape != leaf.shape:
            hint = " (it looks transposed)" if array.shape == leaf.shape[::-1] and array.ndim == 2 else ""
            raise InputError(
                f"gradient {key!r} has shape {array.shape} but parameter {name!r} has "
                f"shape {leaf.shape}{hint}; the gradient of a parameter has the parameter's shape."
            )
        if len(group) == 2:
            # dL/dRe + 1j * dL/dIm (a real array: no imaginary part)
            out[group[0].slice] = _finite_vector(np.real(array).reshape(-1), f"{key} (real part)")
            out[group[1].slice] = _finite_vector(np.imag(array).reshape(-1), f"{key} (imaginary part)")
        else:
            out[leaf.slice] = _finite_vector(array.reshape(-1), key)
    if missing:
        wanted = ", ".join(f"{m!r} (or 'd{m}')" for m in missing)
        present = ", ".join(repr(k) for k in pairs) or "nothing"
        raise InputError(
            f"the gradient has no entry for {wanted}; it has {present}. Return one "
            "gradient per parameter, keyed by the parameter's name or the name with a 'd' prefix."
        )
    return out


def _finite_vector(vec: np.ndarray, what: str) -> np.ndarray:
    # Non-finite entries are kept: the check reports them as wrong (non_finite_gradient).
    return np.asarray(vec, dtype=np.float64)
