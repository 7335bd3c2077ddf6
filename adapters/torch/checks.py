"""Checks of torch.autograd.gradcheck that are about torch itself, for :mod:`gradcheck_core.compat`.

Gradient dtypes and devices, and the backward pass under ``vmap``
(batched cotangents) against one cotangent at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["batched_grad_problems", "grad_dtype_problems"]


def _outputs(fn: Callable[..., Any], inputs: Sequence[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs = [x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) else x for x in inputs]
    with torch.enable_grad():
        out = fn(*xs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    ys = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    return xs, ys


def grad_dtype_problems(fn: Callable[..., Any], inputs: Sequence[Any]) -> list[str]:
    """Inputs whose gradient has another dtype or device than the input (at the input's own dtype).

    Parameters
    ----------
    fn : callable
        The function of ``inputs`` (the ones differentiated).
    inputs : sequence of torch.Tensor
        Its inputs, in their own dtypes.
    """
    xs, ys = _outputs(fn, inputs)
    if not ys:
        return []
    grads = torch.autograd.grad(ys, xs, grad_outputs=[torch.ones_like(y) for y in ys], allow_unused=True)
    problems = []
    for i, (x, g) in enumerate(zip(xs, grads)):
        if g is not None and (g.dtype != x.dtype or g.device != x.device):
            problems.append(
                f"the gradient of input {i} is {g.dtype} on {g.device}, the input {x.dtype} on {x.device}"
            )
    return problems


def batched_grad_problems(fn: Callable[..., Any], inputs: Sequence[Any], batch: int = 3) -> list[str]:
    """Differences between the backward pass under ``vmap`` and one cotangent at a time.

    Parameters
    ----------
    fn : callable
        The function of ``inputs``.
    inputs : sequence of torch.Tensor
        Its inputs (float64 copies are differentiated).
    batch : int
        How many cotangents are stacked.
    """
    xs, ys = _outputs(fn, [x.to(torch.float64) if x.is_floating_point() else x for x in inputs])
    if not ys:
        return []
    gen = torch.Generator().manual_seed(0)
    us = [torch.randn((batch, *y.shape), generator=gen, dtype=y.dtype).to(y.device) for y in ys]
    try:
        batched = torch.autograd.grad(
            ys, xs, grad_outputs=us, is_grads_batched=True, allow_unused=True, retain_graph=True
        )
    except Exception as exc:  # the backward pass cannot run under vmap: torch reports this as a failure too
        return [f"the backward pass fails under vmap ({type(exc).__name__}: {str(exc).splitlines()[0]})"]
    problems = []
    for b in range(batch):
        single = torch.autograd.grad(
            ys, xs, grad_outputs=[u[b] for u in us], allow_unused=True, retain_graph=True
        )
        for i, (g1, gb) in enumerate(zip(single, batched)):
            one = torch.zeros_like(xs[i]) if g1 is None else g1
            many = torch.zeros_like(xs[i]) if gb is None else gb[b]
            scale = float(one.abs().max()) if one.numel() else 0.0
            if not torch.allclose(many, one, rtol=1e-10, atol=1e-12 * max(scale, 1.0)):
                problems.append(
                    f"input {i}, cotangent {b}: the batched backward (vmap) differs from the unbatched one "
                    f"by {float((many - one).abs().max()):.3g}"
                )
    return problems
