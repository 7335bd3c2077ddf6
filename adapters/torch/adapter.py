"""The adapter: PyTorch tensors, nn.Parameters and nn.Modules checked against autograd.

Every evaluation runs in float64, whatever the dtype of the model:

* a functional loss ``loss(p)`` receives fresh float64 tensors (on the
  parameters' devices); the user's tensors are never touched; when ``params``
  is an ``nn.Module``, ``loss(m)`` receives the module itself, holding those
  tensors through ``torch.func.functional_call`` (its own parameters are
  never written to);
* a zero-argument loss ``loss()`` that reads an ``nn.Module`` or tensors is
  evaluated by swapping each parameter's ``.data`` for a float64 tensor
  holding the perturbed values, and swapping the original tensor back
  afterwards (the original storage is never written to);
* tensors the loss captured, and tensors it creates, are float64 during an
  evaluation too (:mod:`.float64`).

Everything the check changes is put back when it ends (:mod:`.state`).  The
autodiff gradient is computed with ``torch.autograd.grad``, so nothing
accumulates in ``.grad``, and with the random generators replayed to the
state every evaluation starts from, so dropout draws the same mask for the
gradient as for the differences.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from ..base import Adapter, RngState, Target, python_rng_states, takes_argument
from .autodiff import _gradient_of, _scalar_tensor, with_layout
from .autodiff import call as _call
from .autodiff import call_and_reasons as _call_and_reasons
from .autodiff import call_rows as _call_rows
from .autodiff import call_with_jvp as _call_with_jvp
from .autodiff import directional_gradient as _directional_gradient
from .autodiff import jvp as _jvp
from .autodiff import nondifferentiable_outputs as _nondifferentiable_outputs
from .autodiff import vjp as _vjp
from .autodiff import vjp_function as _vjp_function
from .batching import ModuleParameters, _Batched
from .float64 import Promotion, _has_float64, _precision, _tensor, _work_dtype, float64_scope
from .state import _check_in_place, _contains_module, _module_params, _modules_in, _Snapshot, torch_rng_states
from .worker import RowWorker
from .working import WorkingParameters

__all__ = ["ADAPTER", "TorchAdapter"]


class TorchAdapter(Adapter):
    """PyTorch: tensors, nn.Parameters and nn.Modules; autograd as the reference."""

    name = "torch"
    #: ``.grad`` of a real loss with respect to a complex ``z`` is ``dL/dRe z + 1j * dL/dIm z``
    #: (the conjugate Wirtinger derivative, times 2): exactly the (real, imaginary) pair.
    supports_complex = True
    #: Evaluate the points of a sweep with ``torch.func.vmap`` where the loss allows.
    vmap = True
    #: Largest number of points one vectorised (vmap) call evaluates.
    batch_rows = 512

    # -- values -----------------------------------------------------------------
    def is_leaf(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def to_numpy(self, value: Any) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                raise InputError(
                    f"the loss returned a {type(value).__name__} of {len(value)} values, not one "
                    "scalar; return a single number, e.g. sum(losses) or torch.stack(losses).sum()."
                )
            return np.asarray(value)
        if value.device.type == "meta":
            raise InputError(
                f"a tensor of shape {tuple(value.shape)} is on the 'meta' device, which holds shapes "
                "but no values, so there is nothing to differentiate at; materialise it first "
                "(module.to_empty(device='cpu') and initialise the weights, or create it on the CPU)."
            )
        t = value.detach()
        if t._is_zerotensor():  # an efficient zero gradient (torch.sgn's backward, say) has no storage
            return np.zeros(tuple(t.shape), dtype=_numpy_dtype(t.dtype))
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if t.dtype == torch.bfloat16:
            t = t.float()  # numpy has no bfloat16; float32 holds it exactly
        elif t.dtype == torch.complex32:
            t = t.to(torch.complex64)
        return t.cpu().numpy()

    def collect(self, params: Any) -> Any:
        """Modules become ``{name: parameter}`` dicts of their trainable parameters."""
        if isinstance(params, torch.nn.Module):
            return _module_params(params)
        if not _contains_module(params):
            return params
        if isinstance(params, Mapping):
            return {k: self.collect(v) for k, v in params.items()}
        items = [self.collect(v) for v in params]
        return type(params)(items) if type(params) in (list, tuple) else items

    def rng_states(self) -> list[RngState]:
        return torch_rng_states()

    def gradient_vector(self, grad: Any, flat: Flat) -> np.ndarray:
        """As for every framework, and also a list of tensors in parameter order.

        ``[p.grad for p in model.parameters()]`` is accepted for a module
        (whose parameters are a dict keyed by name) when its shapes match
        the parameters one by one.
        """
        if (
            isinstance(grad, (list, tuple))
            and not hasattr(type(grad), "_fields")
            and not _is_sequence_skeleton(flat)
            and grad
            and all(isinstance(g, (torch.Tensor, np.ndarray)) or g is None for g in grad)
        ):
            names = [leaf.name for leaf in flat.leaves]
            if len(grad) != len(names):
                raise InputError(
                    f"the gradient is a list of {len(grad)} entries, but there are {len(names)} "
                    f"parameters ({', '.join(map(repr, names[:6]))}{', ...' if len(names) > 6 else ''}), "
                    "matched by position; give one gradient per parameter in named_parameters() "
                    "order, or a dict keyed by parameter name."
                )
            for name, g in zip(names, grad):
                if g is None:
                    raise InputError(
                        f"the gradient list has None for parameter {name!r} (a .grad that was never "
                        "computed: the parameter does not reach the loss, or backward() was not run); "
                        "give a zero tensor for it, or leave it out of params."
                    )
            grad = dict(zip(names, grad))
        return super().gradient_vector(grad, flat)

    def loss_closure(self, loss_fn: Callable[..., Any], y_true: Any, y_pred: Any) -> Callable[[Any], Any]:
        """``loss(y_pred)`` for :func:`gradcheck_core.check_loss`.

        torch's own losses (``nn.MSELoss()``, ``F.cross_entropy``) take the
        prediction first; any other callable is called ``loss_fn(y_true, y_pred)``.
        """
        torch_order = isinstance(loss_fn, torch.nn.modules.loss._Loss) or (
            getattr(loss_fn, "__module__", None) == "torch.nn.functional"
        )
        if torch_order:
            return lambda yp: loss_fn(yp, y_true)
        return lambda yp: loss_fn(y_true, yp)

    # -- the check --------------------------------------------------------------
    #: :meth:`target` takes what the caller knows already: ``rng_values`` and ``promotion``.
    target_takes_hints = True

    @contextlib.contextmanager
    def target(
        self,
        loss: Callable[..., Any],
        params: Any,
        *,
        float64: bool = True,
        rng_values: Mapping[str, Any] | None = None,
        promotion: Promotion | None = None,
    ) -> Iterator[Target]:
        """Prepare ``loss`` for evaluation at float64 vectors; restore everything on exit.

        ``rng_values``: the random generators' states by name (as
        :class:`~gradcheck_core.adapters.base.RngState` names them), saved by
        the caller; where it holds every generator, the generators are
        replayed and put back to these states instead of being read again.
        ``promotion``: whether the loss needs :class:`~.float64.Float64Mode`,
        where the caller learnt it from a call of the same code at ``params``
        (default: learnt from the first evaluation).
        """
        flat = self.flatten(params)
        tensors: list[torch.Tensor] = list(flat.values)
        modules = _modules_in(params)
        functional = takes_argument(loss)
        precision = _precision(flat, float64)
        promote = float64 and all(_has_float64(t.device) for t in tensors)
        rngs = self.rng_states() + python_rng_states()
        if not functional:
            _check_in_place(flat)
        names = [r.name for r in rngs]
        given = None if rng_values is None or not set(names) <= set(rng_values) else rng_values
        snapshot = _Snapshot(tensors, modules, rngs, None if given is None else [given[k] for k in names])
        try:
            if functional:
                # torch.func.functional_call swaps tensors into the module: with
                # a module, evaluations take turns (threads of an executor=).
                lock: Any = threading.RLock() if modules else contextlib.nullcontext()
                module = params if isinstance(params, torch.nn.Module) else None
                target = self._functional_target(
                    loss, flat, float64, promote, snapshot, lock, module, promotion
                )
            else:
                target = self._stateful_target(loss, flat, float64, promote, snapshot, modules)
            target.precision = precision
            target.rngs = rngs
            yield target
        finally:
            snapshot.restore()

    def _functional_target(
        self,
        loss: Callable[..., Any],
        flat: Flat,
        float64: bool,
        promote: bool,
        snapshot: _Snapshot,
        lock: Any,
        module: torch.nn.Module | None = None,
        known: Promotion | None = None,
    ) -> Target:
        if module is not None:  # loss(m) receives the module, holding the values
            loss = _module_loss(loss, module)
        work = {id(t): _work_dtype(t, float64) for t in flat.values}
        promotion = Promotion() if known is None else known
        working = _working(flat, [work[id(t)] for t in flat.values])
        x0_bits = flat.x0.copy().view(np.int64)  # x0 as it is outside evaluations, bit for bit

        def make(piece: np.ndarray, original: torch.Tensor) -> torch.Tensor:
            return _tensor(piece, work[id(original)], original.device)

        def evaluate(x: np.ndarray) -> Any:
            if working is not None and x is flat.x0:  # the tensors at x0, without a copy
                with working.at_x0(), lock, float64_scope(promote, promotion):
                    return loss(working.structure())
            moved = None if working is None else _few_moved(x, x0_bits)
            # a point a few entries away from x0 (a sweep's step): those entries written into
            # the working tensors, unless another thread is evaluating with them right now
            if working is not None and moved is not None and working.lock.acquire(blocking=False):
                try:
                    with working.placed(moved, x[moved]), lock, float64_scope(promote, promotion):
                        return loss(working.structure())
                finally:
                    working.lock.release()
            p = flat.unravel(x, make)
            with lock, float64_scope(promote, promotion):
                return loss(p)

        def evaluate_along(block: slice, w: np.ndarray, s: float) -> Any:
            if working is None:
                raise RuntimeError("no working parameters to move")
            with working.moved(block, w, s), lock, float64_scope(promote, promotion):
                return loss(working.structure())

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            leaves: list[torch.Tensor] = []

            def make_leaf(piece: np.ndarray, original: torch.Tensor) -> torch.Tensor:
                t = make(piece, original).requires_grad_(True)
                leaves.append(t)
                return t

            at_x0 = working is not None and x is None
            with working.at_x0() if at_x0 and working is not None else contextlib.nullcontext():
                if at_x0 and working is not None:  # leaves sharing the working tensors' memory
                    leaves = [t.detach().requires_grad_(True) for t in working.tensors]
                    shared = iter(leaves)
                    p = flat.unravel(flat.x0, lambda piece, original: next(shared))
                else:
                    p = flat.unravel(flat.x0 if x is None else x, make_leaf)
                snapshot.replay()
                with lock, torch.enable_grad():
                    with float64_scope(promote):
                        out = _scalar_tensor(loss(p))
                    # (the backward outside the mode: see the note in .autodiff.vjp)
                    room = working.set_aside if at_x0 and working is not None else None
                    return _gradient_of(out, leaves, self, room)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            p = flat.unravel(flat.x0 if x is None else x, make)
            snapshot.replay()
            with lock, float64_scope(promote):
                return fn(p) if module is None else _module_loss(fn, module)(p)

        evaluate_complex = None
        if promote and not flat.has_complex:

            def evaluate_complex(z: np.ndarray) -> Any:
                p = flat.unravel(z, lambda piece, o: _tensor(piece, torch.complex128, o.device))
                with lock, float64_scope(True):
                    return loss(p)

        batch = _Batched(self, loss, flat, evaluate, snapshot, promote, promotion)
        worker = RowWorker(
            loss,
            flat,
            float64,
            promote,
            shares_modules=not isinstance(lock, contextlib.nullcontext),
            states=(
                snapshot.rng_value("torch"),
                snapshot.rng_value("numpy.random"),
                snapshot.rng_value("random"),
            ),
        )
        return Target(
            worker=worker,
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            evaluate_batch=batch if batch.possible and not flat.has_complex else None,
            evaluate_complex=evaluate_complex,
            evaluate_along=None if working is None else evaluate_along,
            framework=self.name,
        )

    def _stateful_target(
        self,
        loss: Callable[..., Any],
        flat: Flat,
        float64: bool,
        promote: bool,
        snapshot: _Snapshot,
        modules: list[torch.nn.Module],
    ) -> Target:
        tensors: list[torch.Tensor] = list(flat.values)
        originals = snapshot.data
        work = [_work_dtype(t, float64) for t in tensors]
        promotion = Promotion()
        # One evaluation at a time: the parameters hold one point (threads of
        # an executor= take turns).
        lock = threading.RLock()
        working = _working(flat, work, originals)
        if working is not None:
            working.watch(tensors)

        # True while the tensors hold the working tensors (.data) between evaluations along a
        # block: they stay in place from one such evaluation to the next (swapping .data costs
        # more than a small model's forward pass); any other evaluation, and the end of the
        # check (the snapshot), puts the originals back.
        installed = [False]

        @contextlib.contextmanager
        def holding(values: list[torch.Tensor]) -> Iterator[None]:
            """The tensors hold ``values`` (their ``.data``) while inside."""
            try:
                installed[0] = False
                for t, value in zip(tensors, values):
                    t.data = value
                yield
            finally:
                for t, data in zip(tensors, originals):
                    t.data = data

        @contextlib.contextmanager
        def swapped(x: np.ndarray) -> Iterator[None]:
            """The tensors hold ``x`` (in the working dtype) while inside."""
            if working is not None and x is flat.x0:  # the working tensors, without a copy
                with working.at_x0() as values, holding(values):
                    yield
                return
            pieces = flat.split(x)
            try:
                installed[0] = False
                for t, piece, dtype in zip(tensors, pieces, work):
                    t.data = _tensor(piece, dtype, t.device)
                yield
            finally:
                for t, data in zip(tensors, originals):
                    t.data = data

        def evaluate(x: np.ndarray) -> Any:
            with lock, swapped(x), float64_scope(promote, promotion):
                return loss()

        def evaluate_along(block: slice, w: np.ndarray, s: float) -> Any:
            if working is None:
                raise RuntimeError("no working parameters to move")
            with lock, working.moved(block, w, s) as values, float64_scope(promote, promotion):
                if not installed[0]:
                    for t, value in zip(tensors, values):
                        t.data = value
                    installed[0] = True
                return loss()

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            flags = [t.requires_grad for t in tensors]
            snapshot.replay()
            try:
                with lock, swapped(flat.x0 if x is None else x), torch.enable_grad():
                    for t in tensors:
                        if not t.requires_grad:
                            t.requires_grad_(True)
                    with float64_scope(promote):
                        out = _scalar_tensor(loss())
                    # (the backward outside the mode: see the note in .autodiff.vjp)
                    room = working.set_aside if working is not None and x is None else None
                    return _gradient_of(out, tensors, self, room)
            finally:
                for t, flag in zip(tensors, flags):
                    if t.requires_grad != flag:
                        t.requires_grad_(flag)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            snapshot.replay()
            with lock, swapped(flat.x0 if x is None else x), float64_scope(promote):
                value = fn()
            return value

        # Many points at once under vmap, where every parameter sits in a module
        # the loss reads (each row's tensors put in the modules' parameter slots).
        @contextlib.contextmanager
        def batch_turn() -> Iterator[None]:
            with lock:
                installed[0] = False  # (a vectorised call puts the originals back)
                yield

        slots = ModuleParameters.of(modules, flat, originals)
        batch = (
            None
            if slots is None or flat.has_complex
            else _Batched(self, loss, flat, evaluate, snapshot, promote, promotion, slots, batch_turn)
        )

        return Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            evaluate_batch=batch if batch is not None and batch.possible else None,
            evaluate_along=None if working is None else evaluate_along,
            framework=self.name,
        )

    # -- check_function -----------------------------------------------------------
    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        """``fn(*inputs)`` at float64 copies of the inputs, outputs as numpy (see :func:`.autodiff.call`)."""
        return _call(self, fn, inputs)

    def call_and_reasons(
        self, fn: Callable[..., Any], inputs: list[Any], memo: dict[str, Any] | None = None
    ) -> tuple[list[np.ndarray], list[str | None]]:
        """:meth:`call` and :meth:`nondifferentiable_outputs` from one call (see :func:`.autodiff.call_and_reasons`)."""
        return _call_and_reasons(self, fn, inputs, memo)

    def call_with_jvp(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        tangents: list[np.ndarray | None],
        memo: dict[str, Any],
    ) -> tuple[list[np.ndarray], list[str | None], list[np.ndarray]] | None:
        """:meth:`call_and_reasons` and :meth:`jvp` from one call (see :func:`.autodiff.call_with_jvp`)."""
        return _call_with_jvp(self, fn, inputs, tangents, memo)

    def nondifferentiable_outputs(self, fn: Callable[..., Any], inputs: list[Any]) -> list[str | None]:
        """Why each output is left out (None: checked); see :func:`.autodiff.nondifferentiable_outputs`."""
        return _nondifferentiable_outputs(fn, inputs)

    def as_parameter(self, value: Any) -> Any:
        """A sparse input is perturbed as a dense copy (:meth:`like` puts its pattern back)."""
        if isinstance(value, torch.Tensor) and value.layout != torch.strided:
            return value.detach().to_dense()
        return value

    def like(self, original: Any, value: Any) -> Any:
        """``value`` with ``original``'s strides and storage offset (see :func:`.autodiff.with_layout`)."""
        return with_layout(original, value)

    def take(self, value: Any, mask: np.ndarray) -> Any:
        """The entries where ``mask`` is True, as a 1-d tensor (a copy)."""
        return value.detach()[torch.as_tensor(mask, device=value.device)].clone()

    def put(self, value: Any, mask: np.ndarray, entries: Any) -> Any:
        """A copy of ``value`` (in the dtype of ``entries``) with ``entries`` where ``mask`` is True."""
        out = value.detach().to(dtype=entries.dtype, copy=True)
        out[torch.as_tensor(mask, device=value.device)] = entries
        return out

    def call_rows(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        rows: dict[int, np.ndarray],
        memo: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """``fn`` at many values of some inputs at once (see :func:`.autodiff.call_rows`)."""
        return _call_rows(self, fn, inputs, rows, memo)

    def vjp(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        cotangents: list[np.ndarray | None],
        memo: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """Vector-Jacobian products ``u^T J`` of ``fn`` (see :func:`.autodiff.vjp`)."""
        return _vjp(self, fn, inputs, cotangents, memo)

    def jvp(
        self, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Jacobian-vector products ``J v`` of ``fn`` by forward-mode AD (see :func:`.autodiff.jvp`)."""
        return _jvp(self, fn, inputs, tangents)

    # -- second order --------------------------------------------------------------
    def directional_gradient(
        self, loss: Callable[..., Any], params: Any, w: np.ndarray
    ) -> Callable[..., Any]:
        """``<grad loss, w>`` with a double-backward gradient (see :func:`.autodiff.directional_gradient`)."""
        return _directional_gradient(self, loss, params, w)

    def vjp_function(
        self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray | None]
    ) -> tuple[Callable[..., Any], list[Any], list[int]]:
        """The VJP of ``fn`` as a differentiable function (see :func:`.autodiff.vjp_function`)."""
        return _vjp_function(self, fn, inputs, cotangents)


class _LossOfModule(torch.nn.Module):
    """``loss(module)`` as a module's forward, so that ``functional_call`` can run it."""

    def __init__(self, module: torch.nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.loss = loss

    def forward(self) -> Any:
        return self.loss(self.module)


def _module_loss(loss: Callable[..., Any], module: torch.nn.Module) -> Callable[[Any], Any]:
    """A loss of ``{name: tensor}`` that calls ``loss(module)`` with the module holding them.

    ``torch.func.functional_call`` puts the tensors in place of the module's
    parameters for the call only and puts the originals back afterwards, also
    when the loss raises; it works under ``torch.func.vmap`` and autograd.
    Registering the module inside the wrapper changes nothing on the module.
    """
    wrapper = _LossOfModule(module, loss)

    def loss_of_values(p: Mapping[str, torch.Tensor]) -> Any:
        values = {f"module.{name}": value for name, value in p.items()}
        return torch.func.functional_call(wrapper, values, (), strict=False)

    return loss_of_values


# A point that differs from x0 in at most this many entries is evaluated in the working tensors.
_FEW_MOVED = 4


def _few_moved(x: np.ndarray, x0_bits: np.ndarray) -> np.ndarray | None:
    """The flat positions where ``x`` differs from ``x0`` bit for bit, if there are only a few (else None)."""
    if x.dtype != np.float64 or x.shape != x0_bits.shape:
        return None
    moved = np.flatnonzero(np.ascontiguousarray(x).view(np.int64) != x0_bits)
    return moved if len(moved) <= _FEW_MOVED else None


def _working(
    flat: Flat, work: list[torch.dtype], originals: list[torch.Tensor] | None = None
) -> WorkingParameters | None:
    """Working parameters for fast mode's moved points (None for complex parameters)."""
    if flat.has_complex:
        return None
    return WorkingParameters(flat, work, list(flat.values) if originals is None else originals)


def _numpy_dtype(dtype: torch.dtype) -> Any:
    """The numpy dtype a tensor of ``dtype`` converts to (bfloat16 as float32)."""
    if dtype.is_complex:
        return np.complex128 if dtype == torch.complex128 else np.complex64
    if dtype.is_floating_point:
        return np.float64 if dtype == torch.float64 else np.float32
    return torch.empty(0, dtype=dtype).numpy().dtype


def _is_sequence_skeleton(flat: Flat) -> bool:
    return flat.skeleton[0] == "seq"


ADAPTER = TorchAdapter()
