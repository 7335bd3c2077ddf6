"""Why a loss fed float64 values still computes in lower precision.

The checker gives the loss float64 parameters with JAX's 64-bit mode on, but
a loss may cast to float32 itself or read float32 data from outside.  The
traced program (its jaxpr) shows every operation on parameter-dependent
values that yields a narrower float; the report then names them, the arrays
the loss captures, and the remedy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["narrow_operations", "precision_sentence"]


def _floating_narrow(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 8


def narrow_operations(jaxpr: Any, tainted_in: list[bool]) -> list[tuple[str, str]]:
    """``(primitive, dtype)`` of every operation on parameter-dependent values
    whose result is a float narrower than float64 (nested jaxprs included).

    Parameters
    ----------
    jaxpr : jax.extend.core.Jaxpr
        The traced loss (``traced.jaxpr.jaxpr``).
    tainted_in : list of bool
        One per input of ``jaxpr``: whether it depends on the parameters.

    Returns
    -------
    list of (str, str)
        Primitive name and result dtype, in program order.
    """
    tainted: set[Any] = set()
    for var, flag in zip(jaxpr.invars, tainted_in, strict=False):
        if flag:
            tainted.add(var)
    found: list[tuple[str, str]] = []
    for eqn in jaxpr.eqns:
        flags = [_is_var(v) and v in tainted for v in eqn.invars]
        if not any(flags):
            continue
        for sub in _sub_jaxprs(eqn.params):
            if len(sub.invars) == len(flags):
                found.extend(narrow_operations(sub, flags))
            elif len(sub.invars) == len(flags) - 1:  # cond: the first operand is the branch index
                found.extend(narrow_operations(sub, flags[1:]))
        for out in eqn.outvars:
            tainted.add(out)
            dtype = getattr(getattr(out, "aval", None), "dtype", None)
            if dtype is not None and _floating_narrow(dtype):
                found.append((eqn.primitive.name, np.dtype(dtype).name))
    return found


def _is_var(v: Any) -> bool:
    return not hasattr(v, "val")  # Literals carry a value, Vars do not


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Any]:
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                yield inner


def _captured_narrow_arrays(fn: Callable[..., Any]) -> list[str]:
    """Names of float32/float16 arrays the function reads from its closure or globals."""
    try:
        cv = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return []
    out = []
    for name, value in {**cv.globals, **cv.nonlocals}.items():
        try:
            leaves = jax.tree_util.tree_leaves(value)
        except Exception:
            continue
        if len(leaves) > 100:
            continue
        dtypes = {
            np.dtype(leaf.dtype).name
            for leaf in leaves
            if isinstance(leaf, (jax.Array, np.ndarray)) and _floating_narrow(leaf.dtype)
        }
        if dtypes:
            out.append(f"{name} ({', '.join(sorted(dtypes))})")
    return out


def precision_sentence(loss: Callable[..., Any], out_dtype: Any, ops: list[tuple[str, str]]) -> str | None:
    """Why a loss fed float64 values still computes in lower precision, and the remedy.

    Parameters
    ----------
    loss : callable
        The user's loss (its closure and globals are searched for float32 data).
    out_dtype : dtype or None
        The dtype of the loss's value at the first evaluation.
    ops : list of (str, str)
        What :func:`narrow_operations` found in the traced loss.

    Returns
    -------
    str or None
        A sentence for the report, or None when the loss computes in float64.
    """
    narrow_out = out_dtype is not None and _floating_narrow(out_dtype)
    if not narrow_out and not ops:
        return None
    if ops:
        names = list(dict.fromkeys(p for p, _ in ops))  # in the order they first occur
        dtypes = sorted({d for _, d in ops})
        what = (
            f"{len(ops)} operation(s) on values that depend on the parameters compute in "
            f"{'/'.join(dtypes)} (first {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        )
    else:
        what = f"the loss computes in {np.dtype(out_dtype).name}"
    captured = _captured_narrow_arrays(loss)
    held = f" (the loss reads {', '.join(captured[:5])} from outside)" if captured else ""
    return (
        f"{what} although the loss was given float64 parameters with JAX's 64-bit mode on: something "
        "in the loss casts to a lower precision, such as .astype(jnp.float32), dtype=jnp.float32, "
        f"or a dtype taken from an array created as float32{held}. Arrays created inside the "
        "loss follow the 64-bit mode; make captured data float64 (jnp.asarray(X, jnp.float64) "
        "inside the loss, or numpy float64 arrays) and drop fixed float32 casts to have the "
        "check run in float64"
    )
