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

A zero-argument ``loss()`` reads the model's own (float32) weights, which are
perturbed with ``assign`` and restored bit for bit; it stays in float32, and
:class:`~gradcheck_core.adapters.base.Target`'s ``precision`` says why and what
to do instead.  Gradients come from the backend's autodiff: ``tf.GradientTape``,
``jax.grad`` or ``torch.autograd``, with the weights injected through
``keras.StatelessScope`` where the backend needs pure functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from .base import Adapter, RngState, Target, python_rng_states, takes_argument

__all__ = [
    "KerasAdapter", "ADAPTER", "float64_settings", "float64_clone", "output_notes", "notes_for_output",
    "float64_loss", "reduce_values",
]

_FULL = ("float64", "complex128")
_NARROW = ("float16", "bfloat16", "float32")
_FLOAT_POLICIES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def backend() -> str:
    """The active Keras backend: ``"tensorflow"``, ``"jax"``, ``"torch"`` or ``"numpy"``."""
    return keras.backend.backend()


# -- global settings -----------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The user's Keras settings, as they were before a check changed them."""

    backend: str
    floatx: str
    policy: str
    x64: bool | None  # JAX's jax_enable_x64 flag; None on other backends
    float64: bool  # whether the check runs with float64 settings

    def describe(self) -> str:
        """``backend jax, floatx float32, JAX x64 off``."""
        text = f"backend {self.backend}, floatx {self.floatx}"
        if self.policy != self.floatx:
            text += f", dtype policy {self.policy}"
        if self.x64 is not None:
            text += f", JAX x64 {'on' if self.x64 else 'off'}"
        return text


def _promotion_table() -> dict[str, str] | None:
    """Keras's table that turns 64-bit result dtypes into 32-bit ones off TensorFlow."""
    try:
        from keras.src.backend.common import dtypes
    except ImportError:  # pragma: no cover - internal layout changed
        return None
    table = getattr(dtypes, "BIT64_TO_BIT32_DTYPE", None)
    return table if isinstance(table, dict) else None


def _raw_policy() -> Any:
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("dtype_policy", None)


def _set_raw_policy(policy: Any) -> None:
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("dtype_policy", policy)


def current_settings(float64: bool = False) -> Settings:
    """Read the Keras settings without changing any of them."""
    b = backend()
    policy = _raw_policy()
    x64 = None
    if b == "jax":
        import jax

        x64 = bool(jax.config.jax_enable_x64)
    return Settings(
        backend=b,
        floatx=keras.backend.floatx(),
        policy=getattr(policy, "name", None) or keras.backend.floatx(),
        x64=x64,
        float64=float64,
    )


@contextlib.contextmanager
def float64_settings(enabled: bool = True) -> Iterator[Settings]:
    """Run a block with Keras in float64; put every setting back afterwards.

    Sets floatx and the global dtype policy to float64, turns on JAX's x64
    flag on the jax backend, and stops Keras's type promotion from turning
    float64 results into float32 on the jax, torch and numpy backends (it
    does so in ``tanh``, ``sin``, ``cos``, ... to mimic JAX's default).  The
    previous values are restored on exit, whatever happened inside.

    Yields
    ------
    Settings
        The user's settings from before the block.
    """
    settings = current_settings(enabled)
    floatx = keras.backend.floatx()
    policy = _raw_policy()
    table = _promotion_table() if settings.backend != "tensorflow" else None
    table_entry = table.get("float64") if table is not None else None
    try:
        if enabled:
            keras.backend.set_floatx("float64")
            keras.config.set_dtype_policy("float64")
            if settings.backend == "jax":
                import jax

                jax.config.update("jax_enable_x64", True)
            if table is not None:
                table["float64"] = "float64"
        yield settings
    finally:
        try:
            if table is not None:
                if table_entry is None:
                    table.pop("float64", None)
                else:
                    table["float64"] = table_entry
        finally:
            try:
                if settings.x64 is not None:
                    import jax

                    jax.config.update("jax_enable_x64", settings.x64)
            finally:
                try:
                    keras.backend.set_floatx(floatx)
                finally:
                    _set_raw_policy(policy)


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
        remedy += " together with jax.config.update('jax_enable_x64', True) (floatx alone changes nothing on JAX)"
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
    """
    b = backend()
    if isinstance(output, (np.ndarray, np.generic)) and b != "numpy":
        return []
    if b != "numpy" and not ops.is_tensor(output):
        return []
    return output_notes(_dtype_of(output) or "float64")


# -- values ----------------------------------------------------------------------
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


def _seed_generators(layers: list[Any]) -> list[Any]:
    found, seen = [], set()
    for layer in layers:
        try:
            sublayers = list(layer._flatten_layers())
        except Exception:
            sublayers = [layer]
        for sub in sublayers:
            for gen in getattr(sub, "_seed_generators", []) or []:
                if id(gen) not in seen:
                    seen.add(id(gen))
                    found.append(gen)
    return found


def _seed_state(name: str, gen: Any) -> RngState:
    def get() -> np.ndarray:
        return np.array(ops.convert_to_numpy(gen.state.value))

    def put(state: np.ndarray) -> None:
        gen.state.assign(state)

    return RngState(name, get, put)


def keras_rng_states(layers: list[Any]) -> list[RngState]:
    """The seed generators of ``layers`` (dropout, noise), Keras's global one, and the backend's."""
    out = [_seed_state(f"seed generator {gen.name}", gen) for gen in _seed_generators(layers)]
    try:
        from keras.src.backend.common import global_state

        gen = global_state.get_global_attribute("global_seed_generator")
    except Exception:  # pragma: no cover
        gen = None
    if gen is not None:
        out.append(_seed_state("keras global seed generator", gen))
    b = backend()
    if b == "torch":
        import torch

        out.append(RngState("torch", torch.random.get_rng_state, torch.random.set_rng_state))
    elif b == "tensorflow":
        from .tensorflow import global_generator_state

        out.extend(global_generator_state())
    return out


# -- autodiff on each backend ----------------------------------------------------------
def _no_autodiff() -> InputError:
    return InputError(
        "Keras's numpy backend has no automatic differentiation, so there is no gradient to "
        "check: pass your backward pass as grad=, or run with KERAS_BACKEND set to tensorflow, "
        "jax or torch."
    )


def _not_differentiable(out: Any, what: str) -> InputError:
    return InputError(
        f"the loss returned a {type(out).__module__}.{type(out).__qualname__}, not a "
        f"{backend()} tensor, so {what} cannot differentiate it (a conversion to numpy, .numpy() "
        "or float() left the backend). Keep the loss in keras.ops / backend operations, or pass "
        "your gradient as grad=."
    )


def _flat(grads: list[Any]) -> np.ndarray:
    parts = [np.asarray(ops.convert_to_numpy(g), dtype=np.float64).reshape(-1) for g in grads]
    return np.concatenate(parts) if parts else np.zeros(0)


def grad_of_tensors(fn: Callable[[list[Any]], Any], tensors: list[Any]) -> np.ndarray:
    """Gradient of the scalar ``fn(tensors)`` with respect to backend ``tensors``.

    Parameters
    ----------
    fn : callable
        Takes a list of backend tensors, returns a backend scalar.
    tensors : list
        The point, as backend tensors.

    Returns
    -------
    numpy.ndarray
        The gradient, all tensors flattened and concatenated, float64.  Inputs
        the output does not depend on get zeros.

    Raises
    ------
    InputError
        On the numpy backend, or when the output is not a backend tensor.
    """
    b = backend()
    if b == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for t in tensors:
                tape.watch(t)
            out = fn(tensors)
        if not tf.is_tensor(out):
            raise _not_differentiable(out, "tf.GradientTape")
        return _flat(tape.gradient(out, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    if b == "jax":
        import jax
        import jax.numpy as jnp

        def scalar(ts: list[Any]) -> Any:
            out = fn(ts)
            if not isinstance(out, jax.Array):
                raise _not_differentiable(out, "jax.grad")
            return jnp.reshape(out, ())

        try:
            return _flat(jax.grad(scalar)(list(tensors)))
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as exc:
            raise InputError(
                "jax.grad could not trace the loss: it turns a value into numpy or a Python "
                f"number ({type(exc).__name__}). Keep the loss in keras.ops / jax.numpy, or pass "
                "your gradient as grad=."
            ) from exc
    if b == "torch":
        import torch

        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(leaves)
        if not isinstance(out, torch.Tensor):
            raise _not_differentiable(out, "torch.autograd")
        if not out.requires_grad:
            return _flat([torch.zeros_like(t) for t in leaves])
        grads = torch.autograd.grad(out.reshape(()), leaves, allow_unused=True)
        return _flat([torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)])
    raise _no_autodiff()


def grad_of_variables(call: Callable[[], Any], variables: list[Any]) -> np.ndarray:
    """Gradient of the scalar ``call()`` with respect to Keras variables, at their values.

    On TensorFlow the tape watches the variables; on JAX and torch their
    values are injected through ``keras.StatelessScope``, which also keeps any
    update made by ``call`` (moving statistics, seed states) out of the
    variables.

    Parameters
    ----------
    call : callable
        Takes no argument, reads the variables, returns a backend scalar.
    variables : list of keras.Variable
        The variables to differentiate with respect to.

    Returns
    -------
    numpy.ndarray
        The gradient in the order of ``variables``, flattened, float64.
    """
    b = backend()
    if b == "tensorflow":
        import tensorflow as tf

        handles = [v.value for v in variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for h in handles:
                tape.watch(h)
            out = call()
        if not tf.is_tensor(out):
            raise _not_differentiable(out, "tf.GradientTape")
        return _flat(tape.gradient(out, handles, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    if b in ("jax", "torch"):
        values = [ops.convert_to_tensor(v.value, dtype=v.dtype) for v in variables]

        def through_scope(ts: list[Any]) -> Any:
            with keras.StatelessScope(state_mapping=list(zip(variables, ts))):
                return call()

        return grad_of_tensors(through_scope, values)
    raise _no_autodiff()


# -- float64 copies of models ------------------------------------------------------------
def _float64_config(config: Any) -> Any:
    """A layer config with every floating dtype (policy) replaced by float64."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and _is_float_policy(value):
                out[key] = "float64"
            else:
                out[key] = _float64_config(value)
        return out
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    return config


def _is_float_policy(value: Any) -> bool:
    if isinstance(value, str):
        return value in _FLOAT_POLICIES
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        name = (value.get("config") or {}).get("name")
        return name in _FLOAT_POLICIES
    return False


def _clone_layer(layer: Any) -> Any:
    return type(layer).from_config(_float64_config(layer.get_config()))


def float64_clone(layer: Any) -> tuple[Any, str]:
    """A float64 copy of a built Keras layer or model with the same weight values.

    The copy is rebuilt with ``from_config`` from the layer's config with every
    floating dtype (policy) set to float64, the ``Input`` layers of Sequential
    and functional models included (``keras.models.clone_model`` would keep a
    float32 ``Input``, which rounds the data to float32 on its way in).  Call
    this inside :func:`float64_settings`, so that sublayers created in
    ``__init__`` are float64 too.  All variables, seed generator states
    included, are copied.

    Returns
    -------
    clone, reason
        The copy, or None and a sentence saying why it could not be made.
    """
    try:
        clone = _clone_layer(layer)
        if not clone.built:
            build = layer.get_build_config()
            if not build:
                return None, "its build config is unknown"
            clone.build_from_config(build)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"rebuilding it from its config failed ({type(exc).__name__}: {first[:200]})"
    narrow_inputs = [
        str(t.dtype) for t in (getattr(clone, "inputs", None) or []) if str(getattr(t, "dtype", "")) in _NARROW
    ]
    if narrow_inputs:
        return None, f"its copy still takes {'/'.join(sorted(set(narrow_inputs)))} inputs"
    mine, theirs = layer.variables, clone.variables
    shapes = [tuple(v.shape) for v in mine]
    if [tuple(v.shape) for v in theirs] != shapes or [tuple(v.shape) for v in clone.trainable_weights] != [
        tuple(v.shape) for v in layer.trainable_weights
    ]:
        return None, "the copy rebuilt from its config has different weights"
    for new, old in zip(theirs, mine):
        value = np.asarray(ops.convert_to_numpy(old.value))
        if new.dtype == "float64" and value.dtype.kind == "f":
            value = value.astype(np.float64)
        _assign(new, value)
    if any(v.dtype not in _FULL for v in clone.trainable_weights):
        return None, "its copy still has weights that are not float64"
    return clone, ""


# -- the adapter -----------------------------------------------------------------------
class KerasAdapter(Adapter):
    """Keras 3 models, layers, variables and backend tensors."""

    name = "keras"

    def is_leaf(self, value: Any) -> bool:
        if _is_variable(value):
            return True
        if isinstance(value, (np.ndarray, np.generic, float)) and not isinstance(value, (bool, np.bool_)):
            return True
        try:
            return bool(ops.is_tensor(value))
        except Exception:
            return False

    def to_numpy(self, value: Any) -> np.ndarray:
        if _is_variable(value):
            return np.array(ops.convert_to_numpy(value.value))
        if isinstance(value, (np.ndarray, np.generic, float, int)):
            return np.asarray(value)
        try:
            if ops.is_tensor(value):
                return np.asarray(ops.convert_to_numpy(value))
        except Exception:
            pass
        from gradcheck_core.adapters import to_numpy

        return np.asarray(to_numpy(value))

    def collect(self, params: Any) -> Any:
        return _collect(params)

    def gradient_vector(self, grad: Any, flat: Flat) -> np.ndarray:
        """Also accepts a list in ``trainable_weights`` order for a model or layer."""
        if (
            isinstance(grad, (list, tuple))
            and flat.skeleton[0] == "dict"
            and len(grad) == len(flat.leaves) > 1
            and not hasattr(type(grad), "_fields")
        ):
            from gradcheck_core.adapters import framework_of

            if all(isinstance(g, np.ndarray) or framework_of(g) is not None for g in grad):
                grad = {leaf.name: g for leaf, g in zip(flat.leaves, grad)}
        return super().gradient_vector(grad, flat)

    # -- the check --------------------------------------------------------------
    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
        with float64_settings(float64) as settings:
            flat = self.flatten(params)
            functional = takes_argument(loss)
            if functional and _is_layer(params):
                with self._model_target(loss, params, flat, settings) as target:
                    yield target
            elif functional:
                yield self._functional(loss, params, flat, settings)
            else:
                with self._in_place(loss, params, flat, settings, (), []) as target:
                    yield target

    def _functional(self, loss: Callable[..., Any], params: Any, flat: Flat, settings: Settings) -> Target:
        """``loss(p)``: ``p`` holds fresh float64 backend tensors at every point."""
        rngs = python_rng_states() + keras_rng_states(_layers_in(params))
        saved = [r.get() for r in rngs]
        precision: list[str] = []

        def make(piece: np.ndarray, original: Any) -> Any:
            if settings.float64 or _dtype_of(original) is None:
                return _tensor(piece, "float64")
            return _tensor(piece, _dtype_of(original))

        def evaluate(x: np.ndarray) -> Any:
            return _noted(loss(flat.unravel(x, make)), precision, settings)

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            _replay(rngs, saved)
            point = flat.x0 if x is None else x
            tensors = [make(piece, value) for piece, value in zip(flat.split(point), flat.values)]
            return grad_of_tensors(lambda ts: loss(_rebuild(flat, ts)), tensors)

        def as_given(piece: np.ndarray, original: Any) -> Any:
            # a handwritten gradient gets numpy where the user gave numpy
            if isinstance(original, float):
                return float(piece)
            if isinstance(original, (np.ndarray, np.generic)):
                return np.array(piece, dtype=np.float64 if settings.float64 else original.dtype)
            return make(piece, original)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            _replay(rngs, saved)
            return fn(flat.unravel(flat.x0 if x is None else x, as_given))

        return Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            precision=precision,
            rngs=rngs,
            framework=self.name,
        )

    @contextlib.contextmanager
    def _model_target(self, loss: Callable[..., Any], layer: Any, flat: Flat, settings: Settings) -> Iterator[Target]:
        """``loss(model)``: evaluated on a float64 copy of the model."""
        clone, why = float64_clone(layer) if settings.float64 else (None, "")
        if clone is None:
            note = []
            if settings.float64 and any(leaf.dtype not in _FULL for leaf in flat.leaves):
                note.append(
                    f"no float64 copy of the Keras {type(layer).__name__} {layer.name!r} could be made "
                    f"({why}), so loss(model) was evaluated on the model itself, perturbing its "
                    f"{'/'.join(sorted({leaf.dtype for leaf in flat.leaves}))} weights in place; give "
                    "the model a working get_config(), or build it under "
                    "keras.config.set_dtype_policy('float64')"
                )
            with self._in_place(loss, layer, flat, settings, (layer,), note) as target:
                yield target
            return
        variables = list(clone.trainable_weights)
        rngs = python_rng_states() + keras_rng_states([clone])
        saved = [r.get() for r in rngs]
        precision: list[str] = []

        def put(x: np.ndarray) -> None:
            for v, piece in zip(variables, flat.split(x)):
                _assign(v, piece)

        def evaluate(x: np.ndarray) -> Any:
            put(x)
            return _noted(loss(clone), precision, settings)

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            put(flat.x0 if x is None else x)
            _replay(rngs, saved)
            return grad_of_variables(lambda: loss(clone), variables)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            put(flat.x0 if x is None else x)
            _replay(rngs, saved)
            return fn(clone)

        yield Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            precision=precision,
            rngs=rngs,
            framework=self.name,
        )

    @contextlib.contextmanager
    def _in_place(
        self,
        loss: Callable[..., Any],
        params: Any,
        flat: Flat,
        settings: Settings,
        argument: tuple[Any, ...],
        precision: list[str],
    ) -> Iterator[Target]:
        """``loss()`` (or ``loss(model)`` without a copy): perturb the variables themselves."""

        def call() -> Any:
            return loss(*argument)

        variables = []
        for leaf, value in zip(flat.leaves, flat.values):
            if not _is_variable(value):
                raise InputError(
                    f"loss takes no argument, so parameter {leaf.name!r} must be a Keras variable "
                    f"that the loss reads, but it is a {type(value).__name__}, which cannot be changed "
                    "in place. Pass the model, layer or keras.Variable, or write the loss as loss(p) "
                    "and read the values from p."
                )
            variables.append(value)
        layers = _layers_in(params)
        # Everything that may change: the checked weights, and every variable of the
        # layers (moving statistics, seed states), restored bit for bit at the end.
        state, seen = [], set()
        for v in variables + [v for layer in layers for v in layer.variables]:
            if id(v) not in seen:
                seen.add(id(v))
                state.append((v, np.array(ops.convert_to_numpy(v.value))))
        rngs = python_rng_states() + keras_rng_states(layers)
        saved_rngs = [r.get() for r in rngs]
        narrow = [leaf for leaf in flat.leaves if leaf.dtype not in _FULL]
        if narrow and settings.float64:
            names = ", ".join(repr(leaf.name) for leaf in narrow[:4]) + (", ..." if len(narrow) > 4 else "")
            kinds = "/".join(sorted({leaf.dtype for leaf in narrow}))
            what = f"the {kinds} weights {names}"
            if layers:
                what = f"the {kinds} weights of {', '.join(repr(layer.name) for layer in layers)}"
            precision = precision + [
                f"loss() reads {what} in place (Keras {settings.describe()}), so every perturbation is "
                f"rounded to {kinds} and the forward pass runs in {kinds}; write the loss as "
                "loss(model), taking the model as its argument (gradcheck then evaluates a float64 "
                "copy of it), or build the model under keras.config.set_dtype_policy('float64')"
            ]

        def put_back() -> None:
            for v, value in state:
                v.assign(value)

        def write(x: np.ndarray) -> None:
            for v, piece in zip(variables, flat.split(x)):
                _assign(v, piece)

        def at(x: np.ndarray | None) -> None:
            # the point for a gradient: x0 exactly as given, or another point (gc.compare)
            if x is None:
                put_back()
            else:
                write(x)
            _replay(rngs, saved_rngs)

        def evaluate(x: np.ndarray) -> Any:
            write(x)
            return _noted(call(), precision, settings)

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            at(x)
            return grad_of_variables(call, variables)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            at(x)
            return fn(*argument)

        try:
            yield Target(
                flat=flat,
                evaluate=evaluate,
                gradient=gradient,
                call_grad=call_grad,
                precision=precision,
                rngs=rngs,
                framework=self.name,
            )
        finally:
            put_back()

    # -- check_loss -------------------------------------------------------------
    def loss_closure(self, loss_fn: Callable[..., Any], y_true: Any, y_pred: Any) -> Callable[[Any], Any]:
        """``loss(y_pred)`` for :func:`gradcheck_core.check_loss`, computed in float64.

        A Keras ``Loss`` object is rebuilt with ``dtype="float64",
        reduction=None`` (see :func:`float64_loss`: from its config when that
        keeps every setting, otherwise as a copy of the object with those two
        settings changed), and its per-sample values are reduced here in
        float64 as the original reduction would (``"sum"``: the sum;
        ``"sum_over_batch_size"``, ``"mean"``: the mean).  A plain function is
        called with float64 tensors; Keras's own loss functions return one value
        per sample, which are averaged like Keras's default reduction.

        Parameters
        ----------
        loss_fn : keras.losses.Loss or callable
            ``loss_fn(y_true, y_pred)``.
        y_true : array or tensor
            Fixed targets (floating ones are given to the loss in float64).
        y_pred : array or tensor
            The predictions (the parameter of the check).

        Returns
        -------
        callable
            ``closure(y_pred)`` returning the scalar loss in float64.
        """
        labels: list[Any] = []

        def truth() -> Any:
            # converted on first use, inside the check's float64 settings
            if not labels:
                array = np.asarray(self.to_numpy(y_true))
                labels.append(_tensor(array, "float64") if array.dtype.kind == "f" else _tensor(array, str(array.dtype)))
            return labels[0]

        if isinstance(loss_fn, keras.losses.Loss):
            reduction = loss_fn.reduction
            if reduction in (None, "none"):
                raise InputError(
                    f"the loss {loss_fn.name!r} has reduction={reduction!r} and returns one value per "
                    "sample; check_loss needs a scalar. Use reduction='sum_over_batch_size' (the "
                    "default) or 'sum', or check the per-sample values with gc.check_function."
                )
            per_sample = float64_loss(loss_fn)

            def closure(yp: Any) -> Any:
                return reduce_values(per_sample(truth(), yp), reduction)

            return closure
        keras_function = str(getattr(loss_fn, "__module__", "") or "").startswith("keras")

        def plain(yp: Any) -> Any:
            out = loss_fn(truth(), yp)
            if keras_function and int(np.prod(ops.shape(out))) > 1:
                return reduce_values(out, "sum_over_batch_size")
            return out

        return plain

    # -- check_function -----------------------------------------------------------
    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        with float64_settings(True):
            out = fn(*inputs)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            return [np.asarray(self.to_numpy(o)) for o in outs]

    def vjp(self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]) -> list[np.ndarray]:
        """``u^T J`` of ``fn`` at ``inputs`` (float64 tensors), one array per input."""
        with float64_settings(True):
            xs = [_tensor(np.asarray(self.to_numpy(x), dtype=np.float64), "float64") for x in inputs]

            def phi(ts: list[Any]) -> Any:
                out = fn(*ts)
                outs = list(out) if isinstance(out, (list, tuple)) else [out]
                total = None
                for o, u in zip(outs, cotangents):
                    if u is None:
                        continue
                    term = ops.sum(ops.multiply(ops.cast(o, "float64"), _tensor(np.asarray(u), "float64")))
                    total = term if total is None else total + term
                return total

            g = grad_of_tensors(phi, xs)
        pieces, start = [], 0
        for x in xs:
            size = int(np.prod(ops.shape(x)))
            pieces.append(g[start : start + size].reshape(tuple(ops.shape(x))))
            start += size
        return pieces


def _replay(rngs: list[RngState], saved: list[Any]) -> None:
    for r, s in zip(rngs, saved):
        r.set(s)


def _rebuild(flat: Flat, tensors: list[Any]) -> Any:
    """The structure of ``params`` holding ``tensors`` (already made)."""
    it = iter(tensors)
    return flat.unravel(flat.x0, lambda piece, original: next(it))


def _noted(out: Any, precision: list[str], settings: Settings) -> Any:
    """Add the float32 explanation to ``precision`` the first time the loss comes back narrow."""
    if settings.float64 and not precision:
        dt = _dtype_of(out)
        if dt in _NARROW:
            precision.extend(output_notes(dt, settings, inside=True))
    return out


def float64_loss(loss_fn: Any) -> Callable[[Any, Any], Any]:
    """The per-sample values of a Keras ``Loss``, computed in float64.

    The loss is rebuilt from its config with ``dtype="float64",
    reduction=None``, and the rebuilt loss is used only if it carries the same
    settings as the original: a config can drop one (Keras 3.15's ``Huber``
    forgets its ``delta``), and a custom loss without a ``get_config`` of its
    own loses its constructor arguments.  Otherwise the loss is copied (its
    attributes, hence its settings, are kept) with those two settings changed;
    if even that fails, its ``call`` is used directly on the float64 tensors.
    """
    cls = type(loss_fn)
    try:
        config = dict(loss_fn.get_config())
        config.update(dtype="float64", reduction=None)
        rebuilt = cls.from_config(config)
        if rebuilt.dtype == "float64" and rebuilt.reduction in (None, "none") and _same_settings(rebuilt, loss_fn):
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
    """
    shape = tuple(ops.shape(values))
    if reduction in (None, "none") or shape in ((), (0,)):
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    return total / int(np.prod(shape))


ADAPTER = KerasAdapter()
