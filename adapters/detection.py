"""Which framework a value belongs to, and that framework's adapter.

A framework is recognised from a value's type through ``sys.modules``: if
``torch`` was never imported, nothing can be a torch tensor, so checking a
numpy function never imports torch, tensorflow, keras or jax.  An adapter
module is loaded (by name, through :mod:`importlib`) only when a value of its
framework is seen.

This module imports no adapter and nothing that imports adapters, so every
adapter may use it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gradcheck_core.errors import InputError

if TYPE_CHECKING:
    from .base import Adapter

MODULES = {
    "numpy": "gradcheck_core.adapters.numpy",
    "torch": "gradcheck_core.adapters.torch",
    "tensorflow": "gradcheck_core.adapters.tensorflow",
    "keras": "gradcheck_core.adapters.keras",
    "jax": "gradcheck_core.adapters.jax",
}
_LOADED: dict[str, Adapter] = {}


def is_instance(value: Any, module: str, attr_path: str) -> bool:
    mod = sys.modules.get(module)
    if mod is None:
        return False
    obj: Any = mod
    for part in attr_path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    try:
        return isinstance(value, obj)
    except TypeError:
        return False


def framework_of(value: Any) -> str | None:
    """The framework a single value belongs to, or None for containers/others.

    Keras objects (models, layers, variables) report ``"keras"`` whatever the
    backend; plain backend tensors report their own framework.
    """
    if isinstance(value, (np.ndarray, np.generic, float)) and not isinstance(value, bool):
        return "numpy"
    if is_instance(value, "keras", "Variable") or is_instance(value, "keras", "Layer"):
        return "keras"
    if is_instance(value, "torch", "Tensor") or is_instance(value, "torch", "nn.Module"):
        return "torch"
    if is_instance(value, "jax", "Array") or _is_jax_pytree_node(value):
        return "jax"
    if (
        is_instance(value, "tensorflow", "Tensor")
        or is_instance(value, "tensorflow", "Variable")
        or is_instance(value, "tensorflow", "Module")
    ):
        return "tensorflow"
    return None


def is_array(value: Any) -> bool:
    """Whether ``value`` is an array or tensor of a framework (a Python number is not)."""
    return framework_of(value) is not None and not isinstance(value, (int, float))


def _is_jax_pytree_node(value: Any) -> bool:
    """A registered JAX pytree node (a dataclass, an Equinox or nnx module) holding JAX arrays.

    Its other leaves (an activation function, integer fields) are held fixed
    by the JAX adapter.

    dicts, lists, tuples and namedtuples are walked by the core itself.
    """
    jax = sys.modules.get("jax")
    if (
        jax is None
        or value is None
        or isinstance(value, (Mapping, list, tuple, str, bytes, int, float, complex))
    ):
        return False
    try:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return (
            bool(leaves)
            and not jax.tree_util.treedef_is_leaf(treedef)
            and any(isinstance(leaf, jax.Array) for leaf in leaves)
        )
    except Exception:
        return False


def get_adapter(name: str) -> Adapter:
    """The adapter for framework ``name``, importing its module on first use."""
    if name not in _LOADED:
        try:
            module = importlib.import_module(MODULES[name])
        except KeyError:
            raise InputError(f"no adapter for framework {name!r}") from None
        except ImportError as exc:  # the framework module is present but the adapter is not built
            raise InputError(
                f"gradcheck-core has no working {name} adapter here ({exc}); "
                f"install the extra: pip install 'gradcheck-core[{name}]'"
            ) from exc
        _LOADED[name] = module.ADAPTER
    return _LOADED[name]


def keras_backend() -> str | None:
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        return keras.backend.backend()
    except Exception:  # pragma: no cover - very old keras
        return None


def to_numpy(value: Any) -> np.ndarray:
    """Any framework's array/tensor/variable (or a Python number) as numpy."""
    if isinstance(value, np.ndarray):
        return value
    fw = framework_of(value)
    if fw is None or fw == "numpy":
        return np.asarray(value)
    return get_adapter(fw).to_numpy(value)
