"""The JAX adapter: pure functions of pytrees, checked in float64.

JAX arrays are immutable, so a loss is always a function of its parameters,
``loss(p)``, where ``p`` has the structure of ``params`` (dicts, lists,
tuples, namedtuples and other registered pytree nodes, nested).  Every
evaluation receives float64 arrays (:mod:`.x64_mode`); the loss is compiled
and evaluated in batches where JAX can trace it (:mod:`.runner`,
:mod:`.batching`).  :meth:`JaxAdapter.vjp`, :meth:`JaxAdapter.jvp` and
:meth:`JaxAdapter.call` serve :func:`gradcheck_core.check_function`
(:mod:`.autodiff`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from ..base import Adapter, Target, python_rng_states, takes_argument
from .autodiff import (
    as_pair_gradient,
    compiled_products,
    differentiable,
    float64_inputs,
    forget_jit,
    forget_products,
    jit_once,
    jvp_tangent,
    no_reverse_mode,
    seed_like,
    vjp_by_forward_mode,
    vjp_cotangent,
)
from .autodiff import directional_gradient as _directional_gradient
from .autodiff import hvp_function as _hvp_function
from .autodiff import jvp_function as _jvp_function
from .autodiff import vjp_function as _vjp_function
from .callbacks import raise_if_users
from .promote import promoted
from .pytrees import expand, is_gradient_values
from .runner import Runner
from .worker import RowWorker
from .x64_mode import x64

try:  # JAX's registry of its Python-level caches (what jax.clear_caches() clears first)
    from jax._src import util as _jax_util
except ImportError:  # pragma: no cover - a JAX without it: everything is cleared
    _jax_util = None

#: JAX's caches left in place after a check in 32-bit JAX (see
#: :meth:`JaxAdapter.forget_compilations`): single operations' compiled calls,
#: and lowerings and compilations keyed by the program itself (its dtypes included).
KEPT_CACHES = frozenset({"xla_primitive_callable", "_cached_lowering_to_hlo", "_cached_compilation"})

__all__ = ["ADAPTER", "JaxAdapter"]


class JaxAdapter(Adapter):
    """Gradient checks for JAX: ``jax.grad`` against finite differences in float64."""

    name = "jax"
    #: Complex values are checked as (real part, imaginary part); :mod:`.autodiff`
    #: converts JAX's convention (jax.grad gives the conjugate of that pair).
    supports_complex = True
    differentiates_jvp = True
    #: Compile the single evaluation with ``jax.jit`` when the loss allows it.
    jit: bool = True
    #: Evaluate blocks of points with ``jax.jit(jax.vmap(...))`` when the loss allows it.
    vectorize: bool = True

    def is_leaf(self, value: Any) -> bool:
        """True for JAX arrays."""
        return isinstance(value, jax.Array)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A JAX array as numpy, dtype preserved."""
        return np.asarray(value)

    def collect(self, params: Any) -> Any:
        """``params`` with registered pytree nodes (dataclasses, modules) as named dicts."""
        return expand(params)

    def gradient_is_values(self, grad: Any) -> bool:
        """True unless ``grad`` is a function: an Equinox or nnx module given as ``grad=`` is values."""
        return is_gradient_values(grad)

    def gradient_vector(self, grad: Any, flat: Flat) -> np.ndarray:
        """A handwritten gradient (pytree nodes included) as a flat float64 vector."""
        return super().gradient_vector(expand(grad), flat)

    #: :meth:`target` takes ``numpy_loss``: the check's own loss of numpy values.
    takes_numpy_losses = True

    @contextlib.contextmanager
    def target(
        self, loss: Callable[..., Any], params: Any, *, float64: bool = True, numpy_loss: bool = False
    ) -> Iterator[Target]:
        """Prepare ``loss(p)`` for evaluation at float64 vectors.

        Parameters
        ----------
        loss : callable
            ``loss(p)`` with ``p`` shaped like ``params``; a loss without
            arguments is refused (JAX arrays cannot be perturbed in place).
        params : pytree of JAX arrays
            The parameters; they are read, never modified.
        float64 : bool
            Evaluate with JAX's 64-bit mode on (scoped to each call) and
            float64 parameters; False keeps the parameters' own dtypes.
        numpy_loss : bool
            ``loss`` is the check's own and computes with numpy values (the
            projections of :func:`~gradcheck_core.functions.check_function`):
            it is evaluated as it is, on numpy pieces of each point (see
            :class:`.runner.Runner`).

        Yields
        ------
        Target
            With ``gradient`` from ``jax.grad`` and, for a loss JAX can
            trace, compiled single and batched evaluation.
        """
        flat = self.flatten(params)
        if not takes_argument(loss):
            raise InputError(
                "the loss takes no argument, but JAX arrays are immutable: the checker cannot "
                f"perturb {flat.leaves[0].name!r} in place for a loss() that reads it. Write the "
                "loss as a function of the parameters, loss(p), that reads them from p, e.g. "
                "gc.check(lambda p: loss_fn(p, X, y), params)."
            )
        run = Runner(
            loss, flat, float64=float64, jit=self.jit, vectorize=self.vectorize, numpy_loss=numpy_loss
        )
        target = Target(
            flat=flat,
            evaluate=run.evaluate,
            gradient=run.gradient,
            call_grad=run.call_grad,
            evaluate_batch=None,
            evaluate_complex=run.evaluate_complex if float64 else None,
            precision=run.precision,
            rngs=python_rng_states(),
            framework=self.name,
            worker=RowWorker(loss, flat, float64),
        )
        try:
            run.setup(target)
            yield target
        finally:
            self.forget_compilations()

    def forget_compilations(self) -> None:
        """Drop the traces JAX staged during the check, when the user's JAX runs in 32-bit mode.

        JAX's staging caches (its Python-level caches of traced jaxprs) key
        some traces without the 64-bit switch: a function traced under the
        check's scoped 64-bit mode (``jnp.take`` with a numpy index array,
        say) would later be run by the user's 32-bit code with int64 buffers,
        and fail (``RuntimeProgramInputMismatch``).  Those caches are cleared
        after the check, all but :data:`KEPT_CACHES`, which hold compiled
        programs under keys that carry their dtypes.  So the user's compiled
        functions (JAX's compiled-call cache keys the 64-bit switch) and the
        programs of single operations run after the check without being
        compiled again.  (Where JAX lists no staging caches, every cache is
        cleared, at the cost of one recompilation of the user's functions.)
        """
        if bool(jax.config.read("jax_enable_x64")):
            return
        staging = getattr(_jax_util, "_caches", None)
        if staging is None:
            jax.clear_caches()
            return
        for cache, what in list(staging.items()):
            words = str(what).split()
            if len(words) < 2 or words[1] not in KEPT_CACHES:
                cache.cache_clear()

    # -- check_function ------------------------------------------------------
    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        """``fn(*inputs)``; every array leaf of the result, as numpy, in pytree order.

        Floating inputs are given in float64 (as the derivatives see them),
        with JAX's 64-bit mode on.  ``fn`` is compiled with :func:`jax.jit` (once per function) when it can
        be traced; otherwise it is called as it is.  A compiled ``fn`` takes
        numpy inputs (the pieces of a point the check evaluates) as they are:
        the compiled call moves them to the device itself, several times
        faster than making JAX arrays of them first.
        """
        with x64():
            compiled = jit_once(fn)
            out = None
            if compiled is not None:
                try:
                    out = compiled(*_compiled_inputs(inputs))
                except Exception as exc:
                    raise_if_users(exc)
                    forget_jit(fn)
                    compiled = None
            if compiled is None:
                out = promoted(fn)(*float64_inputs(inputs))
            return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]

    def vjp(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        cotangents: list[np.ndarray | None],
        memo: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """Reverse-mode products ``u^T J`` of ``fn`` at ``inputs`` converted to float64.

        Parameters
        ----------
        fn : callable
            ``fn(*inputs)``; may be a ``jax.custom_vjp`` or ``jax.custom_jvp``
            function.  Its result may be any pytree of arrays.
        inputs : list
            Its arguments; floating arrays are differentiated, others held fixed.
        cotangents : list of numpy arrays or None
            One per output leaf (pytree order); None means zero.  A complex
            cotangent ``u`` of a complex output ``y`` stands for the real
            scalar ``sum(Re(conj(u) * y))``.
        memo : dict, optional
            Unused: JAX keeps fn's compiled products with fn instead.

        Returns
        -------
        list of numpy.ndarray
            One float64 array per input (zeros for inputs that are not
            floating); for a complex input the complex128 pair
            ``dphi/dRe + 1j dphi/dIm`` (the conjugate of JAX's own convention).
            For a function JAX differentiates in forward mode only
            (``lax.while_loop``) the products come from ``jax.jvp``, one per
            input coordinate.
        """
        with x64():
            args, pos, f = differentiable(fn, inputs)
            program = compiled_products(fn, "vjp", tuple(pos))
            if program is not None:
                seeds = [None if u is None else np.conj(np.asarray(u)) for u in cotangents]
                try:
                    grads = program(args, seeds)
                except Exception as exc:
                    raise_if_users(exc)
                    forget_products(fn, "vjp", tuple(pos))  # operation by operation, below
                else:
                    return _by_input(inputs, pos, [as_pair_gradient(g) for g in grads])
            try:
                out, pullback = jax.vjp(f, *[args[i] for i in pos])
            except ValueError as exc:
                unsupported = no_reverse_mode(exc)
                if unsupported is not None:
                    raise unsupported from exc
                raise
            leaves, treedef = jax.tree_util.tree_flatten(out)
            if len(cotangents) != len(leaves):
                raise InputError(f"fn has {len(leaves)} outputs but {len(cotangents)} cotangents were given.")
            cts = [vjp_cotangent(leaf, u) for leaf, u in zip(leaves, cotangents, strict=True)]
            try:
                grads = pullback(jax.tree_util.tree_unflatten(treedef, cts))
            except (TypeError, ValueError) as exc:
                if no_reverse_mode(exc):
                    # forward mode only (lax.while_loop): the same products from jax.jvp
                    return _by_input(inputs, pos, vjp_by_forward_mode(f, [args[i] for i in pos], cotangents))
                raise InputError(
                    f"the backward pass of fn failed ({type(exc).__name__}: {exc}). A custom_vjp "
                    "backward rule must return a tuple with one cotangent per input of fn, each "
                    "with that input's shape and dtype."
                ) from exc
            return _by_input(inputs, pos, [as_pair_gradient(g) for g in grads])

    def jvp(
        self, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Forward-mode products ``J v`` of ``fn`` at ``inputs`` converted to float64.

        Parameters
        ----------
        fn : callable
            ``fn(*inputs)``; a ``jax.custom_jvp`` function uses its rule.
        inputs : list
            Its arguments; floating arrays get tangents, others held fixed.
        tangents : list of numpy arrays or None
            One per input; None (or a non-floating input) means zero.  A
            complex input's tangent is complex: the direction (Re, Im).

        Returns
        -------
        list of numpy.ndarray
            One float64 output tangent per output leaf (pytree order),
            complex128 for a complex output.

        Raises
        ------
        InputError
            When ``fn`` has no forward mode (a ``jax.custom_vjp`` function);
            check its vector-Jacobian products instead.
        """
        if len(tangents) != len(inputs):
            raise InputError(f"fn has {len(inputs)} inputs but {len(tangents)} tangents were given.")
        with x64():
            args, pos, f = differentiable(fn, inputs)
            primals = [args[i] for i in pos]
            tans = [seed_like(args[i], tangents[i]) for i in pos]
            program = compiled_products(fn, "jvp", tuple(pos))
            if program is not None:
                try:
                    compiled_tangents = program(args, tuple(tans))
                except Exception as exc:
                    raise_if_users(exc)
                    forget_products(fn, "jvp", tuple(pos))  # operation by operation, below
                else:
                    return [jvp_tangent(t) for t in jax.tree_util.tree_leaves(compiled_tangents)]
            try:
                _, out_tangents = jax.jvp(f, tuple(primals), tuple(tans))
            except TypeError as exc:
                if "custom_vjp" in str(exc):
                    raise InputError(
                        "fn is a jax.custom_vjp function, which has no forward mode (JAX cannot "
                        "compute its Jacobian-vector products): only its vector-Jacobian products, "
                        "the custom backward rule, can be checked."
                    ) from exc
                raise InputError(
                    f"jax.jvp could not differentiate fn ({type(exc).__name__}: {exc})."
                ) from exc
            except Exception as exc:
                raise_if_users(exc)
                raise InputError(
                    f"jax.jvp could not differentiate fn ({type(exc).__name__}: {exc})."
                ) from exc
            return [jvp_tangent(t) for t in jax.tree_util.tree_leaves(out_tangents)]

    # -- second order ----------------------------------------------------------
    def directional_gradient(
        self, loss: Callable[..., Any], params: Any, w: np.ndarray
    ) -> Callable[..., Any]:
        """``<jax.grad(loss), w>`` (see :func:`.autodiff.directional_gradient`)."""
        if not takes_argument(loss):
            return loss  # refused by target() with the reason and the remedy
        return _directional_gradient(self.flatten(params), loss, w)

    def hvp_function(self, loss: Callable[..., Any], params: Any, w: np.ndarray) -> Callable[..., Any] | None:
        """``p -> H(p) w`` by forward over reverse (see :func:`.autodiff.hvp_function`)."""
        if not takes_argument(loss):
            return None
        return _hvp_function(self.flatten(params), loss, w)

    def vjp_function(
        self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
    ) -> tuple[Callable[..., Any], list[Any], list[int]]:
        """The VJP of ``fn`` as a JAX function (see :func:`.autodiff.vjp_function`)."""
        vjp_fn, extra, floating = _vjp_function(fn, inputs, cotangents)
        with x64():
            return vjp_fn, [jax.numpy.asarray(u) for u in extra], floating

    def jvp_function(
        self, fn: Callable[..., Any], inputs: list[Any], tangents: dict[int, np.ndarray]
    ) -> tuple[Callable[..., Any], list[Any]]:
        """The JVP of ``fn`` as a JAX function (see :func:`.autodiff.jvp_function`)."""
        jvp_fn, extra = _jvp_function(fn, inputs, tangents)
        with x64():
            return jvp_fn, [jax.numpy.asarray(t) for t in extra]


ADAPTER = JaxAdapter()


def _by_input(inputs: list[Any], pos: list[int], products: list[np.ndarray]) -> list[np.ndarray]:
    """One array per input: ``products`` at the floating inputs' positions ``pos``, zeros elsewhere."""
    result = [np.zeros(np.shape(a)) for a in inputs]
    for i, g in zip(pos, products, strict=False):
        result[i] = g
    return result


def _compiled_inputs(inputs: list[Any]) -> list[Any]:
    """:func:`.autodiff.float64_inputs` for a compiled function: numpy floating arrays stay numpy (in float64)."""
    out = float64_inputs([None if _numpy_floating(a) else a for a in inputs])
    for k, a in enumerate(inputs):
        if _numpy_floating(a):
            out[k] = np.asarray(a, dtype=np.complex128 if a.dtype.kind == "c" else np.float64)
    return out


def _numpy_floating(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "fc"
