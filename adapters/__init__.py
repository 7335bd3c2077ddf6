"""Framework adapters, loaded only when a value of their framework is seen.

A framework is recognised from a value's type through ``sys.modules``: if
``torch`` was never imported, nothing can be a torch tensor, so checking a
numpy function never imports torch, tensorflow, keras or jax.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import leaf_items

from .base import Adapter, Target

__all__ = [
    "Adapter", "Target", "framework_of", "detect", "get_adapter", "to_numpy", "loss_adapter",
    "precision_notes",
]

_MODULES = {
    "numpy": "gradcheck_core.adapters.numpy",
    "torch": "gradcheck_core.adapters.torch",
    "tensorflow": "gradcheck_core.adapters.tensorflow",
    "keras": "gradcheck_core.adapters.keras",
    "jax": "gradcheck_core.adapters.jax",
}
_LOADED: dict[str, Adapter] = {}


def _is_instance(value: Any, module: str, attr_path: str) -> bool:
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
    if _is_instance(value, "keras", "Variable") or _is_instance(value, "keras", "Layer"):
        return "keras"
    if _is_instance(value, "torch", "Tensor") or _is_instance(value, "torch", "nn.Module"):
        return "torch"
    if _is_instance(value, "jax", "Array") or _is_jax_pytree_node(value):
        return "jax"
    if (
        _is_instance(value, "tensorflow", "Tensor")
        or _is_instance(value, "tensorflow", "Variable")
        or _is_instance(value, "tensorflow", "Module")
    ):
        return "tensorflow"
    return None


def _is_jax_pytree_node(value: Any) -> bool:
    """A registered JAX pytree node (a dataclass, a module) holding only JAX arrays.

    dicts, lists, tuples and namedtuples are walked by the core itself.
    """
    jax = sys.modules.get("jax")
    if jax is None or value is None or isinstance(value, (Mapping, list, tuple, str, bytes, int, float, complex)):
        return False
    try:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return (
            bool(leaves)
            and not jax.tree_util.treedef_is_leaf(treedef)
            and all(isinstance(leaf, jax.Array) for leaf in leaves)
        )
    except Exception:
        return False


def get_adapter(name: str) -> Adapter:
    """The adapter for framework ``name``, importing its module on first use."""
    if name not in _LOADED:
        try:
            module = importlib.import_module(_MODULES[name])
        except KeyError:
            raise InputError(f"no adapter for framework {name!r}") from None
        except ImportError as exc:  # the framework module is present but the adapter is not built
            raise InputError(
                f"gradcheck-core has no working {name} adapter here ({exc}); "
                f"install the extra: pip install 'gradcheck-core[{name}]'"
            ) from exc
        _LOADED[name] = module.ADAPTER
    return _LOADED[name]


def _leaves(params: Any) -> list[tuple[str, Any]]:
    return leaf_items(params, lambda v: framework_of(v) is not None)


def detect(params: Any) -> Adapter:
    """The adapter for a parameter structure; all leaves must share a framework."""
    found: dict[str, str] = {}
    for name, leaf in _leaves(params):
        fw = framework_of(leaf)
        if fw is None:
            if isinstance(leaf, (int, bool, np.integer)) and not isinstance(leaf, float):
                raise InputError(
                    f"parameter {name or 'params'!r} is the integer {leaf!r}; gradients are "
                    "defined only for floating values. Use a float (e.g. 1.0) or a float64 array."
                )
            raise InputError(
                f"parameter {name or 'params'!r} is a {type(leaf).__module__}.{type(leaf).__qualname__}, "
                "which gradcheck-core cannot check; pass numpy arrays, torch tensors, "
                "tf.Variables, jax arrays, or a Keras model or layer."
            )
        found.setdefault(fw, name or "params")
    if not found:
        raise InputError(
            "params is empty: pass the arrays to check, e.g. params={'W1': W1, 'b1': b1}."
        )
    # keras variables sit on a backend; a mix of keras and its backend is one framework.
    if len(found) > 1 and "keras" in found:
        found.pop("numpy", None)
        if len(found) > 1:
            found = {"keras": found["keras"]} if _keras_backend() in found else found
    if len(found) > 1:
        parts = ", ".join(f"{fw} (e.g. {name!r})" for fw, name in found.items())
        raise InputError(
            f"params mixes frameworks: {parts}. Check one framework at a time, or convert "
            "the parameters to one framework; to compare frameworks use gc.compare()."
        )
    return get_adapter(next(iter(found)))


def _keras_backend() -> str | None:
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


def _is_keras_loss(loss_fn: Any) -> bool:
    """A Keras ``Loss`` object or one of Keras's own loss functions."""
    if _is_instance(loss_fn, "keras", "losses.Loss"):
        return True
    module = getattr(loss_fn, "__module__", None) or ""
    return "keras" in sys.modules and callable(loss_fn) and module.startswith("keras.")


def loss_adapter(loss_fn: Any, y_pred: Any) -> Adapter:
    """The adapter that evaluates ``loss_fn(y_true, y_pred)`` for ``check_loss``.

    Keras losses go to the Keras adapter whatever ``y_pred`` is (a numpy array,
    a backend tensor): it rebuilds them in float64.  Anything else goes to the
    framework of ``y_pred``.
    """
    if _is_keras_loss(loss_fn):
        return get_adapter("keras")
    return detect(y_pred)


def precision_notes(output: Any, framework: str) -> list[str]:
    """Framework-specific reasons why a loss output is not float64, with remedies.

    Asked by the core when a loss returns less than float64.  Today: when Keras
    is loaded but another adapter ran the check (numpy weights and a Keras loss
    in a closure, say), the Keras settings that make such a loss float32.
    """
    if framework == "keras" or "keras" not in sys.modules:
        return []
    if getattr(output, "dtype", None) is None:
        return []
    try:
        return importlib.import_module(_MODULES["keras"]).notes_for_output(output)
    except Exception:  # a broken Keras install must not break a check that does not use it
        return []
