"""Float32 data captured by a loss, promoted to float64 for the check.

The checker evaluates the loss with float64 parameters and JAX's 64-bit mode
on.  ``jax.numpy`` promotes a float32 array that meets a float64 one, but
``lax`` primitives do not: ``lax.conv_general_dilated``, ``lax.clamp`` and
``lax.pad`` raise ``TypeError`` when float32 data meets float64 weights, and
Equinox's and Haiku's convolution layers call ``lax.conv`` directly.  So the
float32 arrays a loss reads from outside (its closure, the globals it names,
the arguments bound by ``functools.partial``, and the same for the Python
functions it calls by global name) are given to it in float64, the way the
torch adapter's function mode promotes float32 tensors.

The user's function object and data are never modified: :func:`promoted`
returns a new function whose closure cells and globals hold float64 copies.
Casts written inside the loss (``.astype(jnp.float32)``) stay as they are and
are reported as low precision.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradcheck_core.errors import InputError

from .x64_mode import x64

__all__ = ["mixed_dtypes_error", "promoted"]

#: Functions followed through global names, at most this deep.
MAX_DEPTH = 3


def _narrow_float(value: Any) -> bool:
    if not isinstance(value, (jax.Array, np.ndarray)):
        return False
    dtype = np.dtype(value.dtype)
    return (dtype.kind == "f" and dtype.itemsize < 8) or dtype.name == "bfloat16"


def _promote_value(value: Any) -> Any:
    """``value`` with every float16/bfloat16/float32 array leaf in float64 (the same object if none)."""
    if isinstance(value, (types.ModuleType, type)) or (callable(value) and not _is_pytree_node(value)):
        return value
    try:
        leaves = jax.tree_util.tree_leaves(value)
    except Exception:
        return value
    if not any(_narrow_float(leaf) for leaf in leaves):
        return value

    def widen(leaf: Any) -> Any:
        if not _narrow_float(leaf):
            return leaf
        if isinstance(leaf, np.ndarray):
            return leaf.astype(np.float64)
        with x64():  # a float64 array stays float64 after the scope ends
            return jax.device_put(np.asarray(leaf, dtype=np.float64), next(iter(leaf.devices())))

    try:
        return jax.tree_util.tree_map(widen, value)
    except Exception:
        return value


def _is_pytree_node(value: Any) -> bool:
    """True for a callable that is also a pytree of arrays (an Equinox or nnx module)."""
    try:
        leaves = jax.tree_util.tree_leaves(value)
    except Exception:
        return False
    return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)


def _promote_function(fn: types.FunctionType, depth: int, seen: dict[int, Any]) -> types.FunctionType:
    if id(fn) in seen:
        return seen[id(fn)]
    seen[id(fn)] = fn
    names = _global_names(fn.__code__)
    glob = fn.__globals__
    new_globals: dict[str, Any] | None = None
    for name in names:
        if name not in glob:
            continue
        old = glob[name]
        new = _promote(old, depth + 1, seen) if isinstance(old, types.FunctionType) else _promote_value(old)
        if new is not old:
            if new_globals is None:
                new_globals = dict(glob)
            new_globals[name] = new
    cells = fn.__closure__
    new_cells = None
    if cells:
        values = []
        changed = False
        for cell in cells:
            try:
                old = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                values.append(cell)
                continue
            new = _promote(old, depth + 1, seen)
            changed = changed or new is not old
            values.append(types.CellType(new) if new is not old else cell)
        if changed:
            new_cells = tuple(values)
    if new_globals is None and new_cells is None:
        return fn
    out = types.FunctionType(
        fn.__code__,
        new_globals if new_globals is not None else glob,
        fn.__name__,
        fn.__defaults__,
        new_cells if new_cells is not None else cells,
    )
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__dict__.update(fn.__dict__)
    out.__qualname__ = fn.__qualname__
    seen[id(fn)] = out
    return out


def _global_names(code: types.CodeType) -> set[str]:
    """Global names read by ``code`` and by the functions defined inside it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _promote(value: Any, depth: int, seen: dict[int, Any]) -> Any:
    wrapped = getattr(value, "__wrapped__", None)
    if type(value).__module__.startswith("jaxlib") and isinstance(wrapped, types.FunctionType):
        # a jax.jit-compiled function: the check compiles the plain function itself
        inner = _promote(wrapped, depth, seen)
        return value if inner is wrapped else inner
    if isinstance(value, types.FunctionType):
        if depth > MAX_DEPTH or value.__module__ in _LIBRARY_MODULES or _is_library(value):
            return value
        return _promote_function(value, depth, seen)
    if isinstance(value, functools.partial):
        func = _promote(value.func, depth + 1, seen)
        args = tuple(_promote(a, depth + 1, seen) for a in value.args)
        kwargs = {k: _promote(v, depth + 1, seen) for k, v in value.keywords.items()}
        if (
            func is value.func
            and all(a is b for a, b in zip(args, value.args, strict=True))
            and all(kwargs[k] is value.keywords[k] for k in kwargs)
        ):
            return value
        return functools.partial(func, *args, **kwargs)
    return _promote_value(value)


_LIBRARY_MODULES = frozenset({"builtins"})


def _is_library(fn: types.FunctionType) -> bool:
    """Functions of installed libraries (jax, flax, numpy, ...) are left alone."""
    module = fn.__module__ or ""
    top = module.split(".")[0]
    return top in {"jax", "jaxlib", "numpy", "flax", "equinox", "haiku", "optax", "keras", "gradcheck_core"}


def promoted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` reading its captured float32 data as float64.

    Parameters
    ----------
    fn : callable
        A loss or a function under check.  Python functions (lambdas, nested
        functions) and ``functools.partial`` objects are rebuilt; any other
        callable is returned as it is.

    Returns
    -------
    callable
        ``fn`` itself when it captures no narrow floating array, else a new
        function of the same code whose closure cells, globals and bound
        arguments hold float64 copies of them (JAX arrays made in 64-bit
        mode, so they stay float64 outside it too).
    """
    return _promote(fn, 0, {})


def mixed_dtypes_error(exc: TypeError) -> InputError | None:
    """An :class:`InputError` with the remedy, for a ``lax`` primitive that met float32 and float64.

    Parameters
    ----------
    exc : TypeError
        What the loss raised inside the check's 64-bit mode.

    Returns
    -------
    InputError or None
        None for any other error.
    """
    text = str(exc)
    if "same dtypes" not in text or "float64" not in text:
        return None
    return InputError(
        f"{text.splitlines()[0]} The check gives the loss float64 parameters, and the float32 "
        "arrays in its closure and globals in float64, but this float32 array reached it another "
        "way (an attribute of an object, a container built at call time), and lax primitives "
        "(conv, clamp, pad) do not promote dtypes. Capture the data in the loss's closure, or "
        "convert it inside the loss: jnp.asarray(X, jnp.float64) (with 64-bit mode on, or "
        "X.astype(jnp.result_type(p)))."
    )
