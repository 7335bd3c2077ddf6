"""Float64 forcing: torch code evaluated in float64, whatever its tensors' dtype.

During an evaluation :class:`Float64Mode`, a ``TorchFunctionMode``, turns
float16/bfloat16/float32 tensors that the loss captured (inputs, targets,
buffers) into float64 copies, rewrites requests for a narrower floating dtype
(``.float()``, ``dtype=torch.float32``) into float64, and makes the
floating tensors that factory functions create without a dtype
(``torch.zeros(3)``, ``torch.tensor(0.5)``, ``nn.Linear(...)`` inside the loss)
float64 too (:func:`float64_scope`).  torch's default dtype, a setting of the
whole process, is never changed: a check in one thread leaves every other
thread as it was.  Here too: the dtype each parameter is evaluated
in, and why a parameter is not evaluated in float64 (a device without float64,
or ``float64=False``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from gradcheck_core.flatten import Flat

__all__ = ["Float64Mode", "Promotion", "float64_scope"]

_NARROW_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
_NARROW_COMPLEX = (torch.complex32, torch.complex64)

# Functions whose arguments are left alone: attribute access, bookkeeping that
# must act on the user's own tensor (hooks), and reinterpreting views.
_UNTOUCHED = frozenset(
    {
        "__get__",
        "__set__",
        "__delete__",
        "__repr__",
        "__str__",
        "__format__",
        "__hash__",
        "__reduce_ex__",
        "__deepcopy__",
        "__setstate__",
        "__len__",
        "__bool__",
        "__index__",
        "register_hook",
        "register_post_accumulate_grad_hook",
        "retain_grad",
        "requires_grad_",
        "detach_",
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "stride",
        "storage_offset",
        "data_ptr",
        "untyped_storage",
        "storage",
        "_typed_storage",
        "element_size",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "get_device",
        "view",
        "is_set_to",
        "is_shared",
        "share_memory_",
        "pin_memory",
        "is_pinned",
    }
)
_NARROWING_METHODS = frozenset({"float", "half", "bfloat16"})
# Factory functions that make a tensor of the default dtype when given no dtype
# (and floating data, for those that infer it): called again with dtype=float64.
_FACTORIES = frozenset(
    {
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.full,
        torch.tensor,
        torch.as_tensor,
        torch.asarray,
        torch.arange,
        torch.linspace,
        torch.logspace,
        torch.eye,
        torch.scalar_tensor,
        torch.empty_strided,
    }
)
# Random factories: always floating, so asked for float64 from the start (one draw).
_RANDOM_FACTORIES = frozenset({torch.rand, torch.randn})
_IN_PLACE_DUNDERS = frozenset(
    {
        "__iadd__",
        "__isub__",
        "__imul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__imatmul__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
        "__setitem__",
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
    if (
        isinstance(value, (list, tuple))
        and value
        and any(isinstance(v, (torch.Tensor, torch.dtype)) for v in value)
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
        if kwargs.get("dtype") is None and (func in _FACTORIES or func in _RANDOM_FACTORIES):
            return self._factory(func, args, kwargs)
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
        return func(
            *(args if new_args is None else new_args), **(kwargs if new_kwargs is None else new_kwargs)
        )

    def _factory(self, func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """A factory called without a dtype: float64 where it would give the default dtype."""
        wide = {**kwargs, "dtype": torch.float64}
        if func in _RANDOM_FACTORIES:
            self.seen = True
            return func(*args, **wide)
        out = func(*args, **kwargs)
        if (
            isinstance(out, torch.Tensor)
            and out.dtype in _NARROW_FLOAT
            and out.dtype == torch.get_default_dtype()
        ):
            self.seen = True
            return func(*args, **wide)
        return out


class Promotion:
    """Whether one loss needs :class:`Float64Mode`, learnt from its first evaluation.

    Routing every torch call through the mode costs a few microseconds per
    call.  A loss whose first complete evaluation met no narrow tensor, no
    narrow dtype, no ``.float()`` and no factory of a default-dtype tensor is
    evaluated without the mode afterwards; evaluations at nearby points take
    the same code path.
    """

    def __init__(self) -> None:
        self.needed: bool | None = None


class float64_scope:
    """Run the enclosed torch code in float64 (see :class:`Float64Mode`).

    Enters :class:`Float64Mode` (a setting of the calling thread only: torch's
    process-wide default dtype is never changed, so other threads are not
    affected) and leaves it on exit.  Nested scopes cost nothing.  Entering
    and leaving are whole steps: the mode is on the stack exactly while
    inside, also when the enclosed code raises or is interrupted.

    Parameters
    ----------
    enabled : bool
        False makes the scope do nothing (evaluation in the tensors' own dtype).
    promotion : Promotion, optional
        Skip the mode where this loss proved not to need it.
    """

    def __init__(self, enabled: bool = True, promotion: Promotion | None = None) -> None:
        self.enabled = enabled
        self.promotion = promotion
        self.mode: Float64Mode | None = None
        self.outer = False

    def __enter__(self) -> None:
        if not self.enabled or getattr(_scope, "depth", False):
            return
        mode = None
        if self.promotion is None or self.promotion.needed is not False:
            mode = Float64Mode()
            torch._C._push_on_torch_function_stack(mode)
        self.mode = mode
        _scope.depth = True
        self.outer = True

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        if not self.outer:
            return
        self.outer = False
        _scope.depth = False
        mode, self.mode = self.mode, None
        if mode is not None:
            _remove_mode(mode)
            if kind is None and self.promotion is not None and self.promotion.needed is None:
                self.promotion.needed = mode.seen


def _remove_mode(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off this thread's torch function mode stack (modes above it stay)."""
    above = []
    try:
        while torch._C._len_torch_function_stack():
            top = torch._C._pop_torch_function_stack()
            if top is mode:
                break
            above.append(top)
    finally:
        for other in reversed(above):
            torch._C._push_on_torch_function_stack(other)


def mode_depth() -> int:
    """The length of this thread's torch function mode stack."""
    return int(torch._C._len_torch_function_stack())


def remove_stray_modes(depth: int) -> None:
    """Take every :class:`Float64Mode` above ``depth`` off this thread's mode stack.

    A check leaves none behind; this is the last line of defence should a
    scope's exit not have run.
    """
    stack = [torch._C._get_function_stack_at(k) for k in range(depth, mode_depth())]
    for mode in stack:
        if isinstance(mode, Float64Mode):
            _remove_mode(mode)
    if depth == 0:
        _scope.depth = False


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


def _promotable(values: Sequence[Any]) -> bool:
    return all(_has_float64(v.device) for v in values if isinstance(v, torch.Tensor))


def _precision(flat: Flat, float64: bool) -> list[str]:
    """Sentences (with the remedy) for parameters not evaluated in float64."""
    sentences = []
    for leaf, t in zip([g[0] for g in flat.groups], flat.values):
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
