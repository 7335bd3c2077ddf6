"""The loss as a function of one flat float64 vector, compiled where possible.

Speed comes from JAX itself: the loss of a flat float64 vector is compiled
once with :func:`jax.jit` when JAX can trace it, and the full sweep evaluates
blocks of perturbed points in batches (:mod:`.batching`).  A loss that cannot
be traced (it calls ``float()`` on a value, converts to numpy, branches in
Python on a value) is simply called as it is, point by point.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcheck_core.errors import InputError, ReverseModeUnsupported
from gradcheck_core.flatten import Flat

from ..base import Target, python_rng_states
from .autodiff import REVERSE_MODE_HINT, no_reverse_mode
from .batching import BatchedEvaluation
from .callbacks import is_tracing_error, raise_if_users
from .precision import located_causes, narrow_operations, precision_sentence
from .programs import compiled_program
from .promote import mixed_dtypes_error, promoted
from .x64_mode import x64

__all__ = ["Runner"]


class Runner(BatchedEvaluation):
    """The loss as a function of one flat vector, compiled where possible.

    Parameters
    ----------
    loss : callable
        ``loss(p)`` with ``p`` shaped like the flattened parameters.  In
        float64 it is evaluated with the float32 data it captures promoted
        to float64 (:func:`.promote.promoted`).
    flat : Flat
        The flattened parameters.
    float64 : bool
        Evaluate in float64 with JAX's 64-bit mode on; False keeps the
        parameters' own dtypes.
    jit : bool
        Compile the single evaluation when the loss can be traced.
    vectorize : bool
        Offer batched evaluation when the loss can be traced.
    numpy_loss : bool
        The loss is the check's own and computes with numpy values (the
        projections :func:`~gradcheck_core.functions.check_function` builds,
        which call the function under check themselves): it is called as it
        is, point by point, on numpy pieces of the point, with no trace (JAX
        could not make one of it) and no transfer of the whole point.
    """

    def __init__(
        self,
        loss: Callable[..., Any],
        flat: Flat,
        *,
        float64: bool,
        jit: bool,
        vectorize: bool,
        numpy_loss: bool = False,
    ) -> None:
        self.numpy_loss = numpy_loss
        self.loss = promoted(loss) if float64 and not numpy_loss else loss
        self.flat = flat
        self.float64 = float64
        self.use_jit = jit
        self.use_vmap = vectorize
        self.dtype = np.float64 if float64 else np.float32
        self.device = _common_device(flat.values)
        self.on_default_device = self.device is None or self.device == jax.devices()[0]
        self.precision: list[str] = []
        self.single: Callable[[Any], Any] = self.of_vector
        self.compiled = False  # whether ``single`` is the compiled loss
        self.vmapped: Any = None
        self.executables: dict[int, Any] = {}
        self.shifted_executables: dict[int, Any] = {}
        self.shifted_seconds: dict[int, list[float]] = {}  # per point, per block size
        self.shifted_done = 0  # points evaluated by evaluate_shifted
        self.trial_marks: list[int] | None = None  # the budget block's timings when the trial began, ended
        self.fresh_sizes: set[int] = set()  # block sizes compiled during this check
        self.sweep_rows: int | None = None  # the block the rest of this sweep runs at, once chosen
        self.shifted_failed = False
        self.shifted_checked = False
        self.max_rows = 1 << 30
        self.row_scratch: float | None = None
        self.compile_seconds = 0.0
        self.row_seconds = 0.0
        self.timed_sizes: set[int] = set()
        self.target: Target | None = None
        self.traceable = False
        self.batch_failed = False
        self.noted = False
        self.out_dtype: Any = np.float64
        self.narrow_ops: list[tuple[str, str]] = []
        self.narrow_causes: list[str] = []

    # -- building blocks -----------------------------------------------------
    def make(self, piece: Any, original: Any) -> Any:
        """A piece of the flat vector in its parameter's own dtype, unless checking in float64."""
        dtype = getattr(original, "dtype", None)
        if self.float64 or dtype is None or piece.dtype == dtype:
            return piece
        return piece.astype(dtype)

    def of_vector(self, v: Any) -> Any:
        """The loss at the flat vector ``v``."""
        return self.loss(self.flat.unravel(v, self.make))

    def scalar_of_vector(self, v: Any) -> Any:
        """The loss at ``v`` as a 0-d array (what ``jax.grad`` and ``jax.vmap`` need).

        Raises
        ------
        InputError
            When the loss returns a list, tuple or dict instead of one number.
        """
        out = self.of_vector(v)
        if isinstance(out, (list, tuple, dict)):
            raise InputError(
                f"the loss returned a {type(out).__name__} ({_length(out)}), not a scalar; a gradient "
                "check needs one number: return a single value, e.g. jnp.sum(jnp.stack(terms)) for "
                "a list of terms, or the entry you mean (loss[0])."
            )
        return jnp.reshape(out, ())

    def vector(self, x: np.ndarray, dtype: Any = None) -> Any:
        """``x`` as a JAX array on the parameters' device."""
        return jax.device_put(np.asarray(x, dtype=dtype or self.dtype), self.device)

    def compiled_input(self, x: np.ndarray) -> Any:
        """``x`` for a compiled function: numpy goes straight in when the
        parameters live on the default device (several times cheaper per call
        than an explicit transfer)."""
        if self.on_default_device:
            return np.asarray(x, dtype=self.dtype)
        return self.vector(x)

    # -- setup: trace once, compile ----------------------------------------------
    def setup(self, target: Target) -> None:
        """Trace the loss; compile it when it can be traced.

        A loss that JAX can trace (no ``float()``, numpy conversion or Python
        branch on a value) computes the same function compiled or not, so the
        compiled version is used for every evaluation and for the gradient.
        Compiling once is also much cheaper than running an uncompiled loss
        for the first time, when JAX compiles every operation separately.
        """
        self.target = target
        if self.numpy_loss:
            return  # called as it is (see the class)
        states = [(r, r.get()) for r in python_rng_states()]
        try:
            with x64(self.float64):
                v0 = self.vector(self.flat.x0)
                fn = jax.jit(self.of_vector)
                try:
                    traced = fn.trace(v0)
                except Exception as exc:
                    # Evaluated as it is, point by point, when JAX cannot trace it; an
                    # exception of the loss's own (a ValueError) is not retried.
                    raise_if_users(exc)
                    if not (is_tracing_error(exc) or isinstance(exc, TypeError)):
                        raise
                    return
                if self.float64:
                    sources: list[Any] = []
                    self.narrow_ops = narrow_operations(traced.jaxpr.jaxpr, [True], sources)
                    self.narrow_causes = located_causes(sources)
                self.traceable = True
                if self.use_jit:
                    for r, s in states:
                        r.set(s)
                    try:
                        compiled = compiled_program(traced, self.device)
                        start = time.perf_counter()
                        jax.block_until_ready(compiled(self.compiled_input(self.flat.x0)))
                        self.row_seconds = time.perf_counter() - start  # until batches are timed
                        self.single, self.compiled = compiled, True
                    except Exception as exc:
                        raise_if_users(exc)
                        self.traceable = False
                    else:
                        with contextlib.suppress(Exception):  # not every backend reports it
                            self.row_scratch = float(compiled.memory_analysis().temp_size_in_bytes)
        finally:
            for r, s in states:
                r.set(s)
            if self.use_vmap and self.traceable:
                target.evaluate_batch = self.evaluate_batch
                target.evaluate_shifted = self.evaluate_shifted

    def _note_precision(self, out: Any) -> None:
        """On the first evaluation: say why the loss is not computed in float64."""
        self.noted = True
        self.out_dtype = getattr(out, "dtype", np.float64)
        if self.float64:
            sentence = precision_sentence(getattr(out, "dtype", None), self.narrow_ops, self.narrow_causes)
            if sentence:
                self.precision.append(sentence)
        elif any(leaf.dtype != "float64" for leaf in self.flat.leaves):
            self.precision.append(
                "float64=False was passed, so the loss was evaluated with the parameters' own "
                "dtypes and every perturbation was rounded to them; leave float64=True to "
                "evaluate in float64"
            )

    # -- what the core calls -------------------------------------------------
    def evaluate(self, x: np.ndarray) -> Any:
        """The loss at the flat point ``x`` (compiled when it could be)."""
        with x64(self.float64):
            try:
                if self.numpy_loss:
                    out = self.loss(self.flat.unravel(np.asarray(x, dtype=self.dtype), self.make))
                else:
                    out = self.single(self.compiled_input(x) if self.compiled else self.vector(x))
            except TypeError as exc:
                mixed = mixed_dtypes_error(exc) if self.float64 else None
                if mixed is None:
                    raise
                raise mixed from exc
            except Exception as exc:
                raise_if_users(exc)  # Ctrl-C inside a callback stays a KeyboardInterrupt
                raise
        if not self.noted:
            self._note_precision(out)
        return out

    def evaluate_complex(self, z: np.ndarray) -> Any:
        """The loss at the complex point ``z`` (complex-step differences), uncompiled."""
        with x64(True):
            v = jax.device_put(np.asarray(z, dtype=np.complex128), self.device)
            return self.loss(self.flat.unravel(v))

    def call_grad(self, fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
        """The user's gradient function at ``x`` (default: the parameters), given a pytree."""
        with x64(self.float64):
            return fn(self.flat.unravel(self.vector(self.flat.x0 if x is None else x), self.make))

    def gradient(self, x: np.ndarray | None = None) -> np.ndarray:
        """``jax.grad`` of the loss at ``x`` (default: the parameters), flat float64.

        Raises
        ------
        InputError
            When JAX cannot differentiate the loss.
        """
        with x64(self.float64):
            grad = jax.grad(self.scalar_of_vector)
            at = self.vector(self.flat.x0 if x is None else x)
            try:
                if self.compiled:
                    grad = compiled_program(jax.jit(grad).trace(at), self.device)
                g = grad(at)
            except InputError:
                raise
            except Exception as exc:
                raise_if_users(exc)
                if no_reverse_mode(exc) is not None:
                    raise ReverseModeUnsupported(
                        f"{REVERSE_MODE_HINT}: gc.check(loss, params, grad=jax.jacfwd(loss)) checks "
                        f"the forward-mode gradient (JAX says: {exc})"
                    ) from exc
                if not is_tracing_error(exc):
                    raise  # the loss's own exception, as it raised it
                raise InputError(
                    f"jax.grad could not differentiate the loss ({type(exc).__name__}: {exc}). With "
                    "grad=None the loss must be written in jax.numpy throughout (no float(), "
                    "np.asarray() or Python if/while on values); otherwise pass your gradient as grad=."
                ) from exc
            return np.asarray(g, dtype=np.float64)


def _length(value: Any) -> str:
    n = len(value)
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _common_device(values: list[Any]) -> Any:
    """The one device all parameters live on, or None (JAX's default)."""
    devices = set()
    for v in values:
        try:
            devices |= set(v.devices())
        except Exception:
            return None
    return next(iter(devices)) if len(devices) == 1 else None
