"""What an adapter provides to the backend-neutral core.

An adapter knows one framework: which values are its leaves, how to turn them
into numpy, how to evaluate a loss at a float64 vector (functionally, or by
writing into mutable state), its autodiff gradient, the random number
generators to replay, and how to put every global setting back afterwards.
It never compares anything: the core does.

The core talks to an adapter through :meth:`Adapter.target`, a context manager
yielding a :class:`Target`.  Everything the adapter changed (parameters,
dtypes, framework flags, RNG state, train/eval mode) is restored when the
context exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import random
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat, flatten, gradient_vector

from .detection import framework_of, to_numpy

__all__ = ["FIRST_CALL", "Adapter", "RngState", "Target", "python_rng_states", "takes_argument"]


def takes_argument(loss: Callable[..., Any]) -> bool:
    """True if ``loss`` is to be called as ``loss(p)``, False for ``loss()``."""
    code = getattr(loss, "__code__", None)
    if (
        type(loss) is types.FunctionType
        and code is not None
        and "__wrapped__" not in loss.__dict__
        and "__signature__" not in loss.__dict__
    ):  # a plain function: its code says what inspect.signature would
        return bool(code.co_argcount or code.co_flags & inspect.CO_VARARGS)
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):
        return True
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL,):
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return True
    return False


@dataclass
class RngState:
    """A random number generator whose state is saved once and replayed.

    ``get`` reads the state, ``set`` writes it.  The core sets the saved state
    before every evaluation (so dropout draws the same mask each time) and once
    more at the end (so the user's stream continues as if nothing had run).
    """

    name: str
    get: Callable[[], Any]
    set: Callable[[Any], None]
    #: ``same(saved)``: True only where the generator's state is certainly still
    #: ``saved`` (a value ``get`` returned), told without reading the whole state;
    #: False where it may differ, and then the states are compared or set.
    same: Callable[[Any], bool] | None = None

    def unchanged(self, saved: Any) -> bool:
        """Whether the state is certainly still ``saved`` by the cheap test (False where there is none)."""
        return self.same is not None and self.same(saved)


def restore_states(generators: list[RngState], saved: list[Any]) -> None:
    """Put each generator back to its saved state (where its cheap test cannot tell it is there)."""
    for generator, state in zip(generators, saved):
        if not generator.unchanged(state):
            generator.set(state)


def wide_array(value: Any) -> np.ndarray:
    """A float64 numpy copy of ``value``, complex128 where it is complex."""
    array = np.asarray(value)
    return np.array(array, dtype=np.complex128 if array.dtype.kind == "c" else np.float64)


#: The key of a ``memo`` (the dict ``check_function`` keeps for one function) under which an
#: adapter's ``call_and_reasons`` may leave what of its call the VJPs can reuse (torch: the
#: inputs and outputs, with autograd's graph); the caller removes it once the VJPs are taken.
FIRST_CALL = "first call"


# MT19937's state in memory: ``uint32_t key[624]; int pos;``
_MT_STATE_BYTES = 624 * 4 + ctypes.sizeof(ctypes.c_int)


class _NumpyState(dict[str, Any]):
    """numpy's global state as ``get_state(legacy=False)`` reads it, with the bytes of its MT19937.

    ``bytes`` is None where they cannot tell the state: another bit generator,
    or a cached normal draw (``has_gauss``), which the next normal draw takes
    without moving the MT19937 state.
    """

    generator: Any = None
    bytes: bytes | None = None


def _mt_bytes(bit_generator: Any) -> bytes:
    return ctypes.string_at(bit_generator.ctypes.state_address, _MT_STATE_BYTES)


def _numpy_state() -> Any:
    state = _NumpyState(np.random.get_state(legacy=False))
    bit_generator = np.random.mtrand.get_bit_generator()
    if type(bit_generator) is np.random.MT19937 and not state.get("has_gauss", 1):
        state.generator, state.bytes = bit_generator, _mt_bytes(bit_generator)
    return state


def _numpy_same(saved: Any) -> bool:
    """Whether numpy's global state is still ``saved``, told from its MT19937 bytes (1 us, not 45).

    Where the saved state had no cached normal draw, the state can only have
    changed by moving the MT19937 state (a normal draw then draws two numbers)
    or by another bit generator taking its place.
    """
    known = getattr(saved, "bytes", None)
    if known is None:
        return False
    bit_generator = np.random.mtrand.get_bit_generator()
    return bit_generator is saved.generator and _mt_bytes(bit_generator) == known


def python_rng_states() -> list[RngState]:
    """numpy's legacy global generator and Python's ``random``.

    numpy's state is read as a dict (``legacy=False``), which is read and put
    back in about half the time of the legacy tuple; ``set_state`` takes both.
    Whether it is still a saved state is told from the bytes of its MT19937.
    """
    return [
        RngState("numpy.random", _numpy_state, np.random.set_state, _numpy_same),
        RngState("random", random.getstate, random.setstate),
    ]


@dataclass
class Target:
    """A loss made ready for the core: everything in float64 vectors.

    Attributes
    ----------
    flat : Flat
        The parameters: names, shapes, ``x0``.
    evaluate : callable
        ``evaluate(x)`` -> the loss's raw output at the float64 vector ``x``.
    gradient : callable or None
        ``gradient()`` -> the framework's autodiff gradient at ``x0`` as a
        float64 vector; None where the framework has none.  Adapters that
        support ``gc.compare`` also accept ``gradient(x)`` for any vector.
    call_grad : callable
        ``call_grad(user_grad_fn)`` calls a handwritten gradient function the
        way the loss is called, at ``x0`` (``call_grad(fn, x)``: at ``x``,
        where supported).
    evaluate_batch : callable or None
        ``evaluate_batch(X)`` -> the losses at the rows of ``X`` (k, n).
    evaluate_complex : callable or None
        For the complex-step method.
    evaluate_along : callable or None
        ``evaluate_along(block, w, s)`` -> the loss's raw output at the point
        equal to ``flat.x0`` but for ``x0[block] + s * w`` on the slice
        ``block`` (as numpy computes it), evaluated without building the
        point as a vector as long as ``x0``; None where the target has no
        such shortcut.
    evaluate_shifted : callable or None
        ``evaluate_shifted(x, idx, shift)`` -> the losses at the points ``x``
        but for ``x[idx_k] + shift_k`` (one moved coordinate each, as numpy
        computes the sum), built by the framework itself rather than as rows
        of a matrix; it may return None (not ready: build the rows).
    evaluate_moved : callable or None
        ``evaluate_moved(i, v)`` -> the loss's raw output at ``flat.x0`` but
        for entry ``i`` set to ``v``, the point built by the target in its
        own pieces (the loss gets its own copy, which it may keep or change);
        what ``evaluate`` returns at that point.  None where the target has
        no such shortcut.
    precision : list of str
        Why evaluations may not be in float64 (each a sentence with a remedy).
    rngs : list of RngState
        Generators to replay before each evaluation.
    """

    flat: Flat
    evaluate: Callable[[np.ndarray], Any]
    gradient: Callable[[], np.ndarray] | None
    call_grad: Callable[[Callable[..., Any]], Any]
    evaluate_batch: Callable[[np.ndarray], np.ndarray] | None = None
    evaluate_complex: Callable[[np.ndarray], Any] | None = None
    evaluate_along: Callable[[slice, np.ndarray, float], Any] | None = None
    evaluate_shifted: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray | None] | None = None
    evaluate_moved: Callable[[int, float], Any] | None = None
    precision: list[str] = field(default_factory=list)
    rngs: list[RngState] = field(default_factory=list)
    framework: str = "numpy"
    #: A picklable ``worker(rows) -> losses`` for process-pool executors, if any.
    worker: Callable[[np.ndarray], np.ndarray] | None = None
    #: False when evaluations write into shared state (variables perturbed in
    #: place): threads of an executor then evaluate one at a time.
    thread_safe: bool = True


class Adapter:
    """Base class: one subclass per framework, in ``gradcheck_core.adapters``."""

    #: Framework name, as reported and as used in error messages.
    name: str = "?"
    #: Complex parameters are checked as (real part, imaginary part); an adapter
    #: that sets this converts its framework's gradient convention to that pair.
    supports_complex: bool = False
    #: :meth:`jvp_function` builds a JVP this framework can differentiate again.
    differentiates_jvp: bool = False

    # -- values -----------------------------------------------------------------
    def is_leaf(self, value: Any) -> bool:
        """True for this framework's arrays/tensors/variables."""
        raise NotImplementedError

    def to_numpy(self, value: Any) -> np.ndarray:
        """A leaf (or a loss output) as a numpy array, dtype preserved."""
        raise NotImplementedError

    def collect(self, params: Any) -> Any:
        """Turn containers the framework owns (modules, models) into dicts."""
        return params

    def flatten(self, params: Any) -> Flat:
        return flatten(
            self.collect(params),
            is_leaf=self.is_leaf,
            to_numpy=self.to_numpy,
            complex_ok=self.supports_complex,
        )

    def gradient_vector(self, grad: Any, flat: Flat) -> np.ndarray:
        """A handwritten gradient (any accepted form) as a flat float64 vector."""
        return gradient_vector(grad, flat, to_numpy=to_numpy, is_leaf=_any_array)

    def gradient_is_values(self, grad: Any) -> bool:
        """True when ``grad=`` holds the gradient's values rather than a function to call."""
        return not callable(grad)

    def rng_states(self) -> list[RngState]:
        """Generators the framework's code may draw from (besides numpy/random)."""
        return []

    # -- the check --------------------------------------------------------------
    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
        """Prepare ``loss`` for evaluation at float64 vectors; restore on exit."""
        raise NotImplementedError
        yield  # pragma: no cover

    def vjp(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        cotangents: list[np.ndarray | None],
        memo: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """Reverse-mode products ``u^T J`` of ``fn`` at ``inputs`` (float64).

        Returns one numpy array per input.  Frameworks without autodiff raise.
        ``memo``: what the adapter kept from its first call of ``fn`` (its
        ``call_and_reasons``), where it keeps anything; adapters that keep
        nothing ignore it.
        """
        raise InputError(
            f"{self.name} has no automatic differentiation: pass the vector-Jacobian "
            "product yourself with vjp=..."
        )

    def as_parameter(self, value: Any) -> Any:
        """The value the core perturbs for an input ``value`` of a function (itself by default)."""
        return value

    def like(self, original: Any, value: Any) -> Any:
        """``value`` laid out in memory as ``original`` is (where the framework has layouts)."""
        return value

    def take(self, value: Any, mask: np.ndarray) -> Any:
        """The entries of ``value`` where ``mask`` is True, as a 1-d value of the framework."""
        return np.asarray(self.to_numpy(value))[mask]

    def put(self, value: Any, mask: np.ndarray, entries: Any) -> Any:
        """A copy of ``value`` with ``entries`` written where ``mask`` is True."""
        out = np.array(self.to_numpy(value), dtype=np.result_type(np.asarray(entries), np.float64))
        out[mask] = np.asarray(entries)
        return out

    def forget_compilations(self) -> None:
        """Drop what the framework compiled during a check, where keeping it could harm the user."""

    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        """Evaluate ``fn(*inputs)`` and return its outputs as numpy arrays."""
        out = fn(*inputs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(self.to_numpy(o)) for o in outs]

    # -- second order -----------------------------------------------------------
    def directional_gradient(
        self, loss: Callable[..., Any], params: Any, w: np.ndarray
    ) -> Callable[..., Any]:
        """``<grad loss, w>`` as a differentiable loss of this framework, called like ``loss``.

        Its autodiff gradient is the Hessian-vector product ``H w`` (double
        backward); its values at perturbed points are the projected gradient
        that finite differences differentiate.  ``w`` is a flat float64 vector
        in the flatten order of ``params``.
        """
        raise InputError(
            f"{self.name} has no automatic differentiation, so order=2 needs your gradient as "
            "grad= (a function called like the loss) and your Hessian as hessian= (a matrix or "
            "a function returning one) or hvp= (hvp(p, w) returning the Hessian-vector product)."
        )

    def hvp_function(self, loss: Callable[..., Any], params: Any, w: np.ndarray) -> Callable[..., Any] | None:
        """A cheaper ``H w`` than differentiating :meth:`directional_gradient`, called like ``loss``.

        None (the default) means: differentiate the directional gradient
        (reverse over reverse).  JAX returns forward over reverse.
        """
        return None

    def vjp_function(
        self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
    ) -> tuple[Callable[..., Any], list[Any], list[int]]:
        """The VJP of ``fn`` as a differentiable function of this framework.

        Returns ``(vjp_fn, extra, floating)``: ``vjp_fn(*inputs, *extra)``
        returns the VJP for each floating input (positions ``floating``),
        where ``extra`` holds one cotangent (a framework value made from
        ``cotangents``) per floating output.  A backward pass that cannot be
        differentiated raises :class:`~gradcheck_core.errors.NotTwiceDifferentiable`
        when ``vjp_fn`` is called.
        """
        raise InputError(
            f"{self.name} has no automatic differentiation, so the derivatives of a VJP "
            "(check_function with order=2) cannot be computed."
        )

    def jvp_function(
        self, fn: Callable[..., Any], inputs: list[Any], tangents: dict[int, np.ndarray]
    ) -> tuple[Callable[..., Any], list[Any]]:
        """The JVP of ``fn`` as a function this framework can differentiate again.

        Returns ``(jvp_fn, extra)``: ``jvp_fn(*inputs, *extra)`` returns the
        tangent of each output of ``fn`` for the tangents ``extra`` (one per
        key of ``tangents``, the positions of the floating inputs, in order).
        Only adapters with :attr:`differentiates_jvp` have it.
        """
        raise InputError(
            f"the derivatives of a JVP (forward over forward) are not available for {self.name}; "
            "check the derivatives of the VJP instead (check_function with order=2)."
        )


def _any_array(value: Any) -> bool:
    """Leaf test for gradient values, which may come from any framework."""
    return isinstance(value, np.ndarray) or framework_of(value) is not None
