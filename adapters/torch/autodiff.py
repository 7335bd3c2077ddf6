"""VJP/JVP plumbing: autograd on float64 copies of a function's inputs.

The autodiff gradient of a loss is computed with ``torch.autograd.grad``
(:func:`_gradient_of`), so nothing accumulates in ``.grad``.  For
``check_function``, :func:`vjp` runs reverse mode and :func:`jvp` forward mode
(``torch.autograd.forward_ad``) on float64 copies of the inputs, inside a
:func:`~.float64.float64_scope`.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gradcheck_core.errors import InputError, NotTwiceDifferentiable

from ..base import FIRST_CALL, Adapter, takes_argument, wide_array
from .float64 import Promotion, _promotable, _work_dtype, float64_scope

__all__ = [
    "call",
    "call_and_reasons",
    "call_rows",
    "call_with_jvp",
    "directional_gradient",
    "jvp",
    "nondifferentiable_outputs",
    "vjp",
    "vjp_function",
]


def _scalar_tensor(out: Any) -> torch.Tensor:
    """The loss output as a 0-d tensor that autograd can differentiate."""
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"the loss returned a {type(out).__name__}, not a torch tensor, so autograd cannot "
            "differentiate it (a value taken out with .item(), float() or .numpy() has no graph). "
            "Return the tensor itself, or pass your own gradient as grad=."
        )
    if out.numel() != 1:
        raise InputError(
            f"the loss returned a tensor of shape {tuple(out.shape)}, not a scalar; reduce it, "
            "e.g. return loss.mean() or loss.sum()."
        )
    if not out.requires_grad:
        raise InputError(
            "the loss does not depend on the parameters through autograd: its value was computed "
            "under torch.no_grad(), from .detach()ed or .numpy() values, or from tensors other "
            "than the ones checked (a loss(p) must read the parameters from p, e.g. "
            "torch.func.functional_call(model, p, (x,)); a loss() without arguments must read "
            "the tensors passed as params). Fix the loss, or pass your own gradient as grad=."
        )
    return out.reshape(())


def _gradient_of(
    out: torch.Tensor,
    leaves: list[torch.Tensor],
    adapter: Adapter,
    room: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
) -> np.ndarray:
    """autograd's gradient, in flatten order; a complex leaf's ``dL/dRe + 1j dL/dIm`` as its two parts.

    ``room``: a context inside which the flat vector is built, once autograd
    has finished with the point (the working parameters' ``set_aside``,
    which hands ``x0``'s memory back meanwhile).
    """
    grads: list[torch.Tensor | None] = list(torch.autograd.grad(out, leaves, allow_unused=True))
    sizes = [t.numel() * (2 if t.is_complex() else 1) for t in leaves]
    with contextlib.nullcontext() if room is None else room():
        return _flat_gradient(grads, leaves, sizes, adapter)


def _flat_gradient(
    grads: list[torch.Tensor | None], leaves: list[torch.Tensor], sizes: list[int], adapter: Adapter
) -> np.ndarray:
    """The gradients copied into one vector; each is let go once copied (``grads`` is emptied)."""
    flat = np.zeros(sum(sizes))
    start = 0
    for k, (t, size) in enumerate(zip(leaves, sizes)):
        # each gradient is let go once copied: the gradients and the flat vector
        # are not both held whole (at 10M parameters, their float64 bytes again)
        g, grads[k] = grads[k], None
        if g is not None:
            array = np.asarray(adapter.to_numpy(g)).reshape(-1)
            del g
            if t.is_complex():
                flat[start : start + size // 2] = np.real(array)
                flat[start + size // 2 : start + size] = np.imag(array)
            else:
                flat[start : start + size] = array
            del array
        start += size
    return flat


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _inputs(inputs: Sequence[Any], requires_grad: bool, skip: Container[int] = ()) -> list[Any]:
    """Float64 copies of the floating inputs (others as they are), in the inputs' memory layout.

    ``skip``: positions whose values come from elsewhere (their own rows): left as they are.
    """
    out = []
    for i, v in enumerate(inputs):
        if i in skip:
            out.append(v)
        elif isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            t = same_layout_copy(v, _work_dtype(v, True))
            out.append(t.requires_grad_(requires_grad))
        else:
            out.append(v)
    return out


def _plain_layout(t: torch.Tensor) -> bool:
    """True for a contiguous tensor that owns its whole storage from offset 0."""
    return (
        t.layout != torch.strided
        or t.device.type == "meta"
        or (
            t.is_contiguous()
            and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        )
    )


def same_layout_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A detached copy of ``t`` in ``dtype`` with the same sizes, strides and storage offset.

    A view into a larger storage (what ``as_strided`` samples pass) keeps the
    storage around it, so a function that reads through the storage
    (``as_strided`` with an offset) sees what it would see on ``t``.
    """
    if _plain_layout(t):
        return t.detach().to(dtype=dtype, copy=True)
    # Storage-level work, outside any torch function mode (the float64 mode would
    # hand as_strided a float64 copy of the view instead of the view over its storage).
    with torch._C.DisableTorchFunction():
        n = t.untyped_storage().nbytes() // t.element_size()
        storage = t.detach().as_strided((n,), (1,), 0).to(dtype=dtype, copy=True)
        out = torch.empty(0, dtype=dtype, device=t.device)
        return out.set_(storage.untyped_storage(), t.storage_offset(), t.size(), t.stride())


_SPARSE = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def with_layout(original: Any, value: Any) -> Any:
    """``value`` (a tensor shaped like ``original``) in ``original``'s memory layout.

    A sparse ``original`` gives a sparse tensor with its pattern (only its
    specified entries vary).  Tensors with overlapping memory (expanded ones)
    and plain tensors are returned as they are.
    """
    if not isinstance(original, torch.Tensor) or not isinstance(value, torch.Tensor):
        return value
    if original.layout in _SPARSE:
        # the values at the original's specified entries, in its sparse layout
        return value.reshape(original.shape).sparse_mask(original.detach().to(value.dtype))
    if _plain_layout(original):
        return value
    if torch._debug_has_internal_overlap(original) != 0:
        return value
    out = same_layout_copy(original, value.dtype)
    with torch.no_grad():
        out.copy_(value.reshape(out.shape))
    return out


def call(adapter: Adapter, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
    """``fn(*inputs)`` at float64 copies of the inputs, outputs as numpy.

    The copies require grad, so a function that differentiates its own
    inputs (a gradient computed with ``create_graph=True``) works.

    Parameters
    ----------
    adapter : Adapter
        Converts the outputs to numpy (the torch adapter).
    fn : callable
        ``fn(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : list
        The inputs.

    Returns
    -------
    list of numpy.ndarray
        One array per output.
    """
    return [np.asarray(adapter.to_numpy(o)) for o in _outputs(fn, inputs)]


def _outputs(fn: Callable[..., Any], inputs: list[Any], promotion: Promotion | None = None) -> list[Any]:
    """``fn``'s outputs at float64 copies of ``inputs`` that require grad, under the float64 mode."""
    return _forward(fn, inputs, promotion)[1]


def _forward(
    fn: Callable[..., Any], inputs: list[Any], promotion: Promotion | None = None
) -> tuple[list[Any], list[Any]]:
    """The float64 copies of ``inputs`` that require grad, and ``fn``'s outputs there (with their graph)."""
    xs = _inputs(inputs, True)
    with float64_scope(_promotable(xs), promotion), torch.enable_grad():
        return xs, _as_list(fn(*xs))


def call_and_reasons(
    adapter: Adapter, fn: Callable[..., Any], inputs: list[Any], memo: dict[str, Any] | None = None
) -> tuple[list[np.ndarray], list[str | None]]:
    """:func:`call` and :func:`nondifferentiable_outputs` from one call of ``fn``.

    ``memo``, as for :func:`call_rows`: what this call shows about ``fn``
    (whether it needs :class:`~.float64.Float64Mode`) is kept there, for
    :func:`call_rows` to use without a call of its own; and the call's inputs
    and outputs, with autograd's graph (under ``FIRST_CALL``), for
    :func:`vjp` to differentiate without calling ``fn`` again.
    """
    promotion = None if memo is None else memo.setdefault("promotion", Promotion())
    return _first_call(adapter, memo, *_forward(fn, inputs, promotion))


def _first_call(
    adapter: Adapter, memo: dict[str, Any] | None, xs: list[Any], outs: list[Any]
) -> tuple[list[np.ndarray], list[str | None]]:
    """The first call's outputs as numpy and why some are left out; its inputs and outputs kept in ``memo``."""
    if memo is not None:
        memo[FIRST_CALL] = (xs, outs)
    return [np.asarray(adapter.to_numpy(o)) for o in outs], _reasons(outs)


def call_rows(
    adapter: Adapter,
    fn: Callable[..., Any],
    inputs: list[Any],
    rows: dict[int, np.ndarray],
    memo: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """``fn`` at many values of some inputs at once, through ``torch.func.vmap``.

    Parameters
    ----------
    adapter : Adapter
        Converts the outputs to numpy (the torch adapter).
    fn : callable
        ``fn(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : list
        The inputs; those not in ``rows`` are held fixed (float64 copies).
    rows : dict
        Input position -> real values with a leading axis of points, for
        inputs that are plain (contiguous, dense, real) tensors.
    memo : dict, optional
        Kept by the caller between calls for the same ``fn``: holds the
        :class:`~.float64.Promotion` learnt from one plain call of ``fn`` at
        the fixed inputs, so that a function that needs no float64 forcing
        runs under vmap without :class:`~.float64.Float64Mode` (which would
        intercept every torch call of the batching machinery).

    Returns
    -------
    list of numpy.ndarray
        One array per output, with the leading axis of points.

    Raises
    ------
    NotImplementedError
        Where an input in ``rows`` is not a plain real tensor; RuntimeError,
        TypeError where ``fn`` cannot run under vmap (it draws random numbers,
        calls ``.item()``, an operator has no batching rule).
    """
    for i in rows:
        x = inputs[i]
        if (
            not isinstance(x, torch.Tensor)
            or x.is_complex()
            or not _plain_layout(x)
            or x.layout != torch.strided
        ):
            raise NotImplementedError("only plain real tensors are evaluated in rows")
    xs = _inputs(inputs, False, skip=rows)  # (the inputs given as rows are not copied)
    order = sorted(rows)
    points = [
        torch.as_tensor(rows[i], dtype=_work_dtype(inputs[i], True), device=inputs[i].device) for i in order
    ]

    def one(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = list(xs)
        for i, v in zip(order, values):
            args[i] = v
        return tuple(_as_list(fn(*args)))

    promotion = None if memo is None else memo.setdefault("promotion", Promotion())
    if promotion is not None and promotion.needed is None and _promotable(xs):
        # Learnt from one plain call at the fixed inputs: under vmap the mode would
        # intercept every operator of the batching machinery too.
        # (an exception here is left to the vectorised call below, which meets it as it would have)
        with contextlib.suppress(Exception), float64_scope(True, promotion):
            fn(*_inputs(inputs, False))  # (float64 copies of every input, those given as rows too)
    with warnings.catch_warnings(), float64_scope(_promotable(xs), promotion):
        # vectorising is the check's own choice: torch's notes on slow batching rules are not the user's
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        outs = torch.func.vmap(one, randomness="error")(*points)
    return [np.asarray(adapter.to_numpy(o)) for o in outs]


def vjp(
    adapter: Adapter,
    fn: Callable[..., Any],
    inputs: list[Any],
    cotangents: list[np.ndarray | None],
    memo: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """Vector-Jacobian products ``u^T J`` of ``fn`` at float64 copies of ``inputs``.

    Parameters
    ----------
    adapter : Adapter
        Converts the products to numpy (the torch adapter).
    fn : callable
        ``fn(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : list
        The inputs (tensors of any floating dtype).
    cotangents : list of numpy.ndarray or None
        One per output; None leaves that output out.
    memo : dict, optional
        As for :func:`call_and_reasons`: where it holds that call's inputs
        and outputs (:data:`FIRST_CALL`), the products are taken through
        their graph (kept for the next VJP) instead of calling ``fn`` again.

    Returns
    -------
    list of numpy.ndarray
        One float64 array per input, zeros where the input does not
        influence the outputs.
    """
    first = None if memo is None else memo.get(FIRST_CALL)
    xs, outs = _forward(fn, inputs) if first is None else first
    if isinstance(cotangents, np.ndarray):
        cotangents = [cotangents]
    if len(cotangents) != len(outs):
        raise InputError(f"fn returned {len(outs)} output(s) but {len(cotangents)} cotangent(s) were given.")
    ys, us = [], []
    for o, u in zip(outs, cotangents):
        if u is None or not isinstance(o, torch.Tensor) or not o.requires_grad:
            continue
        ys.append(o)
        us.append(torch.as_tensor(np.asarray(u).reshape(tuple(o.shape)), dtype=o.dtype, device=o.device))
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    grads: Sequence[torch.Tensor | None] = [None] * len(wrt)
    if ys and wrt:
        # Outside the float64 mode: torch runs autograd.grad with a function mode taken off
        # the stack while the mode handles the call, so the backward (a Function's own
        # backward included) never ran under it, and entering it cost only time.
        with torch.enable_grad():
            grads = torch.autograd.grad(
                ys, wrt, grad_outputs=us, allow_unused=True, retain_graph=first is not None
            )
    by_input = dict(zip(map(id, wrt), grads))
    result = []
    for x in xs:
        g = by_input.get(id(x)) if isinstance(x, torch.Tensor) else None
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else np.shape(x)
        zero = g is None or g._is_zerotensor()  # a ZeroTensor: torch's symbolic zeros
        result.append(np.zeros(shape) if zero else wide_array(adapter.to_numpy(g)))
    return result


def nondifferentiable_outputs(fn: Callable[..., Any], inputs: list[Any]) -> list[str | None]:
    """Why each output of ``fn`` has no derivative autograd will give (None: it has one).

    An output is non-differentiable when it is not a floating or complex
    tensor, or when autograd does not track it although the inputs require
    grad: ``.detach()``ed, computed under ``no_grad``, or declared so by the
    operator (batch norm's saved mean and inverse std).
    """
    return _reasons(_outputs(fn, inputs))


def _reasons(outs: list[Any]) -> list[str | None]:
    """Why each output is not differentiable (None: it is), for :func:`nondifferentiable_outputs`."""
    reasons: list[str | None] = []
    for o in outs:
        if not isinstance(o, torch.Tensor):
            reasons.append(f"a {type(o).__name__}, not a tensor")
        elif not (o.is_floating_point() or o.is_complex()):
            reasons.append(f"{str(o.dtype).replace('torch.', '')} values have no derivative")
        elif not o.requires_grad:
            reasons.append(
                "autograd does not track it (requires_grad=False while the inputs require grad: "
                "detached, computed without grad, or declared non-differentiable by the operator)"
            )
        else:
            reasons.append(None)
    return reasons


def jvp(
    adapter: Adapter, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]
) -> list[np.ndarray]:
    """Jacobian-vector products ``J v`` of ``fn`` by forward-mode AD.

    Parameters
    ----------
    adapter : Adapter
        Converts the output tangents to numpy (the torch adapter).
    fn : callable
        ``fn(*inputs)``.
    inputs : list
        The inputs.
    tangents : list of numpy.ndarray or None
        One per input (None: that input held fixed).

    Returns
    -------
    list of numpy.ndarray
        One float64 output tangent per output.

    Raises
    ------
    InputError
        Where ``fn`` has no forward-mode derivative (a custom
        ``autograd.Function`` without a ``jvp`` staticmethod, say).
    """
    xs = _inputs(inputs, True)
    try:
        return _dual_call(adapter, fn, xs, tangents, None, graph=False)[1]
    except (RuntimeError, NotImplementedError) as exc:
        raise _no_forward_mode(exc) from exc


def _no_forward_mode(exc: BaseException) -> InputError:
    return InputError(
        f"fn has no forward-mode derivative ({exc}). A custom torch.autograd.Function "
        "needs a jvp staticmethod for forward mode; without one, check its backward "
        "(vector-Jacobian products) only."
    )


def _dual_call(
    adapter: Adapter,
    fn: Callable[..., Any],
    xs: list[Any],
    tangents: list[np.ndarray | None],
    promotion: Promotion | None,
    graph: bool,
) -> tuple[list[Any], list[np.ndarray]]:
    """``fn(*xs)`` with the tangents attached as forward-mode duals: its outputs and their tangents.

    ``xs`` are float64 copies already; only ``fn`` runs in the float64 mode
    (the mode has nothing to widen in making the duals, unpacking the
    tangents or converting them to numpy).  ``graph``: under
    ``torch.enable_grad()``, so that the outputs keep autograd's graph (as
    :func:`call_and_reasons` records it).  Raises what forward mode raises (RuntimeError,
    NotImplementedError) where ``fn`` has no forward-mode derivative.
    """
    import torch.autograd.forward_ad as fwad

    with _dual_level():
        duals = []
        for x, v in zip(xs, tangents):
            if v is None or not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
                duals.append(x)
            else:
                tangent = torch.as_tensor(
                    np.asarray(v).reshape(tuple(x.shape)), dtype=x.dtype, device=x.device
                )
                duals.append(fwad.make_dual(x, tangent))
        with (
            float64_scope(_promotable(xs), promotion),
            torch.enable_grad() if graph else contextlib.nullcontext(),
        ):
            outs = _as_list(fn(*duals))
        found = [(o, fwad.unpack_dual(o).tangent) if isinstance(o, torch.Tensor) else (o, None) for o in outs]
        result = []
        for o, tangent in found:
            if not isinstance(o, torch.Tensor):
                result.append(np.zeros(np.shape(o)))
                continue
            result.append(
                np.zeros(tuple(o.shape)) if tangent is None else wide_array(adapter.to_numpy(tangent))
            )
        return outs, result


def call_with_jvp(
    adapter: Adapter,
    fn: Callable[..., Any],
    inputs: list[Any],
    tangents: list[np.ndarray | None],
    memo: dict[str, Any],
) -> tuple[list[np.ndarray], list[str | None], list[np.ndarray]] | None:
    """:func:`call_and_reasons` and :func:`jvp` from one call of ``fn``, with forward-mode duals.

    The outputs (with their graph, under :data:`FIRST_CALL`) are those of
    the plain call: forward mode computes the tangents beside the values.
    Returns the outputs as numpy, why some are left out, and the output
    tangents; None where ``fn`` has no forward-mode derivative (what forward
    mode raised is left to :func:`jvp` to report), after which the caller
    puts the generators back and makes the plain call.
    """
    promotion = memo.setdefault("promotion", Promotion())
    xs = _inputs(inputs, True)
    try:
        outs, out_tangents = _dual_call(adapter, fn, xs, tangents, promotion, graph=True)
    except (RuntimeError, NotImplementedError):
        return None
    return (*_first_call(adapter, memo, xs, outs), out_tangents)


@contextlib.contextmanager
def _dual_level() -> Iterator[None]:
    """``forward_ad.dual_level()``, quiet about torch's own deprecation notices, one thread at a time.

    torch keeps one forward-mode level for the whole process: a second thread
    entering one while another is open gets "nested forward mode AD is not
    supported", which would read as a function without forward mode.  The
    checks' own levels take turns (:data:`_DUAL_LEVEL_TURN`; reentrant, so a
    function that checks another from inside a level meets torch's error,
    not a deadlock).
    """
    import torch.autograd.forward_ad as fwad

    if not _JVP_DECOMPOSITIONS:
        with warnings.catch_warnings():
            # Forward mode loads its decompositions through torch.jit.script on
            # first use, which warns; load them here, quietly.
            warnings.simplefilter("ignore", DeprecationWarning)
            with contextlib.suppress(ImportError):  # other torch versions
                importlib.import_module("torch._decomp.decompositions_for_jvp")
        _JVP_DECOMPOSITIONS.append(True)
    with _DUAL_LEVEL_TURN, fwad.dual_level():
        yield


# Held while one of the checks' forward-mode levels is open (see _dual_level).
_DUAL_LEVEL_TURN = threading.RLock()

# Holds True once forward mode's decompositions are loaded (once per process).
_JVP_DECOMPOSITIONS: list[bool] = []


# -- second order ------------------------------------------------------------------


def _projected(out: Any, leaves: list[torch.Tensor], pieces: list[np.ndarray]) -> torch.Tensor:
    """``<grad out, w>`` with the graph of the gradient kept (``create_graph=True``)."""
    scalar = _scalar_tensor(out)
    grads = torch.autograd.grad(scalar, leaves, create_graph=True, allow_unused=True)
    # 0 * sum(leaf) keeps the result attached to every leaf: a loss whose
    # gradient is constant has a zero Hessian, not an undifferentiable one.
    attached = (0.0 * (t.real.sum() if t.is_complex() else t.sum()) for t in leaves)
    total = sum(attached, torch.zeros((), dtype=scalar.dtype, device=scalar.device))
    for g, t, piece in zip(grads, leaves, pieces):
        if g is None:
            continue
        w = torch.as_tensor(piece.reshape(tuple(t.shape)), dtype=g.dtype, device=g.device)
        if g.is_complex():  # the pair convention: <(dL/dRe, dL/dIm), (w.real, w.imag)>
            total = total + (g.real * w.real + g.imag * w.imag).sum()
        else:
            total = total + (g * w).sum()
    return total


def directional_gradient(
    adapter: Adapter, loss: Callable[..., Any], params: Any, w: np.ndarray
) -> Callable[..., Any]:
    """``<grad loss, w>`` as a torch loss called like ``loss`` (see :meth:`Adapter.directional_gradient`).

    Its autograd gradient is a double backward: the Hessian-vector product.
    """
    flat = adapter.flatten(params)
    pieces = flat.split(w)
    if takes_argument(loss):

        def projected(p: Any) -> torch.Tensor:
            leaves = list(adapter.flatten(p).values)
            with torch.enable_grad():
                for t in leaves:
                    if not t.requires_grad:
                        t.requires_grad_(True)  # a fresh tensor made for this evaluation
                return _projected(loss(p), leaves, pieces)

        return projected
    tensors: list[torch.Tensor] = list(flat.values)

    def projected_in_place() -> torch.Tensor:
        flags = [t.requires_grad for t in tensors]
        try:
            with torch.enable_grad():
                for t in tensors:
                    if not t.requires_grad:
                        t.requires_grad_(True)
                return _projected(loss(), tensors, pieces)
        finally:
            for t, flag in zip(tensors, flags):
                if t.requires_grad != flag:
                    t.requires_grad_(flag)

    return projected_in_place


def vjp_function(
    adapter: Adapter, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
) -> tuple[Callable[..., Any], list[Any], list[int]]:
    """The VJP of ``fn`` as a differentiable torch function (see :meth:`Adapter.vjp_function`)."""
    n = len(inputs)
    floating = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    slots = [k for k, u in enumerate(cotangents) if u is not None]
    device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    extra = [torch.as_tensor(wide_array(cotangents[k]), device=device) for k in slots]

    def vjp_of_fn(*args: Any) -> tuple[torch.Tensor, ...]:
        xs, us = list(args[:n]), args[n:]
        with torch.enable_grad():
            outs = _as_list(fn(*xs))
            ys, gs = [], []
            for k, u in zip(slots, us):
                o = outs[k]
                if isinstance(o, torch.Tensor) and o.requires_grad:
                    ys.append(o)
                    gs.append(u.to(o.dtype).reshape(o.shape))
            wrt = [xs[i] for i in floating]
            grads: Sequence[torch.Tensor | None] = [None] * len(wrt)
            if ys and any(x.requires_grad for x in wrt):
                grads = torch.autograd.grad(ys, wrt, grad_outputs=gs, create_graph=True, allow_unused=True)
        result = []
        for i, g, x in zip(floating, grads, wrt):
            if g is None or g._is_zerotensor():  # no dependence: its derivatives are zero
                result.append(torch.zeros_like(x))
                continue
            _require_differentiable(g, x, i)
            result.append(g)
        return tuple(result)

    return vjp_of_fn, extra, floating


def _require_differentiable(g: torch.Tensor, x: torch.Tensor, i: int) -> None:
    """Raise :class:`NotTwiceDifferentiable` for a VJP autograd cannot differentiate."""
    node = g.grad_fn
    if node is not None and "Error" in node.name():
        raise NotTwiceDifferentiable(
            f"the VJP for input {i} comes from a backward that autograd refuses to differentiate "
            f"({node.name()}: a Function marked @once_differentiable)"
        )
    if x.requires_grad and not g.requires_grad and bool(torch.any(g != 0)):
        raise NotTwiceDifferentiable(
            f"the VJP for input {i} is not connected to the inputs or the cotangents in autograd's "
            "graph (the backward computes with numpy, .detach() or under torch.no_grad())"
        )
