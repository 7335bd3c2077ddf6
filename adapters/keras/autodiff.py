"""Gradients from the Keras backend's autodiff.

Gradients come from the backend's autodiff: ``tf.GradientTape``,
``jax.grad`` or ``torch.autograd``, with the weights injected through
``keras.StatelessScope`` where the backend needs pure functions.  The numpy
backend has none: there only a handwritten gradient (``grad=``) can be checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from gradcheck_core.errors import InputError

from .values import backend


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


def directional_gradient(
    loss: Callable[..., Any],
    functional: bool,
    is_layer: bool,
    flatten: Callable[[Any], Any],
    params: Any,
    w: np.ndarray,
) -> Callable[..., Any]:
    """``<grad loss, w>`` for ``check(..., order=2)``, called like ``loss``.

    On the TensorFlow backend the gradient comes from an inner
    ``GradientTape`` that the check's own tape records (nested tapes); on JAX
    from ``jax.grad`` traced inside the check's own ``jax.grad``; on torch from
    ``torch.autograd.grad(create_graph=True)``.  Either way its gradient is
    the Hessian-vector product.  The numpy backend raises.

    Parameters
    ----------
    loss : callable
        The user's loss.
    functional : bool
        Whether it takes an argument.
    is_layer : bool
        Whether ``params`` is a model or layer (then ``loss`` receives one).
    flatten : callable
        The adapter's flatten (structure -> Flat).
    params : Any
        The parameters.
    w : numpy.ndarray
        The direction, in flatten order.
    """
    b = backend()
    if b not in ("tensorflow", "jax", "torch"):
        raise InputError(
            "order=2 with Keras differentiates the backend's own gradient, and Keras's numpy "
            "backend has no autodiff: run with KERAS_BACKEND set to tensorflow, jax or torch."
        )
    pieces = flatten(params).split(w)
    if b != "tensorflow":
        if functional and is_layer:
            return lambda model: projected_gradient_stateless(
                lambda: loss(model), list(model.trainable_weights), pieces
            )
        if functional:
            return lambda p: projected_gradient_stateless(
                lambda: loss(p), _variables(flatten(p).values), pieces
            )
        variables = _variables(flatten(params).values)
        return lambda: projected_gradient_stateless(loss, variables, pieces)
    from ..tensorflow import projected_gradient

    if functional and is_layer:
        return lambda model: projected_gradient(
            lambda: loss(model), [v.value for v in model.trainable_weights], pieces
        )
    if functional:
        return lambda p: projected_gradient(lambda: loss(p), list(flatten(p).values), pieces)
    handles = [v.value for v in flatten(params).values]
    return lambda: projected_gradient(loss, handles, pieces)


def _variables(values: list[Any]) -> list[Any]:
    """``values`` if they are all Keras variables (order=2 on JAX and torch injects through them)."""
    if not all(isinstance(v, keras.Variable) for v in values):
        raise InputError(
            f"order=2 with Keras on the {backend()} backend differentiates through keras.Variable "
            "parameters (a model, a layer, or a dict or list of keras.Variable); these parameters "
            "hold other values. Pass the model or its variables."
        )
    return values


def projected_gradient_stateless(
    call: Callable[[], Any], variables: list[Any], pieces: list[np.ndarray]
) -> Any:
    """``<d call() / d variables, w>`` on JAX or torch, differentiable in turn by the check.

    The variables' current values (inside the check's own
    ``keras.StatelessScope``, the values it differentiates with respect to)
    are injected into an inner scope, and the inner gradient is taken so that
    the outer differentiation sees through it.

    Parameters
    ----------
    call : callable
        Reads ``variables`` and returns a backend scalar.
    variables : list of keras.Variable
        What to differentiate with respect to.
    pieces : list of numpy.ndarray
        ``w``, one array per variable.
    """
    current = [v.value for v in variables]

    def scoped(ts: list[Any]) -> Any:
        with keras.StatelessScope(state_mapping=list(zip(variables, ts))):
            return call()

    if backend() == "jax":
        import jax
        import jax.numpy as jnp

        def scalar(ts: list[Any]) -> Any:
            out = scoped(ts)
            if not isinstance(out, jax.Array):
                raise _not_differentiable(out, "jax.grad")
            return jnp.reshape(out, ())

        grads = jax.grad(scalar)(list(current))
        return sum(
            (jnp.sum(g * jnp.asarray(p.reshape(g.shape), dtype=g.dtype)) for g, p in zip(grads, pieces)),
            jnp.zeros((), dtype=grads[0].dtype if grads else jnp.float64),
        )
    import torch

    leaves = [c if c.requires_grad else c.detach().requires_grad_(True) for c in current]
    out = scoped(leaves)
    if not isinstance(out, torch.Tensor):
        raise _not_differentiable(out, "torch.autograd")
    grads = torch.autograd.grad(out.reshape(()), leaves, create_graph=True, allow_unused=True)
    total = torch.zeros((), dtype=leaves[0].dtype if leaves else torch.float64)
    for g, leaf, p in zip(grads, leaves, pieces):
        if g is not None:
            total = total + torch.sum(g * torch.as_tensor(p.reshape(tuple(leaf.shape)), dtype=g.dtype))
    return total
