"""gradcheck-core against ``torch.autograd.gradcheck`` on the same functions.

Prints one table: verdict and time of ``gc.check`` / ``gc.check_function`` and
of ``torch.autograd.gradcheck`` in slow and fast mode (``raise_exception=False``).

Cases:

1. a correct float32 function ``tanh(A @ x).sum()`` with 50 inputs;
2. a custom ``autograd.Function`` whose backward is wrong in one entry by
   1e-2, at n = 100 and n = 1000 (float64);
3. the full sweep of an MLP on mini-batches of the digits data (64-80-10,
   6,010 parameters, float64): gradcheck's slow mode against our full
   sweep, vectorised with ``torch.func.vmap`` and looped.

Run: ``python benchmarks/torch_vs_gradcheck.py [--threads N] [--samples N ...]``.
Times are the CPU time of one run each (torch single-threaded by default),
which a busy machine disturbs less than wall time; the verdicts do not move.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradcheck_core as gc
from gradcheck_core.adapters import get_adapter


class SparseBug(torch.autograd.Function):
    """``sin(x)`` elementwise; the backward is off by 1e-2 in entry 7."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        out = g * torch.cos(x)
        out[7] = out[7] + 1e-2 * g[7]
        return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU time it took, in seconds.

    CPU time of this process (torch runs single-threaded here) rather than
    wall time: on a shared machine it does not count the time other
    programs held the cores.
    """
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def torch_gradcheck(
    fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], fast: bool
) -> tuple[str, float]:
    """Verdict ('pass'/'fail') and seconds of ``torch.autograd.gradcheck``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about float32 inputs
        ok, seconds = timed(
            lambda: torch.autograd.gradcheck(fn, inputs, fast_mode=fast, raise_exception=False)
        )
    return ("pass" if ok else "fail"), seconds


def digits(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sklearn digits (scaled), or random data of the same shape without sklearn."""
    try:
        from sklearn.datasets import load_digits

        data = load_digits()
        x, y = data.data[:samples] / 16.0, data.target[:samples]
    except ImportError:  # pragma: no cover
        rng = np.random.default_rng(0)
        x, y = rng.random((samples, 64)), rng.integers(0, 10, samples)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady timings)")
    parser.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[64, 256],
        help="digits samples in the MLP loss (mini-batch sizes)",
    )
    parser.add_argument("--hidden", type=int, default=80, help="hidden units of the MLP")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def add(case: str, tool: str, verdict: str, seconds: float, note: str = "") -> None:
        print(f"  {case:<38} {tool:<28} {verdict:<6} {seconds:8.3f} s  {note}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print(f"  {'case':<38} {'tool':<28} {'verdict':<6} {'CPU time':>10}  note")

    # 1. A correct float32 function.
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(50, 50, generator=gen) / 7
    x32 = torch.randn(50, generator=gen, requires_grad=True)

    def tanh_sum(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(A @ v).sum()  # float32 A: promoted to float64 by our check

    case = "correct float32 tanh(A@x).sum(), n=50"
    for fast in (False, True):
        verdict, s = torch_gradcheck(tanh_sum, (x32,), fast)
        add(case, f"torch gradcheck ({'fast' if fast else 'slow'})", verdict, s, "correct gradient")
    report, s = timed(lambda: gc.check_function(tanh_sum, x32))
    add(case, "gc.check_function", report.verdict, s, f"rel_error {report.rel_error:.1e}")

    # 2. One wrong entry in a custom Function's backward.
    for n in (100, 1000):
        case = f"Function, 1 entry off by 1e-2, n={n}"
        xn = torch.linspace(-2.0, 3.0, n, dtype=torch.float64, requires_grad=True)
        for fast in (False, True):
            verdict, s = torch_gradcheck(SparseBug.apply, (xn,), fast)
            add(case, f"torch gradcheck ({'fast' if fast else 'slow'})", verdict, s, "bug present")
        report, s = timed(lambda: gc.check_function(SparseBug.apply, xn))  # noqa: B023 - called within this iteration
        block = report.blocks[0]
        add(
            case,
            "gc.check_function",
            report.verdict,
            s,
            f"bad entries {block.n_bad}, worst {block.worst_index}",
        )

    # 3. The full sweep of an MLP, on mini-batches of the digits.
    for samples in args.samples:
        mlp_case(samples, args.hidden, add)


def mlp_case(samples: int, hidden: int, add: Callable[..., None]) -> None:
    """gradcheck slow/fast against our full sweep (vmap batches and looped)."""
    x, y = digits(samples)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)).double()
    n_params = sum(p.numel() for p in net.parameters())
    names = [name for name, _ in net.named_parameters()]
    case = f"MLP 64-{hidden}-10 ({n_params} p), {len(x)} samples"

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    def loss_of_tensors(*tensors: torch.Tensor) -> torch.Tensor:
        return loss(dict(zip(names, tensors)))

    params = {name: p.detach() for name, p in net.named_parameters()}
    t_eval = timed(lambda: [loss(params) for _ in range(50)])[1] / 50
    print(f"\n  {case}: one loss evaluation {t_eval * 1e3:.2f} ms, 2n of them {2 * n_params * t_eval:.1f} s")
    inputs = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    verdict, t_slow = torch_gradcheck(loss_of_tensors, inputs, False)
    add(case, "torch gradcheck (slow)", verdict, t_slow)
    verdict, s = torch_gradcheck(loss_of_tensors, inputs, True)
    add(case, "torch gradcheck (fast)", verdict, s)
    adapter = get_adapter("torch")
    times = {}
    for vectorised in (True, False):
        adapter.vmap = vectorised
        try:
            report, s = timed(lambda: gc.check(loss, net, mode="full", progress=False))
        finally:
            adapter.vmap = True
        times[vectorised] = s
        tool = "gc.check full sweep, vmap" if vectorised else "gc.check full sweep, looped"
        add(case, tool, report.verdict, s, f"{report.nfev} evaluations, rel_error {report.rel_error:.1e}")
    print(
        f"  time / gradcheck slow: looped {times[False] / t_slow:.2f}, vmap {times[True] / t_slow:.2f}; "
        f"looped / vmap {times[False] / times[True]:.2f}"
    )


if __name__ == "__main__":
    main()
