"""Keras ``Loss`` objects rebuilt in float64, and Keras's reductions, for ``check_loss``.

:meth:`~gradcheck_core.adapters.keras.KerasAdapter.loss_closure` (used by
:func:`gradcheck_core.check_loss`) rebuilds a Keras ``Loss`` with
``dtype="float64", reduction=None`` (:func:`float64_loss`) and applies the
original reduction itself in float64 (:func:`reduce_values`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops


def float64_loss(loss_fn: Any) -> Callable[[Any, Any], Any]:
    """The per-sample values of a Keras ``Loss``, computed in float64.

    The loss is rebuilt from its config with ``dtype="float64",
    reduction=None``, and the rebuilt loss is used only if it carries the same
    settings as the original: a config can drop one (Keras 3.15's ``Huber``
    forgets its ``delta``), and a custom loss without a ``get_config`` of its
    own loses its constructor arguments.  Otherwise the loss is copied (its
    attributes, hence its settings, are kept) with those two settings changed;
    if even that fails, its ``call`` is used directly on the float64 tensors.

    Parameters
    ----------
    loss_fn : keras.losses.Loss
        The loss to rebuild.

    Returns
    -------
    callable
        ``per_sample(y_true, y_pred)``, one float64 value per sample.
    """
    cls = type(loss_fn)
    try:
        config = dict(loss_fn.get_config())
        config.update(dtype="float64", reduction=None)
        rebuilt = cls.from_config(config)
        if (
            rebuilt.dtype == "float64"
            and rebuilt.reduction in (None, "none")
            and _same_settings(rebuilt, loss_fn)
        ):
            return rebuilt
    except Exception:
        pass
    try:
        from keras import dtype_policies

        # copy.copy would go through Keras's serialisation (and its config) again
        twin = object.__new__(type(loss_fn))
        twin.__dict__.update(vars(loss_fn))
        twin._dtype_policy = dtype_policies.get("float64")
        twin._dtype = twin._dtype_policy.compute_dtype
        twin.reduction = None
        if twin.dtype == "float64":
            return twin
    except Exception:
        pass
    return loss_fn.call


def _same_settings(a: Any, b: Any) -> bool:
    """True if two losses hold equal attributes, apart from name, dtype and reduction."""
    skip = {"name", "reduction", "_dtype_policy", "_dtype"}
    va = {k: v for k, v in vars(a).items() if k not in skip}
    vb = {k: v for k, v in vars(b).items() if k not in skip}
    if va.keys() != vb.keys():
        return False
    try:
        return all(va[k] is vb[k] or bool(va[k] == vb[k]) for k in va)
    except Exception:  # arrays and other values without a plain truth value
        return False


def reduce_values(values: Any, reduction: str | None) -> Any:
    """Keras's reduction of per-sample loss values, done in their own (float64) dtype.

    Parameters
    ----------
    values : backend tensor
        Per-sample loss values.
    reduction : str or None
        ``"sum"`` sums; ``"sum_over_batch_size"``, ``"mean"`` and
        ``"mean_with_sample_weight"`` (no weights here) average over every
        element; None and ``"none"`` return ``values``.

    Returns
    -------
    backend tensor
        The reduced loss (``values`` itself when there is nothing to reduce).
    """
    shape = tuple(ops.shape(values))
    if reduction in (None, "none") or shape in ((), (0,)):
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    return total / int(np.prod(shape))
