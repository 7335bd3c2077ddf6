"""Framework adapters, loaded only when a value of their framework is seen.

A framework is recognised from a value's type through ``sys.modules``: if
``torch`` was never imported, nothing can be a torch tensor, so checking a
numpy function never imports torch, tensorflow, keras or jax
(:mod:`.detection`).  This module picks the adapter for a whole parameter
structure or a loss; the adapters themselves never import it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import leaf_items

from .base import Adapter, Target
from .detection import MODULES, framework_of, get_adapter, is_array, is_instance, keras_backend, to_numpy

__all__ = [
    "Adapter",
    "Target",
    "clip_note",
    "detect",
    "framework_of",
    "get_adapter",
    "is_array",
    "loss_adapter",
    "precision_notes",
    "to_numpy",
]


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
        raise InputError("params is empty: pass the arrays to check, e.g. params={'W1': W1, 'b1': b1}.")
    # keras variables sit on a backend; a mix of keras and its backend is one framework.
    if len(found) > 1 and "keras" in found:
        found.pop("numpy", None)
        if len(found) > 1:
            found = {"keras": found["keras"]} if keras_backend() in found else found
    if len(found) > 1:
        parts = ", ".join(f"{fw} (e.g. {name!r})" for fw, name in found.items())
        raise InputError(
            f"params mixes frameworks: {parts}. Check one framework at a time, or convert "
            "the parameters to one framework; to compare frameworks use gc.compare()."
        )
    return get_adapter(next(iter(found)))


def _is_keras_loss(loss_fn: Any) -> bool:
    """A Keras ``Loss`` object or one of Keras's own loss functions."""
    if is_instance(loss_fn, "keras", "losses.Loss"):
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
        return importlib.import_module(MODULES["keras"]).notes_for_output(output)
    except Exception:  # a broken Keras install must not break a check that does not use it
        return []


def clip_note(loss: Any) -> str | None:
    """Why a loss may be flat where its gradient is not: Keras's clip of probabilities.

    Asked by the core for a failing check.  Only when Keras is loaded and the
    loss is, or calls, a Keras crossentropy.
    """
    if "keras" not in sys.modules:
        return None
    try:
        return importlib.import_module(MODULES["keras"] + ".notes").clip_note(loss)
    except Exception:  # a broken Keras install must not break a check that does not use it
        return None
