"""Recall and false alarms on the bug suite: ours (full and fast) against the usual tools.

Every case is the same numpy loss and handwritten gradient for every tool:
``torch.autograd.gradcheck`` sees it as a custom ``autograd.Function`` whose
backward returns the handwritten gradient, ``jax.test_util.check_grads`` as a
``jax.custom_vjp`` over ``jax.pure_callback``, and ``scipy.optimize.check_grad``
directly, with the usual rule ``||a - n|| / (||a|| + ||n||) < 1e-7``.

Run: ``python benchmarks/bugsuite.py``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bugsuite.cases import Case, all_cases

import gradcheck_core as gc


def ours(mode: str) -> Callable[[Case], str]:
    def run(case: Case) -> str:
        return gc.check(case.loss, case.x0, case.grad, mode=mode, progress=False).verdict

    return run


def scipy_check_grad(case: Case) -> str:
    from scipy.optimize import approx_fprime

    state = np.random.get_state()
    a = case.grad(case.x0)
    np.random.set_state(state)
    n = approx_fprime(case.x0, case.loss, 1.4901161193847656e-08)
    rel = np.linalg.norm(a - n) / (np.linalg.norm(a) + np.linalg.norm(n))
    return "pass" if rel < 1e-7 else "fail"


def torch_gradcheck(fast: bool) -> Callable[[Case], str] | None:
    try:
        import torch
    except ImportError:
        return None

    def run(case: Case) -> str:
        class Wrapped(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return torch.tensor(case.loss(x.detach().numpy()), dtype=torch.float64)

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return g * torch.from_numpy(np.asarray(case.grad(x.detach().numpy()), dtype=np.float64))

        x = torch.tensor(case.x0, dtype=torch.float64, requires_grad=True)
        ok = torch.autograd.gradcheck(Wrapped.apply, (x,), fast_mode=fast, raise_exception=False)
        return "pass" if ok else "fail"

    return run


def jax_check_grads() -> Callable[[Case], str] | None:
    try:
        import jax
        import jax.numpy as jnp
        from jax.test_util import check_grads
    except ImportError:
        return None

    def run(case: Case) -> str:
        previous = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        try:
            shape = jax.ShapeDtypeStruct((), jnp.float64)
            gshape = jax.ShapeDtypeStruct(case.x0.shape, jnp.float64)

            @jax.custom_vjp
            def f(x):
                return jax.pure_callback(lambda v: np.float64(case.loss(np.asarray(v))), shape, x)

            def fwd(x):
                return f(x), x

            def bwd(x, g):
                grad = jax.pure_callback(
                    lambda v: np.asarray(case.grad(np.asarray(v)), np.float64), gshape, x
                )
                return (g * grad,)

            f.defvjp(fwd, bwd)
            try:
                check_grads(f, (jnp.asarray(case.x0),), order=1, modes=["rev"])
                return "pass"
            except AssertionError:
                return "fail"
        finally:
            jax.config.update("jax_enable_x64", previous)

    return run


def main() -> None:
    cases = all_cases()
    tools: dict[str, Callable[[Case], str] | None] = {
        "gradcheck-core full": ours("full"),
        "gradcheck-core fast": ours("fast"),
        "torch gradcheck (slow)": torch_gradcheck(False),
        "torch gradcheck (fast)": torch_gradcheck(True),
        "jax check_grads": jax_check_grads(),
        "scipy check_grad (1e-7 rule)": scipy_check_grad,
    }
    bugs = [c for c in cases if c.buggy]
    correct = [c for c in cases if not c.buggy]
    print(
        f"bug suite: {len(bugs)} broken gradients, {len(correct)} correct ones "
        f"(traps: {', '.join(sorted({c.kind for c in correct}))})\n"
    )
    header = f"{'tool':32s} {'recall':>8s} {'false alarms':>13s} {'inconclusive':>13s} {'seconds':>8s}  missed / false alarms"
    print(header)
    print("-" * len(header))
    for name, tool in tools.items():
        if tool is None:
            print(f"{name:32s} (not installed)")
            continue
        start = time.perf_counter()
        verdicts = {}
        for c in cases:
            np.random.seed(0)
            try:
                verdicts[c.name] = tool(c)
            except Exception as exc:  # a tool that crashes on a case counts as not passing it
                verdicts[c.name] = f"error: {type(exc).__name__}"
        seconds = time.perf_counter() - start
        caught = [c for c in bugs if verdicts[c.name] == "fail"]
        alarms = [c for c in correct if verdicts[c.name] not in ("pass", "inconclusive")]
        unsure = [c for c in cases if verdicts[c.name] == "inconclusive"]
        missed = [c.name for c in bugs if c not in caught]
        notes = ", ".join(missed + [f"{c.name} ({verdicts[c.name]})" for c in alarms]) or "-"
        print(
            f"{name:32s} {len(caught):3d}/{len(bugs):<4d} {len(alarms):6d}/{len(correct):<6d} "
            f"{len(unsure):13d} {seconds:8.2f}  {notes}"
        )


if __name__ == "__main__":
    main()
