"""VJP/JVP plumbing for :func:`gradcheck_core.check_function`.

:meth:`JaxAdapter.vjp`, :meth:`JaxAdapter.jvp` and :meth:`JaxAdapter.call`
serve :func:`gradcheck_core.check_function`, which checks the derivative rules
of ``jax.custom_jvp`` and ``jax.custom_vjp`` functions input by input.  This
module holds what they share: ``fn`` as a function of its floating inputs in
float64, tangents and cotangents shaped like the values they seed, one
compiled ``jax.jit(fn)`` per function, and its JVP and VJP compiled as one
program each (:func:`compiled_products`), with the operation-by-operation
``jax.jvp``/``jax.vjp`` where they cannot be compiled.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcheck_core.errors import InputError, ReverseModeUnsupported
from gradcheck_core.flatten import Flat

from ..base import wide_array
from .promote import promoted

__all__ = [
    "REVERSE_MODE_HINT",
    "as_pair_gradient",
    "compiled_products",
    "differentiable",
    "directional_gradient",
    "float64_inputs",
    "forget_jit",
    "forget_products",
    "hvp_function",
    "is_float0",
    "jit_once",
    "jvp_tangent",
    "no_reverse_mode",
    "seed_like",
    "vjp_by_forward_mode",
    "vjp_cotangent",
    "vjp_function",
]

_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def jit_once(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """``jax.jit(fn)``, made once per function; None once it proved untraceable.

    Parameters
    ----------
    fn : callable
        The function to compile (with the float32 data it captures in
        float64, :func:`.promote.promoted`).

    Returns
    -------
    callable or None
        The cached compiled function; None after :func:`forget_jit` or when
        ``fn`` cannot be cached (not weakly referenceable, or not hashable).
    """
    try:
        if fn not in _COMPILED:
            _COMPILED[fn] = jax.jit(promoted(fn))
        return _COMPILED[fn]
    except TypeError:  # not weakly referenceable, or not hashable
        return None


_PRODUCTS: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[int, ...]], Any]] = (
    weakref.WeakKeyDictionary()
)


def compiled_products(fn: Callable[..., Any], kind: str, pos: tuple[int, ...]) -> Callable[..., Any] | None:
    """One compiled program per function for its JVPs (``kind="jvp"``) or VJPs (``"vjp"``).

    Run operation by operation, a JVP or VJP compiles every operation of
    ``fn`` on its own (dozens for a special function); compiled whole it is
    one program, kept with ``fn`` for the next check.

    Parameters
    ----------
    fn : callable
        The function under check.
    kind : str
        ``"jvp"``: the program maps ``(args, tangents)`` to the output
        tangents; ``"vjp"``: ``(args, cotangents)`` to the input cotangents,
        the cotangents one per output leaf (None for zero), each the
        conjugate of the core's (what :func:`vjp_cotangent` seeds with).
    pos : tuple of int
        The positions of the floating inputs.

    Returns
    -------
    callable or None
        The program; None where ``fn`` cannot be kept (not weakly
        referenceable or hashable) or proved untraceable
        (:func:`forget_products`).
    """
    try:
        programs = _PRODUCTS.setdefault(fn, {})
    except TypeError:
        return None
    key = (kind, pos)
    if key not in programs:
        programs[key] = jax.jit(_jvp_of(fn, pos) if kind == "jvp" else _vjp_of(fn, pos))
    return programs[key]


def forget_products(fn: Callable[..., Any], kind: str, pos: tuple[int, ...]) -> None:
    """Remember that ``fn``'s compiled ``kind`` program failed: it runs operation by operation from now on."""
    with contextlib.suppress(TypeError):
        _PRODUCTS.setdefault(fn, {})[(kind, pos)] = None


def _of_floats(fn: Callable[..., Any], args: list[Any], pos: tuple[int, ...]) -> Callable[..., Any]:
    def f(*floats: Any) -> Any:
        full = list(args)
        for i, v in zip(pos, floats, strict=False):
            full[i] = v
        return fn(*full)

    return f


def _jvp_of(fn: Callable[..., Any], pos: tuple[int, ...]) -> Callable[..., Any]:
    wide = promoted(fn)

    def products(args: list[Any], tangents: tuple[Any, ...]) -> Any:
        return jax.jvp(_of_floats(wide, args, pos), tuple(args[i] for i in pos), tangents)[1]

    return products


def _vjp_of(fn: Callable[..., Any], pos: tuple[int, ...]) -> Callable[..., Any]:
    wide = promoted(fn)

    def products(args: list[Any], cotangents: list[Any]) -> Any:
        out, pullback = jax.vjp(_of_floats(wide, args, pos), *[args[i] for i in pos])
        leaves, treedef = jax.tree_util.tree_flatten(out)
        if len(cotangents) != len(leaves):
            raise InputError(f"fn has {len(leaves)} outputs but {len(cotangents)} cotangents were given.")
        cts = [_seeded(leaf, u) for leaf, u in zip(leaves, cotangents, strict=True)]
        return pullback(jax.tree_util.tree_unflatten(treedef, cts))

    return products


def _seeded(value: Any, seed: Any) -> Any:
    """:func:`seed_like` inside a compiled program (``seed`` a traced array or None)."""
    if not _is_floating(value):
        return np.zeros(np.shape(value), dtype=jax.dtypes.float0)
    if seed is None:
        return jnp.zeros_like(value)
    return jnp.reshape(seed, jnp.shape(value)).astype(value.dtype)


def forget_jit(fn: Callable[..., Any]) -> None:
    """Remember that ``fn`` cannot be compiled: :func:`jit_once` gives None from now on.

    Parameters
    ----------
    fn : callable
        A function whose compiled version failed.
    """
    with contextlib.suppress(TypeError):
        _COMPILED[fn] = None


REVERSE_MODE_HINT = (
    "JAX cannot differentiate a lax.while_loop (or a lax.fori_loop whose bounds are traced "
    "values) in reverse mode: the number of iterations is not known when the backward pass is "
    "built. This is a limit of JAX, not an error in the derivative. Write the loop with lax.scan "
    "or lax.fori_loop with Python-int bounds to get reverse mode, or check forward mode"
)


def no_reverse_mode(exc: BaseException) -> ReverseModeUnsupported | None:
    """A :class:`ReverseModeUnsupported` for JAX's while_loop error, None for any other error.

    Parameters
    ----------
    exc : BaseException
        What ``jax.vjp`` or ``jax.grad`` raised.
    """
    if isinstance(exc, ValueError) and "Reverse-mode differentiation does not work" in str(exc):
        return ReverseModeUnsupported(f"{REVERSE_MODE_HINT} (JAX says: {str(exc).rstrip('.')})")
    return None


def is_float0(value: Any) -> bool:
    """True for JAX's ``float0`` tangents (those of integer and boolean values).

    Parameters
    ----------
    value : Any
        A tangent or cotangent.
    """
    return getattr(value, "dtype", None) == jax.dtypes.float0


def _is_floating(value: Any) -> bool:
    """True for real floating and complex arrays: the values JAX differentiates."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def _is_complex(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.complexfloating))


def _wide(value: Any) -> Any:
    """A floating array in float64, a complex one in complex128."""
    return jnp.asarray(value, dtype=jnp.complex128 if _is_complex(value) else jnp.float64)


# Complex values.  The core's convention for a real scalar ``phi`` of a complex
# value ``z = x + iy`` is the pair ``dphi/dx + 1j dphi/dy``; a complex output
# ``y`` with cotangent ``u`` stands for ``phi = sum(Re(conj(u) * y))``.  JAX's
# reverse mode transposes the linear map ``t -> a t + b conj(t)`` without
# conjugating, so its pullback of ``c`` is ``a c + conj(b c)``, and jax.grad of
# a real loss is ``dphi/dx - 1j dphi/dy``, the conjugate of the pair (see the
# JAX FAQ on complex differentiation).  Hence: seed the pullback with ``conj(u)``
# and conjugate what it returns.  Forward mode needs no conversion: a complex
# tangent ``v`` is the direction ``(Re v, Im v)`` and ``jax.jvp`` returns the
# output's derivative along it.
def vjp_cotangent(output: Any, u: np.ndarray | None) -> Any:
    """The cotangent to hand ``jax.vjp``'s pullback for the core's cotangent ``u`` of ``output``.

    Parameters
    ----------
    output : array
        The output the cotangent belongs to.
    u : numpy.ndarray or None
        The core's cotangent (None: zero).

    Returns
    -------
    array
        ``conj(u)`` in ``output``'s dtype (``float0`` zeros for an integer output).
    """
    return seed_like(output, None if u is None else np.conj(u))


def as_pair_gradient(g: Any) -> np.ndarray:
    """A pullback's result for one input in the core's convention, as float64 or complex128.

    Parameters
    ----------
    g : array
        What ``jax.vjp``'s pullback returned for that input (seeded by
        :func:`vjp_cotangent`).

    Returns
    -------
    numpy.ndarray
        ``conj(g)``: ``dphi/dx + 1j dphi/dy`` for a complex input, the
        real gradient for a real one.
    """
    array = np.asarray(g)
    if array.dtype.kind == "c":
        return np.conj(array).astype(np.complex128)
    return np.asarray(array, dtype=np.float64)


def vjp_by_forward_mode(
    f: Callable[..., Any], primals: list[Any], cotangents: list[np.ndarray | None]
) -> list[np.ndarray]:
    """``u^T J`` from forward mode, one ``jax.jvp`` per input coordinate (batched with ``jax.vmap``).

    For functions JAX differentiates in forward mode only (``lax.while_loop``
    with a value-dependent stop): the derivative of ``sum(Re(conj(u) * y))``
    along every coordinate (real and imaginary parts of a complex input).

    Parameters
    ----------
    f : callable
        ``f(*primals)``, as from :func:`differentiable`.
    primals : list of arrays
        Its floating (and complex) arguments.
    cotangents : list of numpy.ndarray or None
        One per output leaf (pytree order); None means zero.

    Returns
    -------
    list of numpy.ndarray
        One per primal, in the core's convention (complex128 pairs for complex primals).
    """
    result = []
    for i, x in enumerate(primals):
        n = int(np.size(x))
        eye = np.eye(n).reshape((n, *np.shape(x)))
        parts = [eye, 1j * eye] if _is_complex(x) else [eye]
        columns = []
        for basis in parts:

            def along(t: Any, i: int = i) -> Any:
                tangents = [jnp.zeros_like(p) if k != i else t.astype(p.dtype) for k, p in enumerate(primals)]
                return jax.jvp(f, tuple(primals), tuple(tangents))[1]

            out = jax.tree_util.tree_leaves(jax.vmap(along)(jnp.asarray(basis)))
            total = np.zeros(n)
            for t, u in zip(out, cotangents, strict=True):
                if u is None or is_float0(t):
                    continue
                t = np.asarray(t).reshape(n, -1)
                total += np.real(np.conj(np.asarray(u).reshape(1, -1)) * t).sum(axis=1)
            columns.append(total.reshape(np.shape(x)))
        result.append(columns[0] + 1j * columns[1] if len(columns) == 2 else columns[0])
    return result


def jvp_tangent(t: Any) -> np.ndarray:
    """An output tangent of ``jax.jvp`` as float64 (complex128 for a complex output; zeros for float0)."""
    if is_float0(t):
        return np.zeros(np.shape(t))
    array = np.asarray(t)
    return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)


def seed_like(value: Any, seed: np.ndarray | None) -> Any:
    """A tangent or cotangent for ``value``: ``seed`` in its dtype, zeros for None.

    Parameters
    ----------
    value : array
        The input or output the seed belongs to.
    seed : numpy.ndarray or None
        Its entries (any shape with ``value``'s size); None means zero.

    Returns
    -------
    array
        ``float0`` zeros for a value that is neither floating nor complex,
        else a JAX array of ``value``'s shape and dtype.

    Raises
    ------
    InputError
        When ``seed`` has the wrong size.
    """
    if not _is_floating(value):
        return np.zeros(np.shape(value), dtype=jax.dtypes.float0)
    if seed is None:
        return jnp.zeros_like(value)
    seed = np.asarray(seed)
    if seed.size != np.size(value):
        raise InputError(f"a seed of shape {seed.shape} was given for an output of shape {np.shape(value)}.")
    return jnp.asarray(seed.reshape(np.shape(value)), dtype=value.dtype)


def float64_inputs(inputs: list[Any]) -> list[Any]:
    """``inputs`` with every floating array as float64 (complex128 if complex) (call with 64-bit mode on).

    Parameters
    ----------
    inputs : list
        Arguments of a function under check.

    Returns
    -------
    list
        The same arguments; integers, Python numbers and other values unchanged.
    """
    return [_wide(a) if _is_floating(a) else a for a in inputs]


def differentiable(
    fn: Callable[..., Any], inputs: list[Any]
) -> tuple[list[Any], list[int], Callable[..., Any]]:
    """Inputs with floating arrays in float64, their positions, and ``fn`` of those alone.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)``.
    inputs : list
        Its arguments.

    Returns
    -------
    args : list
        ``inputs`` with every floating array converted to float64 (complex
        ones to complex128).
    pos : list of int
        The positions of the floating and complex ones.
    f : callable
        ``f(*floats)``: ``fn`` with the floating inputs replaced, the others
        fixed, and the float32 data it captures in float64.

    Raises
    ------
    InputError
        When no input is floating.
    """
    args = float64_inputs(inputs)
    pos = [i for i, a in enumerate(args) if _is_floating(a)]
    fn = promoted(fn)
    if not pos:
        raise InputError(
            "fn has no floating input to differentiate; pass float arrays (e.g. jnp.float32 or float64)."
        )
    return args, pos, _of_floats(fn, args, tuple(pos))


# -- second order ------------------------------------------------------------------


def _scalar(loss: Callable[..., Any]) -> Callable[[Any], Any]:
    def scalar(p: Any) -> Any:
        return jnp.reshape(loss(p), ())

    return scalar


def _dot(a: Any, b: Any) -> Any:
    terms = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.sum(x * y), a, b))
    return sum(terms, jnp.zeros(()))


def directional_gradient(flat: Flat, loss: Callable[..., Any], w: np.ndarray) -> Callable[[Any], Any]:
    """``<jax.grad(loss)(p), w>``: its ``jax.grad`` is the Hessian-vector product (reverse over reverse).

    Parameters
    ----------
    flat : Flat
        The flattened parameters; ``w`` is a vector in its order.
    loss : callable
        ``loss(p)``.
    w : numpy.ndarray
        The direction.
    """
    w_tree = flat.unravel(w)

    def projected(p: Any) -> Any:
        return _dot(jax.grad(_scalar(loss))(p), w_tree)

    return projected


def hvp_function(flat: Flat, loss: Callable[..., Any], w: np.ndarray) -> Callable[[Any], Any]:
    """``p -> H(p) w`` by forward over reverse (``jax.jvp`` of ``jax.grad``).

    A loss built on a ``jax.custom_vjp`` function has no forward mode: there
    the product comes from reverse over reverse (``jax.grad`` of ``<grad, w>``).
    """
    w_tree = flat.unravel(w)

    def product(p: Any) -> Any:
        tangent = jax.tree_util.tree_map(lambda x, v: jnp.asarray(v, dtype=jnp.result_type(x)), p, w_tree)
        try:
            return jax.jvp(jax.grad(_scalar(loss)), (p,), (tangent,))[1]
        except TypeError as exc:
            if "custom_vjp" not in str(exc):
                raise
            return jax.grad(directional_gradient(flat, loss, w))(p)

    return product


def vjp_function(
    fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
) -> tuple[Callable[..., Any], list[Any], list[int]]:
    """The VJP of ``fn`` as a JAX function of the inputs and the cotangents.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)``, any pytree of arrays out.
    inputs : list
        Its arguments.
    cotangents : list of numpy.ndarray or None
        One per output leaf; None for outputs that are not floating.

    Returns
    -------
    vjp_fn, extra, floating
        ``vjp_fn(*inputs, *extra)`` returns the VJP for each floating input
        (positions ``floating``); ``extra`` holds the cotangents of the
        floating outputs as float64 arrays.
    """
    n = len(inputs)
    floating = [i for i, a in enumerate(inputs) if _is_floating(a)]
    slots = [k for k, u in enumerate(cotangents) if u is not None]
    extra = [wide_array(cotangents[k]) for k in slots]

    def vjp_of_fn(*args: Any) -> tuple[Any, ...]:
        xs, us = list(args[:n]), args[n:]
        _, pos, f = differentiable(fn, xs)
        out, pullback = jax.vjp(f, *[jnp.asarray(xs[i], dtype=jnp.float64) for i in pos])
        leaves, treedef = jax.tree_util.tree_flatten(out)
        given = dict(zip(slots, us))
        cts = [
            jnp.reshape(jnp.asarray(given[k], dtype=leaf.dtype), jnp.shape(leaf))
            if k in given
            else seed_like(leaf, None)
            for k, leaf in enumerate(leaves)
        ]
        return tuple(pullback(jax.tree_util.tree_unflatten(treedef, cts)))

    return vjp_of_fn, extra, floating


def jvp_function(
    fn: Callable[..., Any], inputs: list[Any], tangents: dict[int, np.ndarray]
) -> tuple[Callable[..., Any], list[Any]]:
    """The JVP of ``fn`` as a JAX function of the inputs and the tangents.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)``, any pytree of arrays out.
    inputs : list
        Its arguments.
    tangents : dict of int to numpy.ndarray
        One tangent per floating input, keyed by its position.

    Returns
    -------
    jvp_fn, extra
        ``jvp_fn(*inputs, *extra)`` returns the output tangents of ``fn``
        (``jax.jvp``'s second result), differentiable again in both modes;
        ``extra`` holds the tangents as float64 arrays.
    """
    n = len(inputs)
    order = sorted(tangents)
    extra = [np.asarray(tangents[i], dtype=np.float64) for i in order]

    def jvp_of_fn(*args: Any) -> Any:
        xs, ts = list(args[:n]), dict(zip(order, args[n:]))
        _, pos, f = differentiable(fn, xs)
        primals = tuple(jnp.asarray(xs[i], dtype=jnp.float64) for i in pos)
        directions = tuple(
            jnp.reshape(jnp.asarray(ts[i], dtype=jnp.float64), jnp.shape(p)) if i in ts else jnp.zeros_like(p)
            for i, p in zip(pos, primals)
        )
        return jax.jvp(f, primals, directions)[1]

    return jvp_of_fn, extra
