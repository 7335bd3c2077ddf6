"""The Keras 3 adapter, on the tensorflow, jax and torch backends (numpy: handwritten gradients).

Keras computes in ``keras.backend.floatx()``, float32 by default, and a loss,
layer or model fixes its dtype when it is created.  A float32 loss is rounded
to about 6e-8 of its size, and a central difference divides that rounding by
the step: with the classic step 1e-7 every numerical derivative is off by
about 0.3 of the loss, which is why a plain gradient check of a correct Keras
loss reports relative errors of 0.2-0.7.
This adapter evaluates in float64 wherever that can be had:

* for the whole check, floatx and the global dtype policy are float64, JAX's
  ``jax_enable_x64`` flag is on (jax backend), and Keras's type promotion does
  not demote float64 to float32 (jax, torch and numpy backends); all four are
  put back afterwards, also after an exception or Ctrl-C;
* a model or layer checked with ``loss(model)`` is evaluated on a float64 copy
  (built from its config, weights copied), so the user's model is never
  touched;
* ``loss(p)`` receives float64 backend tensors;
* :meth:`KerasAdapter.loss_closure` (used by :func:`gradcheck_core.check_loss`)
  rebuilds a Keras ``Loss`` with ``dtype="float64", reduction=None`` and
  applies the original reduction itself in float64.

A zero-argument ``loss()`` reads the model's own (float32) weights in place
and stays in float32 (see :mod:`.adapter`).

The modules:

* :mod:`.values` -- the active backend, dtypes, backend tensors, variables and
  the trainable weights of layers;
* :mod:`.float64` -- the float64 settings of a check and float64 copies of
  models;
* :mod:`.notes` -- why a loss came back in float32, for the report;
* :mod:`.state` -- the seed generators and backend random state, replayed
  around each evaluation;
* :mod:`.autodiff` -- gradients from ``tf.GradientTape``, ``jax.grad`` or
  ``torch.autograd``;
* :mod:`.losses` -- Keras losses rebuilt in float64, and Keras's reductions;
* :mod:`.adapter` -- :class:`KerasAdapter` and :data:`ADAPTER`.
"""

from __future__ import annotations

from .adapter import ADAPTER, KerasAdapter
from .autodiff import grad_of_tensors, grad_of_variables
from .float64 import Settings, current_settings, float64_clone, float64_settings
from .losses import float64_loss, reduce_values
from .notes import notes_for_output, output_notes
from .state import keras_rng_states
from .values import backend, layer_variables

__all__ = [
    "ADAPTER",
    "KerasAdapter",
    "Settings",
    "backend",
    "current_settings",
    "float64_clone",
    "float64_loss",
    "float64_settings",
    "grad_of_tensors",
    "grad_of_variables",
    "keras_rng_states",
    "layer_variables",
    "notes_for_output",
    "output_notes",
    "reduce_values",
]
