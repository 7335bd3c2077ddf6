"""Registered pytree nodes, seen by the core as named dicts.

A loss receives ``p`` with the structure of ``params``: dicts, lists, tuples,
namedtuples and other registered pytree nodes (dataclasses, modules), nested.
The core flattens and rebuilds only the containers it knows, so every other
pytree node is shown to it as a dict of its children, which rebuilds itself
as the user's own node type.

Children of a node that hold no floating array (an Equinox module's
activation function or integer fields, a Flax nnx module's internal state,
its random-number keys) are held fixed, as ``eqx.filter(model,
eqx.is_inexact_array)`` would; so are nnx variables other than
``nnx.Param`` (batch statistics).  An nnx variable's single ``value`` child
adds nothing to the name (``layers[0].kernel``, not ``layers[0].kernel.value``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import numpy as np

__all__ = ["expand", "is_gradient_values"]


class _PytreeNode(dict):
    """A registered pytree node seen by the core as a dict of its children.

    The core's flattening walks it like any dict (so its parameters get names
    such as ``enc.w``), and when it rebuilds the structure it calls the type
    with the ``(key, value)`` pairs: :meth:`__new__` then returns the user's
    own node type, rebuilt by JAX, so the loss receives what it expects.
    """

    treedef: Any = None
    #: Positions of children that are held fixed (None, no floating array, not an nnx.Param).
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
        fixed = {i: v for i, (_, v) in enumerate(pairs) if _held_fixed(v)}
        sub = type(type(node).__name__, (cls,), {"treedef": treedef, "fixed": fixed, "count": len(pairs)})
        out: dict[Any, Any] = dict.__new__(sub)
        single = len(pairs) == 1
        dict.__init__(
            out, [(_key_name(p[-1], single), expand(v)) for i, (p, v) in enumerate(pairs) if i not in fixed]
        )
        return out


def _is_inexact_array(value: Any) -> bool:
    if not isinstance(value, (jax.Array, np.ndarray)):
        return False
    try:
        return bool(jax.numpy.issubdtype(value.dtype, jax.numpy.inexact))
    except TypeError:  # PRNG key arrays and other extended dtypes
        return False


def _nnx_variable(value: Any) -> Any:
    """The ``flax.nnx`` module when ``value`` is an nnx variable, else None."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(value, getattr(nnx, "Variable", ())):
        return None
    return nnx


def _held_fixed(value: Any) -> bool:
    """True for a child that is no parameter: None, no floating array, an nnx non-Param."""
    if value is None:
        return True
    nnx = _nnx_variable(value)
    if nnx is not None and not isinstance(value, nnx.Param):
        return True
    try:
        leaves = jax.tree_util.tree_leaves(value)
    except Exception:
        return True
    return not any(_is_inexact_array(leaf) for leaf in leaves)


def _key_name(key: Any, single: bool) -> Any:
    """The name part of a pytree key: attribute name, dict key or position.

    The single ``value`` child of a node (an nnx variable) gets the empty
    name, which adds nothing to the parameter's name.
    """
    if single and getattr(key, "name", None) == "value":
        return ""
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def is_gradient_values(grad: Any) -> bool:
    """True for a gradient that is values even though it is callable.

    An Equinox or Flax nnx module is callable, but given as ``grad=`` it holds
    the gradient (what ``eqx.filter_grad`` or ``nnx.grad`` return), so it is
    read, not called.  A ``jax.tree_util.Partial`` stays a function.

    Parameters
    ----------
    grad : Any
        What was passed as ``grad=``.
    """
    if not callable(grad) or isinstance(grad, jax.tree_util.Partial):
        return not callable(grad)
    try:
        leaves, treedef = jax.tree_util.tree_flatten(grad)
    except Exception:
        return False
    if jax.tree_util.treedef_is_leaf(treedef):
        return False
    return any(_is_inexact_array(leaf) for leaf in leaves)


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
