"""Why a loss fed float64 values still computes in lower precision.

The checker gives the loss float64 parameters with JAX's 64-bit mode on, but
a loss may cast to float32 itself or read float32 data from outside.  The
traced program (its jaxpr) shows every operation on parameter-dependent
values that yields a narrower float; the report then names them, the library
function they come from where it is known, and the remedy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["located_causes", "narrow_operations", "precision_sentence"]

#: Library functions known to compute in float32 whatever they are given, and why.
KNOWN_FLOAT32 = {
    "dot_product_attention": (
        "jax.nn.dot_product_attention computes its softmax in float32 whatever its inputs' dtype "
        "(its XLA implementation casts the attention logits to float32 and back), so a loss "
        "through it is only float32-precise; write the attention out in jax.numpy "
        "(jax.nn.softmax(q @ k.T / sqrt(d)) @ v) to check it in float64"
    ),
}


def _floating_narrow(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 8


def narrow_operations(
    jaxpr: Any, tainted_in: list[bool], sources: list[Any] | None = None
) -> list[tuple[str, str]]:
    """``(primitive, dtype)`` of every operation on parameter-dependent values
    whose result is a float narrower than float64 (nested jaxprs included).

    Parameters
    ----------
    jaxpr : jax.extend.core.Jaxpr
        The traced loss (``traced.jaxpr.jaxpr``).
    tainted_in : list of bool
        One per input of ``jaxpr``: whether it depends on the parameters.
    sources : list, optional
        Receives the ``source_info`` of every such operation, in the same order.

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
                found.extend(narrow_operations(sub, flags, sources))
            elif len(sub.invars) == len(flags) - 1:  # cond: the first operand is the branch index
                found.extend(narrow_operations(sub, flags[1:], sources))
        for out in eqn.outvars:
            tainted.add(out)
            dtype = getattr(getattr(out, "aval", None), "dtype", None)
            if dtype is not None and _floating_narrow(dtype):
                found.append((eqn.primitive.name, np.dtype(dtype).name))
                if sources is not None:
                    sources.append(getattr(eqn, "source_info", None))
    return found


def located_causes(sources: list[Any]) -> list[str]:
    """Where the narrow operations come from, in words: known library functions by name.

    Parameters
    ----------
    sources : list
        ``source_info`` of the narrow operations (from :func:`narrow_operations`).

    Returns
    -------
    list of str
        One sentence per known cause (:data:`KNOWN_FLOAT32`), in the order
        found; empty when none is recognised.
    """
    causes: list[str] = []
    for info in sources:
        try:
            names = [frame.function_name for frame in info.traceback.frames]
        except Exception:  # no traceback recorded
            continue
        for key, sentence in KNOWN_FLOAT32.items():
            if any(key in name for name in names) and sentence not in causes:
                causes.append(sentence)
    return causes


def _is_var(v: Any) -> bool:
    return not hasattr(v, "val")  # Literals carry a value, Vars do not


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Any]:
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                yield inner


def precision_sentence(
    out_dtype: Any, ops: list[tuple[str, str]], causes: list[str] | None = None
) -> str | None:
    """Why a loss fed float64 values still computes in lower precision, and the remedy.

    Parameters
    ----------
    out_dtype : dtype or None
        The dtype of the loss's value at the first evaluation.
    ops : list of (str, str)
        What :func:`narrow_operations` found in the traced loss.
    causes : list of str, optional
        Library functions located as the float32 computation
        (:func:`located_causes`); named first.

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
    if causes:
        return f"{what}: {'; '.join(causes)}"
    return (
        f"{what} although the loss was given float64 parameters with JAX's 64-bit mode on: something "
        "in the loss casts to a lower precision, such as .astype(jnp.float32), dtype=jnp.float32, "
        "or a dtype taken from an array that reaches the loss as float32 (an attribute of an "
        "object: float32 arrays in the loss's closure and globals are given to it in float64). "
        "Arrays created inside the loss follow the 64-bit mode; make such data float64 "
        "(jnp.asarray(X, jnp.float64) inside the loss) and drop fixed float32 casts to have the "
        "check run in float64"
    )
