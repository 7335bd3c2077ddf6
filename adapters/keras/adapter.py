"""The Keras adapter: parameters, the three kinds of check target, check_loss and check_function.

``loss(p)`` receives float64 backend tensors; ``loss(model)`` is evaluated
on a float64 copy of the model (:func:`~.float64.float64_clone`).  A
zero-argument ``loss()`` reads the model's own (float32) weights, which are
perturbed with ``assign`` and restored bit for bit; it stays in float32, and
:class:`~gradcheck_core.adapters.base.Target`'s ``precision`` says why and what
to do instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from ..base import Adapter, Target, python_rng_states, takes_argument
from ..detection import framework_of, to_numpy
from .autodiff import directional_gradient as _directional_gradient
from .autodiff import grad_of_tensors, grad_of_variables
from .float64 import Settings, float64_clone, float64_settings
from .held import HeldPoint
from .losses import float64_loss, reduce_values
from .notes import _noted
from .state import _replay, keras_rng_states
from .values import (
    _FULL,
    _collect,
    _dtype_of,
    _is_layer,
    _is_variable,
    _layers_in,
    _tensor,
)


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
            and all(isinstance(g, np.ndarray) or framework_of(g) is not None for g in grad)
        ):
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
            dtype = _dtype_of(original)
            return _tensor(piece, "float64" if settings.float64 or dtype is None else dtype)

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
    def _model_target(
        self, loss: Callable[..., Any], layer: Any, flat: Flat, settings: Settings
    ) -> Iterator[Target]:
        """``loss(model)``: evaluated on a float64 copy of the model."""
        # Building the copy draws seeds for its layers from Python's and numpy's
        # generators: saved first, put back right after.
        before = python_rng_states()
        before_states = [r.get() for r in before]
        try:
            clone, why = float64_clone(layer) if settings.float64 else (None, "")
        finally:
            _replay(before, before_states)
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
        # Each point assigns only the copy's variables it changes (fast mode's
        # points move one block).
        held = HeldPoint(flat, variables, at_x0=False)
        put = held.put

        def evaluate(x: np.ndarray) -> Any:
            put(x)
            return _noted(loss(clone), precision, settings)

        def evaluate_along(block: slice, w: np.ndarray, s: float) -> Any:
            held.along(block, w, s)
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
            evaluate_along=evaluate_along,
            precision=precision,
            rngs=rngs,
            framework=self.name,
            thread_safe=False,
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
            precision = [
                *precision,
                f"loss() reads {what} in place (Keras {settings.describe()}), so every perturbation is "
                f"rounded to {kinds} and the forward pass runs in {kinds}; write the loss as "
                "loss(model), taking the model as its argument (gradcheck then evaluates a float64 "
                "copy of it), or build the model under keras.config.set_dtype_policy('float64')",
            ]

        def put_back() -> None:
            for v, value in state:
                v.assign(value)

        # Fast mode's points rewrite only the variables they change.
        held = HeldPoint(flat, variables, at_x0=True)

        def at(x: np.ndarray | None) -> None:
            # the point for a gradient: x0 exactly as given, or another point (gc.compare)
            if x is None:
                put_back()
                held.forget()
            else:
                held.put(x)
            _replay(rngs, saved_rngs)

        def evaluate(x: np.ndarray) -> Any:
            held.put(x)
            return _noted(call(), precision, settings)

        def evaluate_along(block: slice, w: np.ndarray, s: float) -> Any:
            held.along(block, w, s)
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
                evaluate_along=evaluate_along,
                precision=precision,
                rngs=rngs,
                framework=self.name,
                thread_safe=False,
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
                labels.append(
                    _tensor(array, "float64") if array.dtype.kind == "f" else _tensor(array, str(array.dtype))
                )
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

    def vjp(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        cotangents: list[np.ndarray | None],
        memo: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
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

    # -- second order -------------------------------------------------------------
    def directional_gradient(
        self, loss: Callable[..., Any], params: Any, w: np.ndarray
    ) -> Callable[..., Any]:
        """``<grad loss, w>`` by nested tapes (see :func:`.autodiff.directional_gradient`)."""
        return _directional_gradient(loss, takes_argument(loss), _is_layer(params), self.flatten, params, w)


def _rebuild(flat: Flat, tensors: list[Any]) -> Any:
    """The structure of ``params`` holding ``tensors`` (already made)."""
    it = iter(tensors)
    return flat.unravel(flat.x0, lambda piece, original: next(it))


ADAPTER = KerasAdapter()
