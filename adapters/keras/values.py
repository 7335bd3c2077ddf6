"""Keras values: the active backend, dtypes, backend tensors, variables and layer weights.

What every other module of the adapter reads values with: the dtype groups
(``_FULL``: float64 and complex128; ``_NARROW``: the float32 and 16-bit
ones), backend tensors made from numpy pieces, assignment of numpy values to
Keras variables in their own dtype, and the trainable weights of a layer or
model as a ``{variable.path: variable}`` dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from gradcheck_core.errors import InputError

_FULL = ("float64", "complex128")
_NARROW = ("float16", "bfloat16", "float32")


def backend() -> str:
    """The active Keras backend: ``"tensorflow"``, ``"jax"``, ``"torch"`` or ``"numpy"``."""
    return keras.backend.backend()


def _is_variable(value: Any) -> bool:
    return isinstance(value, keras.Variable)


def _is_layer(value: Any) -> bool:
    return isinstance(value, keras.layers.Layer)


def _numpy_dtype(dtype: str) -> np.dtype | None:
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def layer_variables(layer: Any) -> dict[str, Any]:
    """The trainable weights of a Keras layer or model, keyed by ``variable.path``.

    Parameters
    ----------
    layer : keras.layers.Layer
        A built layer or model.

    Returns
    -------
    dict
        ``{"sequential/dense/kernel": variable, ...}`` in ``trainable_weights`` order.

    Raises
    ------
    InputError
        If the layer is not built or has no trainable weights.
    """
    if not layer.built:
        raise InputError(
            f"the Keras {type(layer).__name__} {layer.name!r} is not built yet, so it has no "
            "weights to check; call it once on a batch (or call .build(input_shape)) first."
        )
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for v in layer.trainable_weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        name = getattr(v, "path", None) or v.name
        base, k = name, 2
        while name in out:
            name = f"{base}#{k}"
            k += 1
        out[name] = v
    if not out:
        raise InputError(
            f"the Keras {type(layer).__name__} {layer.name!r} has no trainable weights to check "
            "(all frozen, or none); set layer.trainable = True or pass the variables themselves."
        )
    return out


def _collect(params: Any) -> Any:
    if _is_layer(params):
        return layer_variables(params)
    if isinstance(params, Mapping):
        return {k: _collect(v) for k, v in params.items()}
    if isinstance(params, tuple) and hasattr(type(params), "_fields"):
        return type(params)(*[_collect(v) for v in params])
    if isinstance(params, (list, tuple)):
        return type(params)(_collect(v) for v in params)
    return params


def _layers_in(params: Any) -> list[Any]:
    if _is_layer(params):
        return [params]
    if isinstance(params, Mapping):
        return [layer for v in params.values() for layer in _layers_in(v)]
    if isinstance(params, (list, tuple)):
        return [layer for v in params for layer in _layers_in(v)]
    return []


def _tensor(array: np.ndarray, dtype: str) -> Any:
    """A backend tensor (a numpy array on the numpy backend) holding ``array``."""
    return ops.convert_to_tensor(np.asarray(array), dtype=dtype)


def _assign(variable: Any, array: np.ndarray) -> None:
    target = _numpy_dtype(variable.dtype)
    if target is not None:
        variable.assign(np.asarray(array).astype(target, copy=False))
    else:
        variable.assign(ops.cast(_tensor(np.asarray(array), "float64"), variable.dtype))


def _dtype_of(value: Any) -> str | None:
    dt = getattr(value, "dtype", None)
    if dt is None:
        return None
    try:
        return keras.backend.standardize_dtype(dt)
    except Exception:
        return str(dt)
