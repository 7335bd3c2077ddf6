"""Why a loss computed with Keras came back in float32, and what to do about it.

:func:`output_notes` writes the explanation for the report's precision notes;
:func:`notes_for_output` is what the adapter registry calls for a loss output
another adapter saw (a closure that may use Keras).
"""

from __future__ import annotations

import inspect
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


_CLIPPING_LOSSES = ("crossentropy", "focal")


def _keras_crossentropy_name(value: Any) -> str | None:
    """The name of a Keras crossentropy (a ``Loss`` object or loss function), else None."""
    cls = type(value)
    module = getattr(value, "__module__", None) or cls.__module__ or ""
    name = getattr(value, "__name__", None) or cls.__name__
    if module.startswith("keras") and any(word in name.lower() for word in _CLIPPING_LOSSES):
        return name
    return None


def clip_note(loss: Any, depth: int = 0) -> str | None:
    """A sentence about Keras's probability clip when ``loss`` is or calls a Keras crossentropy.

    Keras's crossentropies (from probabilities) clip them to ``[epsilon, 1 -
    epsilon]`` with ``epsilon = keras.config.epsilon()`` (1e-7): where a
    predicted probability is below the clip the loss is flat, so its true
    derivative there is zero while an unclipped formula (``softmax(z) - y``)
    is not.  The loss's closure and the globals it names are searched, a few
    levels deep.

    Parameters
    ----------
    loss : callable
        The loss of the check.
    depth : int
        How deep the search is already (internal).

    Returns
    -------
    str or None
        The sentence, or None when no Keras crossentropy is found.
    """
    name = _keras_crossentropy_name(loss)
    if name is None and depth < 3 and callable(loss):
        try:
            found = inspect.getclosurevars(loss)
        except (TypeError, ValueError):
            return None
        for value in [*found.nonlocals.values(), *found.globals.values()]:
            if callable(value) and not isinstance(value, type):
                note = clip_note(value, depth + 1)
                if note is not None:
                    return note
        return None
    if name is None:
        return None
    from keras import config

    eps = config.epsilon()
    return (
        f"the loss is Keras's {name}, which clips predicted probabilities to [{eps:g}, 1 - {eps:g}] "
        f"(keras.config.epsilon()): where a probability falls below {eps:g} the loss is flat, so "
        "its derivative there is zero, while a gradient written without the clip (softmax(z) - y) "
        "is not. If some predictions are that small, the check is right that this loss and this "
        "gradient differ: clip the gradient the same way, or compare on a loss without the clip "
        "(from_logits=True, or a float64 formula of your own)"
    )
