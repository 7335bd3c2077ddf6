"""The JAX adapter: pure functions of pytrees, checked in float64.

JAX arrays are immutable, so a loss is always a function of its parameters,
``loss(p)``, where ``p`` has the structure of ``params`` (dicts, lists,
tuples, namedtuples and other registered pytree nodes, nested).  Every
evaluation receives float64 arrays, also when the user's parameters are
float32: JAX's 64-bit mode is switched on around each call the checker makes
(a thread-local setting, so the user's global flag is never touched and
nothing needs restoring, whatever the loss raises).

Speed comes from JAX itself: the loss of a flat float64 vector is compiled
once with :func:`jax.jit` when JAX can trace it, and the full sweep evaluates
blocks of perturbed points with ``jax.jit(jax.vmap(...))`` (checked on its
first rows against single calls).  A loss that cannot be traced (it calls
``float()`` on a value, converts to numpy, branches in Python on a value) is
simply called as it is, point by point.

:meth:`JaxAdapter.vjp`, :meth:`JaxAdapter.jvp` and :meth:`JaxAdapter.call`
serve :func:`gradcheck_core.check_function`, which checks the derivative rules
of ``jax.custom_jvp`` and ``jax.custom_vjp`` functions input by input.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from .base import Adapter, Target, python_rng_states, takes_argument

__all__ = ["JaxAdapter", "ADAPTER", "x64"]

#: Scratch memory (bytes) one batched call may use; larger chunks are split.
#: On a CPU, blocks that stay in cache run two to three times faster per row
#: than large ones; accelerators want large blocks.
BATCH_MEMORY = {"cpu": 4 << 20, "gpu": 512 << 20}
#: Rows of a first batched call that measures the scratch memory per row,
#: where the compiled single evaluation could not tell it.
PROBE_ROWS = 8
#: Fewer rows than this are evaluated one by one with the compiled loss: a
#: batch size of its own would cost a compilation that a short loop does not.
MIN_BATCH = 32
#: Relative difference allowed between a compiled and a plain evaluation at
#: the same point (XLA fuses and reorders; anything larger means the compiled
#: function is not the same function, e.g. a Python side effect was frozen).
COMPILED_RTOL = 1e-9


# -- 64-bit mode -------------------------------------------------------------
@contextlib.contextmanager
def _global_x64() -> Iterator[None]:
    """Old JAX without a scoped switch: flip the global flag, then put it back."""
    before = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def x64(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A context in which JAX creates and computes float64 values.

    Uses the scoped, thread-local switch of the installed JAX
    (``jax.enable_x64`` or ``jax.experimental.enable_x64``), so the global
    ``jax_enable_x64`` flag is left exactly as it was.

    Parameters
    ----------
    enabled : bool
        False gives a context that changes nothing.
    """
    if not enabled:
        return contextlib.nullcontext()
    scoped = getattr(jax, "enable_x64", None)
    if scoped is not None and not isinstance(scoped, bool):
        return scoped(True)
    try:
        from jax.experimental import enable_x64  # JAX < 0.6

        return enable_x64()
    except ImportError:  # pragma: no cover - no scoped switch at all
        return _global_x64()


# -- pytrees -----------------------------------------------------------------
class _PytreeNode(dict):
    """A registered pytree node seen by the core as a dict of its children.

    The core's flattening walks it like any dict (so its parameters get names
    such as ``enc.w``), and when it rebuilds the structure it calls the type
    with the ``(key, value)`` pairs: :meth:`__new__` then returns the user's
    own node type, rebuilt by JAX, so the loss receives what it expects.
    """

    treedef: Any = None
    #: Positions of children that are None (kept, not parameters).
    fixed: dict[int, Any] = {}
    count: int = 0

    def __new__(cls, items: Any = ()) -> Any:  # called by the core's rebuild
        values = iter(v for _, v in (items.items() if isinstance(items, Mapping) else items))
        children = [cls.fixed[i] if i in cls.fixed else next(values) for i in range(cls.count)]
        return cls.treedef.unflatten(children)

    @classmethod
    def wrap(cls, node: Any, expand: Callable[[Any], Any]) -> Any:
        """The dict form of ``node``, or None if ``node`` is no pytree node."""
        tu = jax.tree_util
        try:
            pairs, treedef = tu.tree_flatten_with_path(node, is_leaf=lambda v: v is not node)
        except Exception:
            return None
        if tu.treedef_is_leaf(treedef):
            return None
        fixed = {i: v for i, (_, v) in enumerate(pairs) if v is None}
        sub = type(type(node).__name__, (cls,), {"treedef": treedef, "fixed": fixed, "count": len(pairs)})
        out = dict.__new__(sub)
        dict.__init__(out, [(_key_name(p[-1]), expand(v)) for p, v in pairs if v is not None])
        return out


def _key_name(key: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _expand(value: Any) -> Any:
    """``value`` with every registered pytree node the core does not know as a dict.

    Containers without such nodes inside are returned as they are.
    """
    if isinstance(value, (jax.Array, np.ndarray, np.generic, float, int, str, bytes)) or value is None:
        return value
    if isinstance(value, Mapping):
        items = [(k, _expand(v)) for k, v in value.items()]
        if all(new is value[k] for k, new in items):
            return value
        try:
            return type(value)(items)
        except TypeError:
            return dict(items)
    if isinstance(value, (list, tuple)):
        children = [_expand(v) for v in value]
        if all(new is old for new, old in zip(children, value)):
            return value
        if _is_namedtuple(value):
            return type(value)(*children)
        return type(value)(children) if type(value) in (list, tuple) else list(children)
    node = _PytreeNode.wrap(value, _expand)
    return value if node is None else node


# -- what a loss computes in -------------------------------------------------
def _floating_narrow(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 8


def _narrow_operations(jaxpr: Any, tainted_in: list[bool]) -> list[tuple[str, str]]:
    """``(primitive, dtype)`` of every operation on parameter-dependent values
    whose result is a float narrower than float64 (nested jaxprs included)."""
    tainted: set[Any] = set()
    for var, flag in zip(jaxpr.invars, tainted_in):
        if flag:
            tainted.add(var)
    found: list[tuple[str, str]] = []
    for eqn in jaxpr.eqns:
        flags = [_is_var(v) and v in tainted for v in eqn.invars]
        if not any(flags):
            continue
        for sub in _sub_jaxprs(eqn.params):
            if len(sub.invars) == len(flags):
                found.extend(_narrow_operations(sub, flags))
            elif len(sub.invars) == len(flags) - 1:  # cond: the first operand is the branch index
                found.extend(_narrow_operations(sub, flags[1:]))
        for out in eqn.outvars:
            tainted.add(out)
            dtype = getattr(getattr(out, "aval", None), "dtype", None)
            if dtype is not None and _floating_narrow(dtype):
                found.append((eqn.primitive.name, np.dtype(dtype).name))
    return found


def _is_var(v: Any) -> bool:
    return not hasattr(v, "val")  # Literals carry a value, Vars do not


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Any]:
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                yield inner


def _captured_narrow_arrays(fn: Callable[..., Any]) -> list[str]:
    """Names of float32/float16 arrays the function reads from its closure or globals."""
    try:
        cv = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return []
    out = []
    for name, value in {**cv.globals, **cv.nonlocals}.items():
        try:
            leaves = jax.tree_util.tree_leaves(value)
        except Exception:
            continue
        if len(leaves) > 100:
            continue
        dtypes = {
            np.dtype(leaf.dtype).name
            for leaf in leaves
            if isinstance(leaf, (jax.Array, np.ndarray)) and _floating_narrow(leaf.dtype)
        }
        if dtypes:
            out.append(f"{name} ({', '.join(sorted(dtypes))})")
    return out


def _precision_sentence(loss: Callable[..., Any], out_dtype: Any, ops: list[tuple[str, str]]) -> str | None:
    """Why a loss fed float64 values still computes in lower precision, and the remedy."""
    narrow_out = out_dtype is not None and _floating_narrow(out_dtype)
    if not narrow_out and not ops:
        return None
    if ops:
        names = list(dict.fromkeys(p for p, _ in ops))  # in the order they first occur
        dtypes = sorted({d for _, d in ops})
        what = (
            f"{len(ops)} operation(s) on values that depend on the parameters compute in "
            f"{'/'.join(dtypes)} (first {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        )
    else:
        what = f"the loss computes in {np.dtype(out_dtype).name}"
    captured = _captured_narrow_arrays(loss)
    held = f" (the loss reads {', '.join(captured[:5])} from outside)" if captured else ""
    return (
        f"{what} although the loss was given float64 parameters with JAX's 64-bit mode on: something "
        "in the loss casts to a lower precision, such as .astype(jnp.float32), dtype=jnp.float32, "
        f"or a dtype taken from an array created as float32{held}. Arrays created inside the "
        "loss follow the 64-bit mode; make captured data float64 (jnp.asarray(X, jnp.float64) "
        "inside the loss, or numpy float64 arrays) and drop fixed float32 casts to have the "
        "check run in float64"
    )


# -- the adapter -------------------------------------------------------------
class JaxAdapter(Adapter):
    """Gradient checks for JAX: ``jax.grad`` against finite differences in float64."""

    name = "jax"
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
        return _expand(params)

    def gradient_vector(self, grad: Any, flat: Flat) -> np.ndarray:
        """A handwritten gradient (pytree nodes included) as a flat float64 vector."""
        return super().gradient_vector(_expand(grad), flat)

    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
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
        run = _Runner(loss, flat, float64=float64, jit=self.jit, vectorize=self.vectorize)
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
        )
        run.setup(target)
        yield target

    # -- check_function ------------------------------------------------------
    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        """``fn(*inputs)``; every array leaf of the result, as numpy, in pytree order.

        ``fn`` is compiled with :func:`jax.jit` (once per function) when it can
        be traced; otherwise it is called as it is.
        """
        with x64():
            compiled = _compiled(fn)
            out = None
            if compiled is not None:
                try:
                    out = compiled(*inputs)
                except Exception:
                    _forget(fn)
                    compiled = None
            if compiled is None:
                out = fn(*inputs)
            return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]

    def vjp(self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]) -> list[np.ndarray]:
        """Reverse-mode products ``u^T J`` of ``fn`` at ``inputs`` converted to float64.

        Parameters
        ----------
        fn : callable
            ``fn(*inputs)``; may be a ``jax.custom_vjp`` or ``jax.custom_jvp``
            function.  Its result may be any pytree of arrays.
        inputs : list
            Its arguments; floating arrays are differentiated, others held fixed.
        cotangents : list of numpy arrays or None
            One per output leaf (pytree order); None means zero.

        Returns
        -------
        list of numpy.ndarray
            One float64 array per input (zeros for inputs that are not floating).
        """
        with x64():
            args, pos, f = _differentiable(fn, inputs)
            out, pullback = jax.vjp(f, *[args[i] for i in pos])
            leaves, treedef = jax.tree_util.tree_flatten(out)
            if len(cotangents) != len(leaves):
                raise InputError(f"fn has {len(leaves)} outputs but {len(cotangents)} cotangents were given.")
            cts = [_seed_like(leaf, u) for leaf, u in zip(leaves, cotangents)]
            try:
                grads = pullback(jax.tree_util.tree_unflatten(treedef, cts))
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"the backward pass of fn failed ({type(exc).__name__}: {exc}). A custom_vjp "
                    "backward rule must return a tuple with one cotangent per input of fn, each "
                    "with that input's shape and dtype."
                ) from exc
            result = [np.zeros(np.shape(a)) for a in inputs]
            for i, g in zip(pos, grads):
                result[i] = np.asarray(g, dtype=np.float64)
            return result

    def jvp(self, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]) -> list[np.ndarray]:
        """Forward-mode products ``J v`` of ``fn`` at ``inputs`` converted to float64.

        Parameters
        ----------
        fn : callable
            ``fn(*inputs)``; a ``jax.custom_jvp`` function uses its rule.
        inputs : list
            Its arguments; floating arrays get tangents, others held fixed.
        tangents : list of numpy arrays or None
            One per input; None (or a non-floating input) means zero.

        Returns
        -------
        list of numpy.ndarray
            One float64 output tangent per output leaf (pytree order).

        Raises
        ------
        InputError
            When ``fn`` has no forward mode (a ``jax.custom_vjp`` function);
            check its vector-Jacobian products instead.
        """
        if len(tangents) != len(inputs):
            raise InputError(f"fn has {len(inputs)} inputs but {len(tangents)} tangents were given.")
        with x64():
            args, pos, f = _differentiable(fn, inputs)
            primals = [args[i] for i in pos]
            tans = [_seed_like(args[i], tangents[i]) for i in pos]
            try:
                _, out_tangents = jax.jvp(f, tuple(primals), tuple(tans))
            except TypeError as exc:
                if "custom_vjp" in str(exc):
                    raise InputError(
                        "fn is a jax.custom_vjp function, which has no forward mode (JAX cannot "
                        "compute its Jacobian-vector products): only its vector-Jacobian products, "
                        "the custom backward rule, can be checked."
                    ) from exc
                raise InputError(f"jax.jvp could not differentiate fn ({type(exc).__name__}: {exc}).") from exc
            except Exception as exc:
                raise InputError(f"jax.jvp could not differentiate fn ({type(exc).__name__}: {exc}).") from exc
            return [
                np.zeros(np.shape(t)) if _is_float0(t) else np.asarray(t, dtype=np.float64)
                for t in jax.tree_util.tree_leaves(out_tangents)
            ]


_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """``jax.jit(fn)``, made once per function; None once it proved untraceable."""
    try:
        if fn not in _COMPILED:
            _COMPILED[fn] = jax.jit(fn)
        return _COMPILED[fn]
    except TypeError:  # not weakly referenceable, or not hashable
        return None


def _forget(fn: Callable[..., Any]) -> None:
    with contextlib.suppress(TypeError):
        _COMPILED[fn] = None


def _is_float0(value: Any) -> bool:
    return getattr(value, "dtype", None) == jax.dtypes.float0


def _is_floating(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


def _seed_like(value: Any, seed: np.ndarray | None) -> Any:
    """A tangent or cotangent for ``value``: ``seed`` in its dtype, zeros for None."""
    if not _is_floating(value):
        return np.zeros(np.shape(value), dtype=jax.dtypes.float0)
    if seed is None:
        return jnp.zeros_like(value)
    seed = np.asarray(seed)
    if seed.size != np.size(value):
        raise InputError(f"a seed of shape {seed.shape} was given for an output of shape {np.shape(value)}.")
    return jnp.asarray(seed.reshape(np.shape(value)), dtype=value.dtype)


def _differentiable(fn: Callable[..., Any], inputs: list[Any]) -> tuple[list[Any], list[int], Callable[..., Any]]:
    """Inputs with floating arrays in float64, their positions, and ``fn`` of those alone."""
    args = [jnp.asarray(a, dtype=jnp.float64) if _is_floating(a) else a for a in inputs]
    pos = [i for i, a in enumerate(args) if _is_floating(a)]
    if not pos:
        raise InputError("fn has no floating input to differentiate; pass float arrays (e.g. jnp.float32 or float64).")

    def f(*floats: Any) -> Any:
        full = list(args)
        for i, v in zip(pos, floats):
            full[i] = v
        return fn(*full)

    return args, pos, f


class _Runner:
    """The loss as a function of one flat vector, compiled where possible."""

    def __init__(self, loss: Callable[..., Any], flat: Flat, *, float64: bool, jit: bool, vectorize: bool) -> None:
        self.loss = loss
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

    # -- building blocks -----------------------------------------------------
    def make(self, piece: Any, original: Any) -> Any:
        dtype = getattr(original, "dtype", None)
        if self.float64 or dtype is None or piece.dtype == dtype:
            return piece
        return piece.astype(dtype)

    def of_vector(self, v: Any) -> Any:
        return self.loss(self.flat.unravel(v, self.make))

    def scalar_of_vector(self, v: Any) -> Any:
        return jnp.reshape(self.of_vector(v), ())

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
        states = [(r, r.get()) for r in python_rng_states()]
        try:
            with x64(self.float64):
                v0 = self.vector(self.flat.x0)
                fn = jax.jit(self.of_vector)
                try:
                    traced = fn.trace(v0)
                except Exception:
                    return  # evaluated as it is, point by point
                if self.float64:
                    self.narrow_ops = _narrow_operations(traced.jaxpr.jaxpr, [True])
                self.traceable = True
                if self.use_jit:
                    for r, s in states:
                        r.set(s)
                    try:
                        compiled = traced.lower().compile()
                        start = time.perf_counter()
                        jax.block_until_ready(compiled(self.compiled_input(self.flat.x0)))
                        self.row_seconds = time.perf_counter() - start  # until batches are timed
                        self.single, self.compiled = compiled, True
                    except Exception:
                        self.traceable = False
                    else:
                        with contextlib.suppress(Exception):  # not every backend reports it
                            self.row_scratch = float(compiled.memory_analysis().temp_size_in_bytes)
        finally:
            for r, s in states:
                r.set(s)
            if self.use_vmap and self.traceable:
                target.evaluate_batch = self.evaluate_batch

    def _note_precision(self, out: Any) -> None:
        """On the first evaluation: say why the loss is not computed in float64."""
        self.noted = True
        self.out_dtype = getattr(out, "dtype", np.float64)
        if self.float64:
            sentence = _precision_sentence(self.loss, getattr(out, "dtype", None), self.narrow_ops)
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
        with x64(self.float64):
            out = self.single(self.compiled_input(x) if self.compiled else self.vector(x))
        if not self.noted:
            self._note_precision(out)
        return out

    def evaluate_complex(self, z: np.ndarray) -> Any:
        with x64(True):
            v = jax.device_put(np.asarray(z, dtype=np.complex128), self.device)
            return self.loss(self.flat.unravel(v))

    def call_grad(self, fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
        with x64(self.float64):
            return fn(self.flat.unravel(self.vector(self.flat.x0 if x is None else x), self.make))

    def gradient(self, x: np.ndarray | None = None) -> np.ndarray:
        with x64(self.float64):
            grad = jax.grad(self.scalar_of_vector)
            if self.compiled:
                grad = jax.jit(grad)
            try:
                g = grad(self.vector(self.flat.x0 if x is None else x))
            except Exception as exc:
                raise InputError(
                    f"jax.grad could not differentiate the loss ({type(exc).__name__}: {exc}). With "
                    "grad=None the loss must be written in jax.numpy throughout (no float(), "
                    "np.asarray() or Python if/while on values); otherwise pass your gradient as grad=."
                ) from exc
            return np.asarray(g, dtype=np.float64)

    def evaluate_batch(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if self.vmapped is None and (self.batch_failed or len(rows) < MIN_BATCH):
            return self._loop(rows)
        if self.vmapped is None:
            first = self._try_batch(rows)
            if first is None:
                self.batch_failed = True  # from now on: point by point
                return self._loop(rows)
        else:
            first = np.empty(0)
        out = np.empty(len(rows))
        out[: len(first)] = first
        step = max(1, min(len(rows), self.max_rows))
        with x64(self.float64):
            for start in range(len(first), len(rows), step):
                part = rows[start : start + step]
                out[start : start + len(part)] = self._padded(part)
        return out

    # -- batches -------------------------------------------------------------
    def _loop(self, rows: np.ndarray) -> np.ndarray:
        states = [(r, r.get()) for r in python_rng_states()]
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            for r, s in states:
                r.set(s)
            out[k] = float(np.asarray(self.evaluate(row), dtype=np.float64).reshape(()))
        return out

    def _executable(self, batch: Any) -> Any:
        """The vectorised loss compiled for ``batch``'s shape (cached per size)."""
        size = int(batch.shape[0])
        if size not in self.executables:
            start = time.perf_counter()
            self.executables[size] = self.vmapped.lower(batch).compile()
            self.compile_seconds = time.perf_counter() - start
        return self.executables[size]

    def _try_batch(self, rows: np.ndarray) -> np.ndarray | None:
        """Compile the vectorised loss and check its first two rows against single calls.

        Returns the losses at the rows it evaluated (the first ones), or None
        when the loss cannot be vectorised.  Scratch memory per row (from the
        compiled single evaluation, else from a first small block) sets how
        many rows a call evaluates at once.
        """
        budget = BATCH_MEMORY.get(_platform(self.device), BATCH_MEMORY["gpu"])
        if self.row_scratch is not None:
            self.max_rows = max(1, int(budget // max(self.row_scratch, 8.0 * self.flat.n)))
            rows = rows[: self.max_rows]
        else:
            rows = rows[:PROBE_ROWS]
        states = [(r, r.get()) for r in python_rng_states()]
        try:
            with x64(self.float64):
                self.vmapped = jax.jit(jax.vmap(self.scalar_of_vector))
                batch = self.compiled_input(rows)
                compiled = self._executable(batch)
                got = np.asarray(compiled(batch), dtype=np.float64).reshape(-1)
                self.timed_sizes.add(len(rows))
                if self.row_scratch is None:
                    try:
                        scratch = float(compiled.memory_analysis().temp_size_in_bytes) / len(rows)
                    except Exception:  # not every backend reports it
                        scratch = 0.0
                    self.max_rows = max(1, int(budget // max(scratch, 8.0 * self.flat.n)))
            for r, s in states:
                r.set(s)
            want = self._loop(rows[:2])
        except Exception:
            self.vmapped = None
            return None
        finally:
            for r, s in states:
                r.set(s)
        if not _same(got[:2], want, self.out_dtype):
            self.vmapped = None
            return None
        return got

    def _padded(self, part: np.ndarray) -> np.ndarray:
        """Evaluate rows, padded to a compiled block size where that is cheaper than compiling."""
        k = len(part)
        size = min((s for s in self.executables if s >= k), default=k)
        if (size - k) * self.row_seconds > self.compile_seconds:
            size = k
        if size > k:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        batch = self.compiled_input(part)
        start = time.perf_counter()
        out = np.asarray(self._executable(batch)(batch), dtype=np.float64)[:k]
        if size in self.timed_sizes:  # the first call of a size includes compiling it
            self.row_seconds = (time.perf_counter() - start) / size
        self.timed_sizes.add(size)
        return out


def _same(a: Any, b: Any, dtype: Any = np.float64) -> bool:
    """Two evaluations of a loss computed in ``dtype`` agree (up to XLA's reordering of sums)."""
    try:
        a, b = np.asarray(a), np.asarray(b)
    except Exception:
        return False
    if a.shape != b.shape:
        return False
    if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    try:
        eps = float(np.finfo(dtype).eps)
    except (TypeError, ValueError):
        eps = float(np.finfo(np.float32).eps)
    rtol = max(COMPILED_RTOL, 1e4 * eps)
    a64, b64 = a.astype(np.complex128), b.astype(np.complex128)
    return bool(np.all(np.abs(a64 - b64) <= rtol * np.maximum(np.abs(a64), np.abs(b64)) + 1e-300))


def _platform(device: Any) -> str:
    try:
        return str((device or jax.devices()[0]).platform)
    except Exception:
        return "cpu"


def _common_device(values: list[Any]) -> Any:
    """The one device all parameters live on, or None (JAX's default)."""
    devices = set()
    for v in values:
        try:
            devices |= set(v.devices())
        except Exception:
            return None
    return next(iter(devices)) if len(devices) == 1 else None


ADAPTER = JaxAdapter()
