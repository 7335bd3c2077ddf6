"""The TensorFlow adapter: tensors, ``tf.Variable``s and ``tf.Module``s.

Two ways of calling the loss are supported:

* ``loss(p)``: ``p`` has the structure of ``params`` and holds float64
  ``tf.Tensor``\\ s (the user's variables are never touched).  TensorFlow does
  not promote dtypes, so a loss that mixes these with float32 tensors of its
  own fails in float64; the adapter then falls back to the parameters' own
  dtypes and says so in ``Target.precision``.
* ``loss()``: the loss reads ``tf.Variable``\\ s; they are perturbed with
  ``assign`` and their original bytes are assigned back when the check ends,
  also after an exception or Ctrl-C.  A float32 variable cannot hold a float64
  value, which is reported with the remedy.

Gradients come from ``tf.GradientTape``; :meth:`TensorFlowAdapter.vjp` and
:meth:`TensorFlowAdapter.jvp` (``tf.autodiff.ForwardAccumulator``) serve
:func:`gradcheck_core.check_function`, ``tf.custom_gradient`` functions
included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from gradcheck_core.errors import InputError

from .base import Adapter, RngState, Target, python_rng_states, takes_argument, wide_array

__all__ = ["ADAPTER", "TensorFlowAdapter"]

_FULL = ("float64", "complex128")
# Errors TensorFlow raises when a float64 tensor meets a float32 one.
_DTYPE_ERRORS = (tf.errors.InvalidArgumentError, TypeError, ValueError)


def global_generator_state() -> list[RngState]:
    """TensorFlow's global ``tf.random.Generator``, if the program created one.

    Creating it here would itself change the global state, so a generator that
    does not exist yet is left alone.
    """
    try:
        from tensorflow.python.ops import stateful_random_ops
    except ImportError:  # pragma: no cover - layout of a future release
        return []
    gen = getattr(stateful_random_ops, "global_generator", None)
    if gen is None:
        return []
    return [
        RngState(
            "tf.random.global_generator",
            lambda: gen.state.numpy().copy(),
            lambda s: gen.state.assign(s),
        )
    ]


class TensorFlowAdapter(Adapter):
    """TensorFlow: eager tensors, variables and modules, differentiated by ``GradientTape``."""

    name = "tensorflow"
    #: Complex values are checked as (real part, imaginary part).  TensorFlow's
    #: gradient of a real loss with respect to ``z = x + iy`` is already
    #: ``dL/dx + 1j dL/dy`` (as in PyTorch), and a complex ``output_gradients``
    #: ``u`` of an output ``y`` stands for ``sum(Re(conj(u) * y))``: no conversion.
    supports_complex = True

    # -- values -----------------------------------------------------------------
    def is_leaf(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable))

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            try:
                return np.array(value.numpy())
            except AttributeError:
                raise InputError(
                    f"{value!r} is a symbolic tensor (inside tf.function or a graph); "
                    "gradcheck-core works eagerly: call the check outside tf.function."
                ) from None
        return np.asarray(value)

    def collect(self, params: Any) -> Any:
        """A ``tf.Module`` becomes a dict of its trainable variables, keyed by path."""
        if isinstance(params, tf.Module):
            return module_variables(params)
        return params

    def rng_states(self) -> list[RngState]:
        return global_generator_state()

    # -- the check --------------------------------------------------------------
    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
        flat = self.flatten(params)
        rngs = python_rng_states() + self.rng_states()
        if takes_argument(loss):
            yield self._functional(loss, flat, float64, rngs)
            return
        variables = []
        for leaf, value in zip(flat.leaves, flat.values):
            if not isinstance(value, tf.Variable):
                raise InputError(
                    f"loss takes no argument, so parameter {leaf.name!r} must be a tf.Variable "
                    f"that the loss reads, but it is a {type(value).__name__}, which cannot be "
                    "changed in place. Make it a tf.Variable, or write the loss as loss(p) and "
                    "read the values from p."
                )
            variables.append(value)
        saved = [v.read_value().numpy().copy() for v in variables]
        narrow = [leaf for leaf in flat.leaves if leaf.dtype not in _FULL]
        precision = []
        if narrow:
            names = ", ".join(repr(leaf.name) for leaf in narrow)
            kinds = "/".join(sorted({leaf.dtype for leaf in narrow}))
            precision.append(
                f"tf.Variable {names} {'is' if len(narrow) == 1 else 'are'} {kinds} and loss() reads "
                f"{'it' if len(narrow) == 1 else 'them'} in place, so every perturbation is rounded to "
                f"{kinds} (such a variable cannot hold a float64 value); create the variables with "
                "dtype=tf.float64, or write the loss as loss(p) to have it evaluated with float64 tensors"
            )

        saved_rngs = [r.get() for r in rngs]

        def put_back() -> None:
            for v, s in zip(variables, saved):
                v.assign(s)

        def write(x: np.ndarray) -> None:
            for v, piece in zip(variables, flat.split(x)):
                v.assign(piece.astype(v.dtype.as_numpy_dtype))

        def at(x: np.ndarray | None) -> None:
            # the point for a gradient: x0 exactly as given, or another point (gc.compare)
            if x is None:
                put_back()
            else:
                write(x)
            _replay(rngs, saved_rngs)

        def evaluate(x: np.ndarray) -> Any:
            write(x)
            return loss()

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            at(x)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for v in variables:
                    tape.watch(v)
                out = loss()
            _require_tensor(out)
            grads = tape.gradient(out, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return _flat_gradient(grads, variables)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            at(x)
            return fn()

        try:
            yield Target(
                flat=flat,
                evaluate=evaluate,
                gradient=gradient,
                call_grad=call_grad,
                precision=precision,
                rngs=rngs,
                framework=self.name,
                thread_safe=False,
            )
        finally:
            put_back()

    def _functional(self, loss: Callable[..., Any], flat: Any, float64: bool, rngs: list[RngState]) -> Target:
        """``loss(p)``: fresh tensors at every point, float64 unless the loss refuses them."""
        precision: list[str] = []
        dtypes = [leaf.dtype for leaf in flat.leaves]
        use64 = float64
        if float64 and any(d != "float64" for d in dtypes):
            use64 = _accepts_float64(loss, flat, rngs)
            if not use64 and _uses_ctc(loss, flat, rngs):
                precision.append(
                    "the loss calls tf.nn.ctc_loss, which computes in float32 whatever it is given "
                    "(TensorFlow's CTC loss casts to float32 and fails on float64 logits), so it was "
                    "evaluated in the parameters' own dtypes; a CTC loss can be checked in float64 "
                    "only through a float64 implementation of the forward algorithm of your own"
                )
            elif not use64:
                precision.append(
                    "the loss mixes the float64 parameter values with tensors of its own in "
                    f"{', '.join(sorted({d for d in dtypes if d != 'float64'}))} and TensorFlow does "
                    "not promote dtypes, so it was evaluated in the parameters' own dtypes; cast the "
                    "data and constants the loss uses to tf.float64 for a float64 check"
                )

        def make(piece: np.ndarray, original: Any) -> tf.Tensor:
            if use64 or np.iscomplexobj(piece):
                return tf.constant(piece)
            return tf.constant(piece, dtype=tf.as_dtype(original.dtype))

        def evaluate(x: np.ndarray) -> Any:
            return loss(flat.unravel(x, make))

        saved_rngs = [r.get() for r in rngs]

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            _replay(rngs, saved_rngs)
            made: list[tf.Tensor] = []

            def keep(piece: np.ndarray, original: Any) -> tf.Tensor:
                t = make(piece, original)
                made.append(t)
                return t

            with tf.GradientTape(watch_accessed_variables=False) as tape:
                p = flat.unravel(flat.x0 if x is None else x, keep)
                for t in made:
                    tape.watch(t)
                out = loss(p)
            _require_tensor(out)
            grads = tape.gradient(out, made, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return _flat_gradient(grads, made)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            _replay(rngs, saved_rngs)
            return fn(flat.unravel(flat.x0 if x is None else x, make))

        def evaluate_complex(z: np.ndarray) -> Any:
            try:
                return loss(flat.unravel(z, lambda piece, _: tf.constant(piece, dtype=tf.complex128)))
            except _DTYPE_ERRORS as exc:
                raise InputError(
                    f"the loss cannot be evaluated on complex tensors ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); use method='richardson' for "
                    "comparable accuracy."
                ) from exc

        return Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            evaluate_complex=evaluate_complex,
            precision=precision,
            rngs=rngs,
            framework=self.name,
        )

    # -- check_function ---------------------------------------------------------
    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
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
        """``u^T J`` of ``fn`` at ``inputs`` (as float64 tensors), one array per input."""
        xs = [_float64_tensor(x) for x in inputs]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for x in xs:
                if _differentiable(x):
                    tape.watch(x)
            out = fn(*xs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(cotangents) != len(outs):
            raise InputError(f"fn returned {len(outs)} outputs but {len(cotangents)} cotangents were given.")
        targets, weights = [], []
        for o, u in zip(outs, cotangents):
            if u is None:
                continue
            _require_tensor(o)
            targets.append(o)
            weights.append(tf.constant(np.asarray(u), dtype=o.dtype))
        grads = tape.gradient(
            targets, xs, output_gradients=weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return [
            wide_array(tf.convert_to_tensor(g).numpy()) if _differentiable(x) else np.zeros(x.shape)
            for g, x in zip(grads, xs)
        ]

    def nondifferentiable_outputs(self, fn: Callable[..., Any], inputs: list[Any]) -> list[str | None]:
        """Why each output of ``fn`` has no derivative the tape will give (None: it has one).

        An output is left out when it is not a tensor, not floating or
        complex (integers, booleans), or when no floating input reaches it
        through the tape (ops registered without a gradient such as
        ``tf.floor``, ``tf.stop_gradient``, a constant, a detour through
        numpy): TensorFlow's gradient is then undefined (None), not zero.
        """
        xs = [_float64_tensor(x) for x in inputs]
        watched = [x for x in xs if _differentiable(x)]
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            for x in watched:
                tape.watch(x)
            out = fn(*xs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        reasons: list[str | None] = []
        for o in outs:
            if not isinstance(o, (tf.Tensor, tf.Variable)):
                reasons.append(f"a {type(o).__name__}, not a tensor")
            elif not _differentiable(o):
                reasons.append(f"{o.dtype.name} values have no derivative")
            elif all(g is None for g in tape.gradient(o, watched)):
                reasons.append(
                    "TensorFlow's gradient of it is None (undefined): no floating input reaches it "
                    "on the gradient tape (ops TensorFlow registers without a gradient such as "
                    "tf.floor and tf.round, tf.stop_gradient, a constant, or a detour through numpy)"
                )
            else:
                reasons.append(None)
        del tape
        return reasons

    def jvp(
        self, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]
    ) -> list[np.ndarray]:
        """``J v`` of ``fn`` at ``inputs`` by forward mode (``tf.autodiff.ForwardAccumulator``).

        ``tangents`` holds one array per input (None: that input does not move).
        """
        xs = [_float64_tensor(x) for x in inputs]
        primals, ts = [], []
        for x, t in zip(xs, tangents):
            if not _differentiable(x):
                continue
            primals.append(x)
            shape = tuple(x.shape)
            ts.append(
                tf.constant(np.zeros(shape) if t is None else np.asarray(t).reshape(shape), dtype=x.dtype)
            )
        try:
            with tf.autodiff.ForwardAccumulator(primals, ts) as acc:
                out = fn(*xs)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            result = []
            for o in outs:
                t = acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                result.append(wide_array(t.numpy()))
        except (LookupError, NotImplementedError) as exc:
            raise InputError(
                f"TensorFlow has no forward mode for this function ({type(exc).__name__}: {exc}); "
                "only its vector-Jacobian products were checked."
            ) from exc
        return result

    # -- second order -------------------------------------------------------------
    def directional_gradient(
        self, loss: Callable[..., Any], params: Any, w: np.ndarray
    ) -> Callable[..., Any]:
        """``<grad loss, w>`` from an inner ``GradientTape``, called like ``loss``.

        The tape of the check around it records the inner gradient, so its
        gradient is the Hessian-vector product (nested tapes).
        """
        pieces = self.flatten(params).split(w)
        if takes_argument(loss):
            return lambda p: projected_gradient(lambda: loss(p), list(self.flatten(p).values), pieces)
        variables = list(self.flatten(params).values)
        return lambda: projected_gradient(loss, variables, pieces)

    def vjp_function(
        self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
    ) -> tuple[Callable[..., Any], list[Any], list[int]]:
        """The VJP of ``fn`` as a TensorFlow function of the inputs and the cotangents."""
        n = len(inputs)
        floating = [i for i, x in enumerate(inputs) if _float64_tensor(x).dtype.is_floating]
        slots = [k for k, u in enumerate(cotangents) if u is not None]
        extra = [tf.constant(np.asarray(cotangents[k], dtype=np.float64)) for k in slots]

        def vjp_of_fn(*args: Any) -> tuple[Any, ...]:
            xs = [_float64_tensor(x) for x in args[:n]]
            wrt = [xs[i] for i in floating]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for x in wrt:
                    tape.watch(x)
                out = fn(*xs)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            targets = [outs[k] for k in slots]
            weights = [tf.cast(tf.reshape(u, tf.shape(o)), o.dtype) for u, o in zip(args[n:], targets)]
            grads = tape.gradient(
                targets, wrt, output_gradients=weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return tuple(grads)

        return vjp_of_fn, extra, floating


def projected_gradient(loss: Callable[[], Any], leaves: list[Any], pieces: list[np.ndarray]) -> Any:
    """``<d loss() / d leaves, w>`` with the inner gradient recorded by any enclosing tape.

    Parameters
    ----------
    loss : callable
        Reads ``leaves`` (tensors or variables) and returns a scalar tensor.
    leaves : list
        What to differentiate with respect to.
    pieces : list of numpy.ndarray
        ``w``, one array per leaf.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for t in leaves:
            tape.watch(t)
        out = loss()
    _require_tensor(out)
    grads = tape.gradient(out, leaves, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    terms = [
        tf.reduce_sum(g * tf.constant(piece.reshape(tuple(g.shape)), dtype=g.dtype))
        for g, piece in zip(grads, pieces)
    ]
    return tf.add_n(terms)


# -- helpers ----------------------------------------------------------------------
def module_variables(module: tf.Module) -> dict[str, tf.Variable]:
    """The trainable variables of a ``tf.Module`` keyed by attribute path.

    ``self.layers = [v0, v1]`` gives ``layers[0]``, ``layers[1]``; ``self.d =
    {"x": v}`` gives ``d.x``.  Variables reachable by two paths appear once.
    """
    out: dict[str, tf.Variable] = {}
    seen: set[int] = set()
    try:
        items = list(
            module._flatten(predicate=lambda v: isinstance(v, tf.Variable) and v.trainable, with_path=True)
        )
    except Exception:  # pragma: no cover - private API changed: fall back to variable names
        items = [((v.name.split(":")[0],), v) for v in module.trainable_variables]
    for path, var in items:
        if id(var) in seen:
            continue
        seen.add(id(var))
        name = ""
        for part in path:
            name = f"{name}[{part}]" if isinstance(part, int) else (f"{name}.{part}" if name else str(part))
        base, k = name or var.name.split(":")[0], 2
        while name in out or not name:
            name = f"{base}#{k}"
            k += 1
        out[name] = var
    if not out:
        raise InputError(
            f"the tf.Module {module.name!r} has no trainable variables to check; pass the "
            "variables themselves, or a dict of them."
        )
    return out


def _float64_tensor(value: Any) -> tf.Tensor:
    """An input of ``check_function`` as a tensor, floating ones in float64, complex in complex128."""
    if isinstance(value, tf.Variable):
        value = value.read_value()
    t = tf.convert_to_tensor(value)
    if t.dtype.is_floating:
        return tf.cast(t, tf.float64)
    if t.dtype.is_complex:
        return tf.cast(t, tf.complex128)
    return t


def _accepts_float64(loss: Callable[..., Any], flat: Any, rngs: list[RngState]) -> bool:
    """One trial call of ``loss(p)`` with float64 tensors; False on a dtype clash.

    The random generators are put back afterwards, so the trial leaves no trace.
    Any other exception is the loss's own and reaches the caller as it is (it
    is not retried: a loss that fails once and then works would be
    nondeterministic).
    """
    saved = [r.get() for r in rngs]
    try:
        loss(flat.unravel(flat.x0, lambda piece, _: tf.constant(piece)))
    except _DTYPE_ERRORS as exc:
        text = str(exc).lower()
        if "double" in text or "float64" in text or "dtype" in text:
            return False
        raise
    finally:
        for r, s in zip(rngs, saved):
            r.set(s)
    return True


def _uses_ctc(loss: Callable[..., Any], flat: Any, rngs: list[RngState]) -> bool:
    """True if the traced loss (in the parameters' own dtypes) holds a CTC loss.

    ``tf.nn.ctc_loss`` builds its graph under a ``ctc_loss`` name scope (dense
    labels) or calls a ``CTCLoss`` kernel (sparse labels).  The random
    generators are put back afterwards, so the trace leaves no trace.
    """
    saved = [r.get() for r in rngs]
    try:
        specs = flat.unravel(
            flat.x0, lambda piece, original: tf.TensorSpec(piece.shape, tf.as_dtype(original.dtype))
        )
        graph = tf.function(loss).get_concrete_function(specs).graph
    except Exception:  # not traceable: no location to name
        return False
    finally:
        _replay(rngs, saved)
    return any("ctc" in op.name.lower() or "ctc" in op.type.lower() for op in graph.get_operations())


def _replay(rngs: list[RngState], saved: list[Any]) -> None:
    for r, s in zip(rngs, saved):
        r.set(s)


def _require_tensor(out: Any) -> None:
    if not isinstance(out, (tf.Tensor, tf.Variable)):
        raise InputError(
            f"the loss returned a {type(out).__module__}.{type(out).__qualname__}, not a tf.Tensor, "
            "so TensorFlow recorded nothing to differentiate (a .numpy() call or a numpy function "
            "left TensorFlow). Keep the loss in TensorFlow operations, or pass your gradient "
            "as grad=."
        )


def _flat_gradient(grads: list[Any], wrt: list[Any]) -> np.ndarray:
    """The tape's gradients in flatten order; a complex value's as its real, then imaginary part."""
    parts = []
    for g, x in zip(grads, wrt):
        if isinstance(g, tf.IndexedSlices):
            g = tf.convert_to_tensor(g)
        array = np.asarray(g.numpy()).reshape(-1)
        if x.dtype.is_complex:
            parts += [np.real(array).astype(np.float64), np.imag(array).astype(np.float64)]
        else:
            parts.append(np.asarray(array, dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def _differentiable(t: Any) -> bool:
    """True for floating and complex tensors (the ones the tape differentiates)."""
    return bool(t.dtype.is_floating or t.dtype.is_complex)


ADAPTER = TensorFlowAdapter()
