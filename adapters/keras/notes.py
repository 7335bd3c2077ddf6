"""Why a loss computed with Keras came back in float32, and what to do about it.

:func:`output_notes` writes the explanation for the report's precision notes;
:func:`notes_for_output` is what the adapter registry calls for a loss output
another adapter saw (a closure that may use Keras).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from .float64 import Settings, current_settings
from .values import _FULL, _NARROW, _dtype_of, backend


def output_notes(dtype: str, settings: Settings | None = None, *, inside: bool = False) -> list[str]:
    """Why a loss computed with Keras came back in ``dtype``, and the remedy.

    Parameters
    ----------
    dtype : str
        The dtype of the loss output (``"float32"``, ...).
    settings : Settings, optional
        The user's settings; default: the current ones.
    inside : bool
        True when the loss was evaluated by this adapter (float64 settings and
        float64 inputs already given), False when another adapter evaluated a
        closure that may use Keras (the seed case: numpy weights, a Keras loss).
    """
    if dtype in _FULL:
        return []
    s = settings or current_settings()
    if inside:
        return [
            f"the loss returned {dtype} although it was given float64 values (Keras {s.describe()}): "
            "something inside it computes in float32, typically a Keras loss, layer or model created "
            "before the check while floatx was float32 (its dtype is fixed when it is made); create it "
            "inside the loss function (floatx is float64 while the check runs), or check a Keras loss "
            "on its own with gc.check_loss(loss, y_true, y_pred), which rebuilds it in float64"
        ]
    wide = s.floatx in _FULL and s.x64 is not False
    if wide and s.backend == "tensorflow":
        return [
            f"Keras is loaded ({s.describe()}): a Keras loss or layer created before floatx was set to "
            "float64 keeps computing in float32; create it after keras.backend.set_floatx('float64'), "
            "or check a Keras loss on its own with gc.check_loss(loss, y_true, y_pred)"
        ]
    if wide:
        where = {
            "jax": "in ops such as tanh and sin",
            "torch": "in the default loss reduction (divide_no_nan)",
            "numpy": "in nearly every op (exp, log, the loss reduction)",
        }.get(s.backend, "in some ops")
        return [
            f"Keras is loaded ({s.describe()}): even with floatx float64, Keras on the {s.backend} "
            f"backend turns float64 into float32 {where}, because its type promotion maps 64-bit "
            "results to 32-bit off TensorFlow; check a Keras loss on its own with "
            "gc.check_loss(loss, y_true, y_pred), which avoids this"
            + (
                ", or create it with dtype='float64', reduction=None and average the per-sample "
                "values yourself"
                if s.backend != "numpy"
                else ""
            )
        ]
    remedy = (
        "check a Keras loss on its own with gc.check_loss(loss, y_true, y_pred), which rebuilds it "
        "in float64; or create Keras losses and layers after keras.backend.set_floatx('float64')"
    )
    if s.backend == "jax":
        remedy += (
            " together with jax.config.update('jax_enable_x64', True) (floatx alone changes nothing on JAX)"
        )
    if s.backend == "torch":
        remedy += (
            " and, on the torch backend, with dtype='float64', reduction=None, averaging the "
            "per-sample values yourself (the built-in reduction returns float32 there)"
        )
    if s.backend == "numpy":
        remedy += (
            " (which is not enough on the numpy backend: its ops return float32 even then, so "
            "use gc.check_loss, or a numpy version of the loss)"
        )
    return [
        f"Keras is loaded ({s.describe()}): a Keras loss or layer used by this loss computes in "
        f"float32 whatever it is given; {remedy}"
    ]


def notes_for_output(output: Any) -> list[str]:
    """:func:`output_notes` for a loss output seen by another adapter.

    Only outputs that Keras's backend could have produced get a note: a numpy
    value returned by a closure is not blamed on Keras unless the backend is
    numpy.

    Parameters
    ----------
    output : Any
        The loss output (a backend tensor, a numpy value, ...).

    Returns
    -------
    list of str
        The notes; empty when the output is float64 or not Keras's.
    """
    b = backend()
    if isinstance(output, (np.ndarray, np.generic)) and b != "numpy":
        return []
    if b != "numpy" and not ops.is_tensor(output):
        return []
    return output_notes(_dtype_of(output) or "float64")


def _noted(out: Any, precision: list[str], settings: Settings) -> Any:
    """Add the float32 explanation to ``precision`` the first time the loss comes back narrow."""
    if settings.float64 and not precision:
        dt = _dtype_of(out)
        if dt in _NARROW:
            precision.extend(output_notes(dt, settings, inside=True))
    return out
