"""Speed of gradcheck-core against the other tools, row by row of the speed table.

Each row is measured against the other side in the same run, with one
BLAS/torch/XLA thread for both sides; every figure is the median of
``--repeats`` runs (3 by default, wall time).  The machine may be shared:
the medians damp, but do not remove, the noise of other programs.

Rows (``--rows``, comma separated; default all):

* ``function``: ``gc.check_function`` against ``torch.autograd.gradcheck``
  (slow mode) on ``sin``, ``matmul`` and ``softmax`` at 10, 100 and 1,000
  elements; the ratio is gc's time over gradcheck's;
* ``outputs``: ``gc.check_function`` on a function with k = 1, 2, 4, 8
  outputs: evaluations of ``fn`` and time, against k = 1.

Run: ``python benchmarks/speed.py [--quick] [--rows function,outputs] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import gradcheck_core as gc


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``fn()`` (its last result) and the median wall time of ``repeats`` runs."""
    times = []
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def row_function(repeats: int, quick: bool) -> list[str]:
    """check_function against torch.autograd.gradcheck (slow mode)."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lines = [
        "| function | n | gradcheck (s) | check_function (s) | ratio | verdicts |",
        "|---|---|---|---|---|---|",
    ]
    sizes = (10, 100) if quick else (10, 100, 1000)
    for n in sizes:
        m = round(n**0.5)
        cases: dict[str, tuple[Callable[..., Any], tuple[torch.Tensor, ...]]] = {
            "sin": (torch.sin, (torch.randn(n, dtype=torch.float64, generator=g),)),
            "matmul": (
                torch.matmul,
                (
                    torch.randn(m, n // m, dtype=torch.float64, generator=g),
                    torch.randn(n // m, 3, dtype=torch.float64, generator=g),
                ),
            ),
            "softmax": (lambda x: torch.softmax(x, -1), (torch.randn(n, dtype=torch.float64, generator=g),)),
        }
        for name, (fn, xs) in cases.items():
            args = tuple(x.clone().requires_grad_(True) for x in xs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ok, t_ref = median_time(
                    lambda fn=fn, args=args: torch.autograd.gradcheck(fn, args, raise_exception=False),
                    repeats,
                )
            rep, t_gc = median_time(lambda fn=fn, xs=xs: gc.check_function(fn, *xs), repeats)
            lines.append(
                f"| {name} | {n} | {t_ref:.4f} | {t_gc:.4f} | {t_gc / t_ref:.2f} x | "
                f"{'pass' if ok else 'fail'} / {rep.verdict} |"
            )
    return lines


class _Outputs:
    """k outputs ``sin((j + 1) x)``; counts its calls."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0

    def __call__(self, x: Any) -> tuple[Any, ...]:
        import torch

        self.calls += 1
        return tuple(torch.sin((j + 1) * x) for j in range(self.k))


def row_outputs(repeats: int, quick: bool) -> list[str]:
    """Evaluations and time of check_function against the number of outputs."""
    import torch

    torch.set_num_threads(1)
    x = torch.linspace(-1.0, 1.0, 50, dtype=torch.float64)
    lines = [
        "| outputs k | fn evaluations | time (s) | evaluations / k=1 | time / k=1 |",
        "|---|---|---|---|---|",
    ]
    base: tuple[int, float] | None = None
    for k in (1, 2, 4) if quick else (1, 2, 4, 8):
        fn = _Outputs(k)

        def run(fn: _Outputs = fn) -> int:
            fn.calls = 0
            gc.check_function(fn, x)
            return fn.calls

        count, t = median_time(run, repeats)
        base = base or (count, t)
        lines.append(f"| {k} | {count} | {t:.4f} | {count / base[0]:.2f} | {t / base[1]:.2f} |")
    return lines


ROWS = {"function": row_function, "outputs": row_outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, for a first look")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma separated, of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("Medians of", args.repeats, "runs, wall time, one thread per framework (a shared machine: noisy).")
    for name in args.rows.split(","):
        print(f"\n### {name}\n")
        print("\n".join(ROWS[name](args.repeats, args.quick)))


if __name__ == "__main__":
    main()
