"""Registered pytree nodes, seen by the core as named dicts.

A loss receives ``p`` with the structure of ``params``: dicts, lists, tuples,
namedtuples and other registered pytree nodes (dataclasses, modules), nested.
The core flattens and rebuilds only the containers it knows, so every other
pytree node is shown to it as a dict of its children, which rebuilds itself
as the user's own node type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import numpy as np

__all__ = ["expand"]


class _PytreeNode(dict):
    """A registered pytree node seen by the core as a dict of its children.

    The core's flattening walks it like any dict (so its parameters get names
    such as ``enc.w``), and when it rebuilds the structure it calls the type
    with the ``(key, value)`` pairs: :meth:`__new__` then returns the user's
    own node type, rebuilt by JAX, so the loss receives what it expects.
    """

    treedef: Any = None
    #: Positions of children that are None (kept, not parameters).
    fixed: ClassVar[dict[int, Any]] = {}
    count: int = 0

    def __new__(cls, items: Any = ()) -> Any:  # called by the core's rebuild
        values = iter(v for _, v in (items.items() if isinstance(items, Mapping) else items))
        children = [cls.fixed[i] if i in cls.fixed else next(values) for i in range(cls.count)]
        return cls.treedef.unflatten(children)

    @classmethod
    def wrap(cls, node: Any, expand: Callable[[Any], Any]) -> Any:
        """The dict form of ``node``, or None if ``node`` is no pytree node."""
        tu = jax.tree_util
        try:
            pairs, treedef = tu.tree_flatten_with_path(node, is_leaf=lambda v: v is not node)
        except Exception:
            return None
        if tu.treedef_is_leaf(treedef):
            return None
        fixed = {i: v for i, (_, v) in enumerate(pairs) if v is None}
        sub = type(type(node).__name__, (cls,), {"treedef": treedef, "fixed": fixed, "count": len(pairs)})
        out: dict[Any, Any] = dict.__new__(sub)
        dict.__init__(out, [(_key_name(p[-1]), expand(v)) for p, v in pairs if v is not None])
        return out


def _key_name(key: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def expand(value: Any) -> Any:
    """``value`` with every registered pytree node the core does not know as a dict.

    Containers without such nodes inside are returned as they are.

    Parameters
    ----------
    value : pytree
        Parameters or a gradient: arrays, numbers, dicts, lists, tuples,
        namedtuples and registered pytree nodes, nested.

    Returns
    -------
    pytree
        ``value`` itself where nothing needed wrapping, else a copy in which
        each unknown pytree node is a dict of its (expanded) children.
    """
    if isinstance(value, (jax.Array, np.ndarray, np.generic, float, int, str, bytes)) or value is None:
        return value
    if isinstance(value, Mapping):
        items = [(k, expand(v)) for k, v in value.items()]
        if all(new is value[k] for k, new in items):
            return value
        try:
            return type(value)(items)  # type: ignore[call-arg]  # a dict-like type takes its items
        except TypeError:
            return dict(items)
    if isinstance(value, (list, tuple)):
        children = [expand(v) for v in value]
        if all(new is old for new, old in zip(children, value, strict=True)):
            return value
        if _is_namedtuple(value):
            return type(value)(*children)
        return type(value)(children) if type(value) in (list, tuple) else list(children)
    node = _PytreeNode.wrap(value, expand)
    return value if node is None else node
