"""The PyTorch adapter: autograd checked against float64 finite differences.

Every evaluation runs in float64, whatever the dtype of the model:

* a functional loss ``loss(p)`` receives fresh float64 tensors (on the
  parameters' devices); the user's tensors are never touched;
* a zero-argument loss ``loss()`` that reads an ``nn.Module`` or tensors is
  evaluated by swapping each parameter's ``.data`` for a float64 tensor
  holding the perturbed values, and swapping the original tensor back
  afterwards (the original storage is never written to);
* during an evaluation :class:`Float64Mode`, a ``TorchFunctionMode``, turns
  float16/bfloat16/float32 tensors that the loss captured (inputs, targets,
  buffers) into float64 copies, rewrites requests for a narrower floating
  dtype (``.float()``, ``dtype=torch.float32``) into float64, and the default
  dtype is float64 so that tensors created inside the loss are float64 too.

Everything the check changes is put back when it ends, also after an
exception or Ctrl-C in the loss: parameter values (bit for bit), dtypes,
``requires_grad``, ``.grad``, module buffers, train/eval mode, the default
dtype, grad mode and the random number generators.  The autodiff gradient is
computed with ``torch.autograd.grad``, so nothing accumulates in ``.grad``,
and with the random generators replayed to the state every evaluation starts
from, so dropout draws the same mask for the gradient as for the differences.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from .base import Adapter, RngState, Target, python_rng_states, takes_argument

__all__ = ["TorchAdapter", "Float64Mode", "Promotion", "float64_scope", "ADAPTER"]

_NARROW_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
_NARROW_COMPLEX = (torch.complex32, torch.complex64)
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Functions whose arguments are left alone: attribute access, bookkeeping that
# must act on the user's own tensor (hooks), and reinterpreting views.
_UNTOUCHED = frozenset(
    {
        "__get__", "__set__", "__delete__", "__repr__", "__str__", "__format__", "__hash__",
        "__reduce_ex__", "__deepcopy__", "__setstate__", "__len__", "__bool__", "__index__",
        "register_hook", "register_post_accumulate_grad_hook", "retain_grad", "requires_grad_",
        "detach_", "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
        "data_ptr", "untyped_storage", "storage", "_typed_storage", "element_size",
        "is_floating_point", "is_complex", "is_contiguous", "get_device", "view", "is_set_to",
        "is_shared", "share_memory_", "pin_memory", "is_pinned",
    }
)
_NARROWING_METHODS = frozenset({"float", "half", "bfloat16"})
_IN_PLACE_DUNDERS = frozenset(
    {
        "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
        "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
        "__irshift__", "__setitem__",
    }
)

_scope = threading.local()


def _wide(dtype: torch.dtype) -> torch.dtype:
    if dtype in _NARROW_FLOAT:
        return torch.float64
    if dtype in _NARROW_COMPLEX:
        return torch.complex128
    return dtype


def _promote(value: Any) -> Any:
    """``value`` with narrow floating tensors and dtypes widened (itself if none)."""
    if isinstance(value, torch.Tensor):
        wide = _wide(value.dtype)
        return value if wide is value.dtype else value.to(wide)
    if isinstance(value, torch.dtype):
        return _wide(value)
    if isinstance(value, (list, tuple)) and value and any(
        isinstance(v, (torch.Tensor, torch.dtype)) for v in value
    ):
        promoted = [_promote(v) for v in value]
        if all(a is b for a, b in zip(promoted, value)):
            return value
        return type(value)(promoted) if type(value) in (list, tuple) else promoted
    return value


class Float64Mode(TorchFunctionMode):
    """Evaluate torch code in float64, whatever dtype its tensors have.

    Inside the mode every float16, bfloat16 and float32 tensor handed to a
    torch function is replaced by a float64 copy (complex64 by complex128),
    a narrower floating dtype requested through ``.float()``, ``.half()``,
    ``.to(torch.float32)`` or ``dtype=`` becomes float64, ``tensor.dtype``
    of a narrow floating tensor reads float64, and the first
    argument of an in-place operation is left as it is (so that the
    operation still writes where the code expects).  The user's tensors are
    never changed: promotion makes copies.

    Attributes
    ----------
    seen : bool
        True once the mode changed anything (a code path that would have
        computed in less than float64 without it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") == "dtype":
            # A narrow tensor reads as float64, the dtype it is computed in
            # here (code such as nn.LSTM compares input and weight dtypes).
            dtype = func(*args, **kwargs)
            wide = _wide(dtype)
            if wide is not dtype:
                self.seen = True
            return wide
        if name in _UNTOUCHED:
            return func(*args, **kwargs)
        if name in _NARROWING_METHODS and args and isinstance(args[0], torch.Tensor):
            tensor = args[0]
            if tensor.is_floating_point():
                self.seen = True
                return tensor.to(torch.float64, **kwargs)
            return func(*args, **kwargs)
        in_place = (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_DUNDERS
        new_args: list[Any] | None = None
        for k in range(1 if in_place else 0, len(args)):
            value = args[k]
            wide = _promote(value)
            if wide is not value:
                if new_args is None:
                    new_args = list(args)
                new_args[k] = wide
        new_kwargs: dict[str, Any] | None = None
        for key, value in kwargs.items():
            if key == "out":
                continue
            wide = _promote(value)
            if wide is not value:
                if new_kwargs is None:
                    new_kwargs = dict(kwargs)
                new_kwargs[key] = wide
        if new_args is None and new_kwargs is None:
            return func(*args, **kwargs)
        self.seen = True
        return func(*(args if new_args is None else new_args), **(kwargs if new_kwargs is None else new_kwargs))


class Promotion:
    """Whether one loss needs :class:`Float64Mode`, learnt from its first evaluation.

    Routing every torch call through the mode costs a few microseconds per
    call.  A loss whose first complete evaluation (with the default dtype
    float64) met no narrow tensor, no narrow dtype and no ``.float()`` is
    evaluated without the mode afterwards; evaluations at nearby points take
    the same code path.
    """

    def __init__(self) -> None:
        self.needed: bool | None = None


@contextlib.contextmanager
def float64_scope(enabled: bool = True, promotion: Promotion | None = None) -> Iterator[None]:
    """Run the enclosed torch code in float64 (see :class:`Float64Mode`).

    Sets the default dtype to float64 and enters :class:`Float64Mode`;
    both are undone on exit.  Nested scopes cost nothing.

    Parameters
    ----------
    enabled : bool
        False makes the scope do nothing (evaluation in the tensors' own dtype).
    promotion : Promotion, optional
        Skip the mode where this loss proved not to need it.
    """
    if not enabled or getattr(_scope, "depth", 0):
        yield
        return
    _default_float64.acquire()
    _scope.depth = 1
    try:
        if promotion is not None and promotion.needed is False:
            yield
        else:
            mode = Float64Mode()
            with mode:
                yield
            if promotion is not None and promotion.needed is None:
                promotion.needed = mode.seen
    finally:
        _default_float64.release()
        _scope.depth = 0


class _DefaultFloat64:
    """The default dtype is float64 while any thread is inside a :func:`float64_scope`.

    The default dtype is one setting for the whole process, so threads that
    evaluate a loss at the same time (``executor=ThreadPoolExecutor(...)``)
    share it: the first to enter saves the user's setting, the last to leave
    puts it back.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = torch.float32

    def acquire(self) -> None:
        with self.lock:
            if self.users == 0:
                self.saved = torch.get_default_dtype()
            self.users += 1
            torch.set_default_dtype(torch.float64)

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                torch.set_default_dtype(self.saved)


_default_float64 = _DefaultFloat64()


def _has_float64(device: torch.device) -> bool:
    return device.type != "mps"


def _work_dtype(tensor: torch.Tensor, float64: bool) -> torch.dtype:
    """The dtype a parameter is evaluated in."""
    if float64 and _has_float64(tensor.device):
        return torch.complex128 if tensor.is_complex() else torch.float64
    if float64 and tensor.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return tensor.dtype


def _tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new tensor (never sharing memory with ``values``) of ``dtype`` on ``device``."""
    wide = np.complex128 if dtype.is_complex else np.float64
    t = torch.from_numpy(np.array(values, dtype=wide, copy=True))
    if t.dtype != dtype or device.type != "cpu":
        t = t.to(device=device, dtype=dtype)
    return t


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point or a.dtype.is_complex:
        size = a.element_size()
        if a.dtype.is_complex:
            a, b = torch.view_as_real(a), torch.view_as_real(b)
            size //= 2
        as_int = _INT_OF_SIZE.get(size)
        if as_int is not None:
            return bool(torch.equal(a.view(as_int), b.view(as_int)))
    return bool(torch.equal(a, b))


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


def _module_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise InputError(
            f"the module {type(module).__name__} has no trainable parameters (none has "
            "requires_grad=True); unfreeze the ones to check, or pass the tensors as params."
        )
    return params


def _contains_module(value: Any) -> bool:
    if isinstance(value, torch.nn.Module):
        return True
    if isinstance(value, Mapping):
        return any(_contains_module(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_module(v) for v in value)
    return False


def _modules_in(value: Any, out: dict[int, torch.nn.Module] | None = None) -> list[torch.nn.Module]:
    """Every module (submodules included) found in a parameter structure, each once."""
    found: dict[int, torch.nn.Module] = {} if out is None else out
    if isinstance(value, torch.nn.Module):
        for m in value.modules():
            found.setdefault(id(m), m)
    elif isinstance(value, Mapping):
        for v in value.values():
            _modules_in(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _modules_in(v, found)
    return list(found.values())


def torch_rng_states() -> list[RngState]:
    """torch's global CPU generator, and the CUDA generators once CUDA is initialised."""
    states = [RngState("torch", torch.get_rng_state, torch.set_rng_state)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(RngState("torch.cuda", torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all))
    return states


class _Snapshot:
    """Everything a check could disturb, saved once and put back on exit."""

    def __init__(self, tensors: list[torch.Tensor], modules: list[torch.nn.Module], rngs: list[RngState]) -> None:
        self.default_dtype = torch.get_default_dtype()
        self.grad_enabled = torch.is_grad_enabled()
        self.tensors = tensors
        self.data = [t.data for t in tensors]
        self.values = [t.detach().clone() for t in tensors]
        self.requires_grad = [t.requires_grad for t in tensors]
        self.grads = [t.grad for t in tensors]
        self.grad_values = [None if g is None else g.detach().clone() for g in self.grads]
        self.training = [(m, m.training) for m in modules]
        self.parameters = [(m, dict(m._parameters)) for m in modules]
        self.buffers = [
            (m, name, b, b.detach().clone())
            for m in modules
            for name, b in m._buffers.items()
            if b is not None
        ]
        self.rngs = rngs
        self.rng_values = [r.get() for r in rngs]

    def replay(self) -> None:
        """Put the random generators back to where the check started."""
        for r, s in zip(self.rngs, self.rng_values):
            r.set(s)

    def restore(self) -> None:
        with torch.no_grad():
            for t, data, value, rg, grad, grad_value in zip(
                self.tensors, self.data, self.values, self.requires_grad, self.grads, self.grad_values
            ):
                if t.data.data_ptr() != data.data_ptr() or t.dtype != data.dtype or t.shape != data.shape:
                    t.data = data
                if not _same_bits(data, value):
                    data.copy_(value)
                if t.requires_grad != rg and t.is_leaf:
                    t.requires_grad_(rg)
                if t.grad is not grad:
                    t.grad = grad
                if grad is not None and grad_value is not None and not _same_bits(grad, grad_value):
                    grad.copy_(grad_value)
            for m, entries in self.parameters:
                for name, obj in entries.items():
                    if m._parameters.get(name) is not obj:
                        m._parameters[name] = obj
            for m, name, b, value in self.buffers:
                if m._buffers.get(name) is not b:
                    m._buffers[name] = b
                if not _same_bits(b, value):
                    b.copy_(value)
        for m, flag in self.training:
            m.training = flag
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        self.replay()


class TorchAdapter(Adapter):
    """PyTorch: tensors, nn.Parameters and nn.Modules; autograd as the reference."""

    name = "torch"
    #: Evaluate the points of a sweep with ``torch.func.vmap`` where the loss allows.
    vmap = True
    #: Largest number of points one vectorised (vmap) call evaluates.
    batch_rows = 512

    # -- values -----------------------------------------------------------------
    def is_leaf(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def to_numpy(self, value: Any) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            return np.asarray(value)
        t = value.detach()
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
            and not _is_sequence_skeleton(flat)
            and len(grad) == len(flat.leaves)
            and all(
                isinstance(g, (torch.Tensor, np.ndarray)) and tuple(g.shape) == leaf.shape
                for g, leaf in zip(grad, flat.leaves)
            )
        ):
            grad = {leaf.name: g for leaf, g in zip(flat.leaves, grad)}
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
    @contextlib.contextmanager
    def target(self, loss: Callable[..., Any], params: Any, *, float64: bool = True) -> Iterator[Target]:
        """Prepare ``loss`` for evaluation at float64 vectors; restore everything on exit."""
        flat = self.flatten(params)
        tensors: list[torch.Tensor] = list(flat.values)
        modules = _modules_in(params)
        functional = takes_argument(loss)
        precision = _precision(flat, float64)
        promote = float64 and all(_has_float64(t.device) for t in tensors)
        rngs = self.rng_states() + python_rng_states()
        if not functional:
            _check_in_place(flat)
        snapshot = _Snapshot(tensors, modules, rngs)
        try:
            if functional:
                # torch.func.functional_call swaps tensors into the module: with
                # a module, evaluations take turns (threads of an executor=).
                lock: Any = threading.RLock() if modules else contextlib.nullcontext()
                target = self._functional_target(loss, flat, float64, promote, snapshot, lock)
            else:
                target = self._stateful_target(loss, flat, float64, promote, snapshot)
            target.precision = precision
            target.rngs = rngs
            yield target
        finally:
            snapshot.restore()

    def _functional_target(
        self, loss: Callable[..., Any], flat: Flat, float64: bool, promote: bool, snapshot: _Snapshot,
        lock: Any,
    ) -> Target:
        work = {id(t): _work_dtype(t, float64) for t in flat.values}
        promotion = Promotion()

        def make(piece: np.ndarray, original: torch.Tensor) -> torch.Tensor:
            return _tensor(piece, work[id(original)], original.device)

        def evaluate(x: np.ndarray) -> Any:
            p = flat.unravel(x, make)
            with lock, float64_scope(promote, promotion):
                return loss(p)

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            leaves: list[torch.Tensor] = []

            def make_leaf(piece: np.ndarray, original: torch.Tensor) -> torch.Tensor:
                t = make(piece, original).requires_grad_(True)
                leaves.append(t)
                return t

            p = flat.unravel(flat.x0 if x is None else x, make_leaf)
            snapshot.replay()
            with lock, float64_scope(promote), torch.enable_grad():
                out = _scalar_tensor(loss(p))
                return _gradient_of(out, leaves, self)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            p = flat.unravel(flat.x0 if x is None else x, make)
            snapshot.replay()
            with lock, float64_scope(promote):
                return fn(p)

        evaluate_complex = None
        if promote:
            def evaluate_complex(z: np.ndarray) -> Any:
                p = flat.unravel(
                    z, lambda piece, o: _tensor(piece, torch.complex128, o.device)
                )
                with lock, float64_scope(True):
                    return loss(p)

        batch = _Batched(self, loss, flat, evaluate, snapshot, promote, promotion)
        return Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            evaluate_batch=batch if batch.possible else None,
            evaluate_complex=evaluate_complex,
            framework=self.name,
        )

    def _stateful_target(
        self, loss: Callable[..., Any], flat: Flat, float64: bool, promote: bool, snapshot: _Snapshot
    ) -> Target:
        tensors: list[torch.Tensor] = list(flat.values)
        originals = snapshot.data
        work = [_work_dtype(t, float64) for t in tensors]
        promotion = Promotion()
        # One evaluation at a time: the parameters hold one point (threads of
        # an executor= take turns).
        lock = threading.RLock()

        @contextlib.contextmanager
        def swapped(x: np.ndarray) -> Iterator[None]:
            """The tensors hold ``x`` (in the working dtype) while inside."""
            pieces = flat.split(x)
            try:
                for t, piece, dtype in zip(tensors, pieces, work):
                    t.data = _tensor(piece, dtype, t.device)
                yield
            finally:
                for t, data in zip(tensors, originals):
                    t.data = data

        def evaluate(x: np.ndarray) -> Any:
            with lock, swapped(x), float64_scope(promote, promotion):
                return loss()

        def gradient(x: np.ndarray | None = None) -> np.ndarray:
            flags = [t.requires_grad for t in tensors]
            snapshot.replay()
            try:
                with lock, swapped(flat.x0 if x is None else x), float64_scope(promote), torch.enable_grad():
                    for t in tensors:
                        if not t.requires_grad:
                            t.requires_grad_(True)
                    out = _scalar_tensor(loss())
                    return _gradient_of(out, tensors, self)
            finally:
                for t, flag in zip(tensors, flags):
                    if t.requires_grad != flag:
                        t.requires_grad_(flag)

        def call_grad(fn: Callable[..., Any], x: np.ndarray | None = None) -> Any:
            snapshot.replay()
            with lock, swapped(flat.x0 if x is None else x), float64_scope(promote):
                value = fn()
            return value

        return Target(
            flat=flat,
            evaluate=evaluate,
            gradient=gradient,
            call_grad=call_grad,
            framework=self.name,
        )

    # -- check_function -----------------------------------------------------------
    def _inputs(self, inputs: Sequence[Any], requires_grad: bool) -> list[Any]:
        """Float64 copies of the floating inputs (others as they are)."""
        out = []
        for v in inputs:
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
                t = v.detach().to(dtype=_work_dtype(v, True), copy=True)
                out.append(t.requires_grad_(requires_grad))
            else:
                out.append(v)
        return out

    def call(self, fn: Callable[..., Any], inputs: list[Any]) -> list[np.ndarray]:
        """``fn(*inputs)`` at float64 copies of the inputs, outputs as numpy.

        The copies require grad, so a function that differentiates its own
        inputs (a gradient computed with ``create_graph=True``) works.
        """
        xs = self._inputs(inputs, True)
        with float64_scope(_promotable(xs)), torch.enable_grad():
            outs = _as_list(fn(*xs))
        return [np.asarray(self.to_numpy(o)) for o in outs]

    def vjp(self, fn: Callable[..., Any], inputs: list[Any], cotangents: list[np.ndarray]) -> list[np.ndarray]:
        """Vector-Jacobian products ``u^T J`` of ``fn`` at float64 copies of ``inputs``.

        Parameters
        ----------
        fn : callable
            ``fn(*inputs)`` returning a tensor or a tuple of tensors.
        inputs : list
            The inputs (tensors of any floating dtype).
        cotangents : list of numpy.ndarray or None
            One per output; None leaves that output out.

        Returns
        -------
        list of numpy.ndarray
            One float64 array per input, zeros where the input does not
            influence the outputs.
        """
        xs = self._inputs(inputs, True)
        if isinstance(cotangents, np.ndarray):
            cotangents = [cotangents]
        with float64_scope(_promotable(xs)), torch.enable_grad():
            outs = _as_list(fn(*xs))
            if len(cotangents) != len(outs):
                raise InputError(
                    f"fn returned {len(outs)} output(s) but {len(cotangents)} cotangent(s) were given."
                )
            ys, us = [], []
            for o, u in zip(outs, cotangents):
                if u is None or not isinstance(o, torch.Tensor) or not o.requires_grad:
                    continue
                ys.append(o)
                us.append(torch.as_tensor(np.asarray(u).reshape(tuple(o.shape)), dtype=o.dtype, device=o.device))
            wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
            grads: Sequence[torch.Tensor | None] = [None] * len(wrt)
            if ys and wrt:
                grads = torch.autograd.grad(ys, wrt, grad_outputs=us, allow_unused=True)
        by_input = dict(zip(map(id, wrt), grads))
        result = []
        for x in xs:
            g = by_input.get(id(x)) if isinstance(x, torch.Tensor) else None
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else np.shape(x)
            result.append(np.zeros(shape) if g is None else np.asarray(self.to_numpy(g), dtype=np.float64))
        return result

    def jvp(self, fn: Callable[..., Any], inputs: list[Any], tangents: list[np.ndarray | None]) -> list[np.ndarray]:
        """Jacobian-vector products ``J v`` of ``fn`` by forward-mode AD.

        Parameters
        ----------
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
        import torch.autograd.forward_ad as fwad

        xs = self._inputs(inputs, True)
        try:
            with _dual_level(), float64_scope(_promotable(xs)):
                duals = []
                for x, v in zip(xs, tangents):
                    if v is None or not isinstance(x, torch.Tensor) or not x.is_floating_point():
                        duals.append(x)
                    else:
                        tangent = torch.as_tensor(np.asarray(v).reshape(tuple(x.shape)), dtype=x.dtype, device=x.device)
                        duals.append(fwad.make_dual(x, tangent))
                outs = _as_list(fn(*duals))
                result = []
                for o in outs:
                    if not isinstance(o, torch.Tensor):
                        result.append(np.zeros(np.shape(o)))
                        continue
                    tangent = fwad.unpack_dual(o).tangent
                    result.append(
                        np.zeros(tuple(o.shape)) if tangent is None
                        else np.asarray(self.to_numpy(tangent), dtype=np.float64)
                    )
                return result
        except (RuntimeError, NotImplementedError) as exc:
            raise InputError(
                f"fn has no forward-mode derivative ({exc}). A custom torch.autograd.Function "
                "needs a jvp staticmethod for forward mode; without one, check its backward "
                "(vector-Jacobian products) only."
            ) from exc


class _Batched:
    """``evaluate_batch`` through ``torch.func.vmap``, with a looped fallback.

    The first call evaluates a few points both ways.  If vmap raises, or its
    values differ from the looped ones, every later call loops (replaying the
    random generators before each point).  Otherwise points go through vmap
    in chunks whose size is tuned on the way: sizes 8, 16, 32, ... are tried
    while the time per point keeps close to the best seen, then the best
    size is kept.  If even that is slower per point than the loop (a loss
    over a large batch of data, where vectorising only adds memory traffic),
    the loop takes over.  Times are minima, which are robust on a busy machine.
    """

    sizes = (8, 16, 32, 64, 128, 256, 512)
    probe = 3

    def __init__(
        self, adapter: TorchAdapter, loss: Callable[..., Any], flat: Flat,
        evaluate: Callable[[np.ndarray], Any], snapshot: _Snapshot, promote: bool,
        promotion: Promotion,
    ) -> None:
        self.adapter = adapter
        self.promotion = promotion
        self.loss = loss
        self.flat = flat
        self.evaluate = evaluate
        self.snapshot = snapshot
        self.promote = promote
        devices = {t.device for t in flat.values}
        self.device = next(iter(devices))
        self.possible = adapter.vmap and promote and len(devices) == 1 and hasattr(torch, "func")
        #: None until tried; False after vmap failed or disagreed with the loop.
        self.works: bool | None = None
        #: False once the loop proved faster than vmap.
        self.faster = True
        self.chunk = self.sizes[0]
        self.settled = False
        self.loop_seconds = float("inf")
        self.trials: dict[int, float] = {}

    def _one(self, x: np.ndarray) -> float:
        out = self.evaluate(x)
        return float(np.asarray(self.adapter.to_numpy(out), dtype=np.float64).reshape(-1)[0])

    def loop(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            self.snapshot.replay()
            out[k] = self._one(row)
        return out

    def _timed_loop(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        for k, row in enumerate(rows):
            start = time.perf_counter()
            self.snapshot.replay()
            out[k] = self._one(row)
            self.loop_seconds = min(self.loop_seconds, time.perf_counter() - start)
        return out

    def _vmap(self, rows: np.ndarray) -> np.ndarray:
        flat, loss = self.flat, self.loss

        def one(row: torch.Tensor) -> torch.Tensor:
            return loss(flat.unravel(row, lambda piece, original: piece)).reshape(())

        points = _tensor(rows, torch.float64, self.device)
        self.snapshot.replay()
        with float64_scope(self.promote, self.promotion):
            values = torch.func.vmap(one, randomness="error")(points)
        return np.asarray(self.adapter.to_numpy(values), dtype=np.float64).reshape(-1)

    def _adapt(self, size: int, per_point: float) -> None:
        """Record a chunk's time per point; pick the next size, or settle."""
        self.trials[size] = min(self.trials.get(size, float("inf")), per_point)
        best_size = min(self.trials, key=lambda s: self.trials[s])
        best = self.trials[best_size]
        bigger = [s for s in self.sizes if size < s <= self.adapter.batch_rows]
        if bigger and per_point <= 1.25 * best:
            self.chunk = bigger[0]
            return
        self.chunk = best_size
        self.settled = True
        self.faster = best <= self.loop_seconds

    def vectorised(self, rows: np.ndarray) -> np.ndarray:
        parts = []
        pos = 0
        while pos < len(rows):
            if not self.faster:
                parts.append(self.loop(rows[pos:]))
                break
            part = rows[pos : pos + self.chunk]
            start = time.perf_counter()
            parts.append(self._vmap(part))
            if not self.settled and len(part) == self.chunk:
                self._adapt(self.chunk, (time.perf_counter() - start) / len(part))
            pos += len(part)
        return np.concatenate(parts) if parts else np.empty(0)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if self.works is False or not self.faster:
            return self.loop(rows)
        done = np.empty(0)
        if self.works is None:
            probe, rows = rows[: self.probe], rows[self.probe :]
            done = self._timed_loop(probe)
            try:
                fast = self._vmap(probe)
            except Exception:  # the loss cannot run under vmap: loop from now on
                self.works = False
            else:
                scale = np.maximum(np.abs(done), 1e-300)
                self.works = bool(np.all(np.abs(fast - done) <= 1e-11 * scale + 1e-300))
            if not self.works:
                return np.concatenate([done, self.loop(rows)])
        try:
            return np.concatenate([done, self.vectorised(rows)])
        except Exception:
            self.works = False
            return np.concatenate([done, self.loop(rows)])


@contextlib.contextmanager
def _dual_level() -> Iterator[None]:
    """``forward_ad.dual_level()``, quiet about torch's own deprecation notices."""
    import torch.autograd.forward_ad as fwad

    with warnings.catch_warnings():
        # Forward mode loads its decompositions through torch.jit.script on
        # first use, which warns; load them here, quietly.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            importlib.import_module("torch._decomp.decompositions_for_jvp")
        except ImportError:  # pragma: no cover - other torch versions
            pass
    with fwad.dual_level():
        yield


def _is_sequence_skeleton(flat: Flat) -> bool:
    return flat.skeleton[0] == "seq"


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _promotable(values: Sequence[Any]) -> bool:
    return all(_has_float64(v.device) for v in values if isinstance(v, torch.Tensor))


def _gradient_of(out: torch.Tensor, leaves: list[torch.Tensor], adapter: TorchAdapter) -> np.ndarray:
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    chunks = []
    for g, t in zip(grads, leaves):
        if g is None:
            chunks.append(np.zeros(t.numel()))
        else:
            chunks.append(np.asarray(adapter.to_numpy(g), dtype=np.float64).reshape(-1))
    return np.concatenate(chunks)


def _precision(flat: Flat, float64: bool) -> list[str]:
    """Sentences (with the remedy) for parameters not evaluated in float64."""
    sentences = []
    for leaf, t in zip(flat.leaves, flat.values):
        work = _work_dtype(t, float64)
        if work in (torch.float64, torch.complex128):
            continue
        if float64:
            sentences.append(
                f"parameter {leaf.name!r} is on {t.device}, which has no float64, so it is "
                f"evaluated in {str(work).replace('torch.', '')}; move the model and its inputs "
                "to the CPU (.cpu()) for a float64 check"
            )
        else:
            sentences.append(
                f"float64=False, so parameter {leaf.name!r} is evaluated in its own dtype "
                f"{leaf.dtype}; leave float64=True to evaluate it in float64"
            )
    return sentences


def _check_in_place(flat: Flat) -> None:
    """A loss() without arguments needs distinct tensors to perturb."""
    seen: dict[int, str] = {}
    for leaf, t in zip(flat.leaves, flat.values):
        key = id(t)
        if key in seen:
            raise InputError(
                f"parameters {seen[key]!r} and {leaf.name!r} are the same tensor; list each "
                "tensor once in params."
            )
        seen[key] = leaf.name
        if not t.is_leaf and t.requires_grad:
            raise InputError(
                f"parameter {leaf.name!r} is computed from other tensors (it has grad_fn "
                f"{type(t.grad_fn).__name__}), so the loss cannot be checked by perturbing it in "
                "place; pass the leaf tensors it is computed from, or write the loss as loss(p)."
            )


ADAPTER = TorchAdapter()
