"""State snapshots: everything a check changes is put back when it ends.

Also after an exception or Ctrl-C in the loss: parameter values (bit for
bit), dtypes, ``requires_grad``, ``.grad``, module buffers, train/eval mode,
the default dtype, grad mode and the random number generators
(:class:`_Snapshot`).  The generators are also replayed to the state every
evaluation starts from, so dropout draws the same mask for the gradient as for
the differences.  Here too: which modules and tensors a parameter structure
holds, and whether a ``loss()`` without arguments can be checked by
perturbing its tensors in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradcheck_core.errors import InputError
from gradcheck_core.flatten import Flat

from ..base import RngState, restore_states
from .float64 import mode_depth, remove_stray_modes

__all__ = ["torch_rng_states"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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

    def __init__(
        self,
        tensors: list[torch.Tensor],
        modules: list[torch.nn.Module],
        rngs: list[RngState],
        rng_values: list[Any] | None = None,
    ) -> None:
        self.default_dtype = torch.get_default_dtype()
        self.mode_depth = mode_depth()
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
        # (the states as the caller read them a moment ago, where it passes them: not read again)
        self.rng_values = [r.get() for r in rngs] if rng_values is None else list(rng_values)

    def rng_value(self, name: str) -> Any:
        """The saved state of the generator called ``name``."""
        return self.rng_values[[r.name for r in self.rngs].index(name)]

    def replay(self) -> None:
        """Put the random generators back to where the check started."""
        restore_states(self.rngs, self.rng_values)

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
        remove_stray_modes(self.mode_depth)
        if torch.get_default_dtype() != self.default_dtype:
            torch.set_default_dtype(self.default_dtype)
        if torch.is_grad_enabled() != self.grad_enabled:
            torch.set_grad_enabled(self.grad_enabled)
        self.replay()


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
