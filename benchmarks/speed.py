"""Speed of gradcheck-core against the other tools, row by row of the speed table.

Each row is measured against the other side in the same run, with one
BLAS/torch/XLA thread for both sides; every figure is the median of
``--repeats`` runs (3 by default) of wall time, or with ``--clock cpu`` of
this process's CPU time (``time.process_time``: on a shared, loaded machine
it counts only this process's own work; the Dask row always takes wall
time, its work being in other processes).  The medians damp, but do not
remove, the noise of other programs.

Rows (``--rows``, comma separated; default all):

* ``function``: ``gc.check_function`` against ``torch.autograd.gradcheck``
  (slow mode) on ``sin``, ``matmul`` and ``softmax`` at 10, 100 and 1,000
  elements; the ratio is gc's time over gradcheck's (with its defaults), and
  beside it over gradcheck's with ``check_forward_ad=True``, which checks
  what check_function checks (reverse mode, forward mode, undefined output
  gradients); the three run by turns, calls under 50 ms timed in groups;
* ``outputs``: ``gc.check_function`` on a function with k = 1, 2, 4, 8
  outputs: evaluations of ``fn`` and time, against k = 1;
* ``numpy``: a numpy full sweep, library time per evaluation on top of the
  loss's own time;
* ``dask``: a 5 ms torch loss, full sweep, serial against a Dask
  ``LocalCluster`` of 2 worker processes (the speed-up);
* ``mlp``: a full sweep of a 6,010-parameter torch MLP (``loss()`` over the
  module, and a functional ``loss(p)``) against gradcheck's slow mode;
* ``fast10m``: fast mode on a 10M-parameter torch MLP, correct and with one
  wrong entry: evaluations, time in forward+backward units of the model, peak
  memory above the process, against ``gradcheck(fast_mode=True)`` (Linux);
* ``numpy10m``: fast mode on a 10M-parameter numpy MLP with a handwritten
  backward pass, correct and with one wrong entry: evaluations, time in units
  of one forward+backward, peak memory above the process, against
  ``scipy.optimize.check_grad(direction="random")`` (Linux);
* ``jaxmlp``: a full sweep of a 5,410-parameter JAX MLP against a warm
  hand-written ``jit(vmap)`` sweep at its best chunk size.

Run: ``python benchmarks/speed.py [--quick] [--rows function,outputs] [--repeats N] [--clock cpu]``.
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

import numpy as np

import gradcheck_core as gc

#: The clock of every timing but the Dask row's: ``time.perf_counter`` (wall) or ``time.process_time``.
CLOCK: Callable[[], float] = time.perf_counter


def median_time(
    fn: Callable[[], Any], repeats: int, clock: Callable[[], float] | None = None
) -> tuple[Any, float]:
    """``fn()`` (its last result) and the median time of ``repeats`` runs (by :data:`CLOCK`)."""
    clock = clock or CLOCK
    times = []
    out = None
    for _ in range(repeats):
        start = clock()
        out = fn()
        times.append(clock() - start)
    return out, statistics.median(times)


def by_turns(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[Any, float]]:
    """Each of ``fns`` run ``repeats`` times by turns: (its last result, its median time) each.

    Run by turns, the tools meet the same bursts of other programs' work, which
    a run of one after the other's spreads unevenly between them.  Short calls
    are timed in groups, so that the clock's resolution does not count.  Each
    is first called unmeasured, at least 5 times and for 0.1 s: a process's
    first calls import and warm up what no later call pays for (the first
    check of a process takes about a second), and the group size comes from
    the time of the warm calls, not of the first.
    """
    elapsed = 0.0
    for fn in fns:  # warm-up calls of each, unmeasured; the group size from the warm ones' time
        fn()
        calls, start = 0, CLOCK()
        while calls < 5 or CLOCK() - start < 0.1:
            fn()
            calls += 1
        elapsed += (CLOCK() - start) / calls
    elapsed = max(elapsed, 1e-9)
    group = max(1, min(50, int(0.05 / elapsed)))
    times: list[list[float]] = [[] for _ in fns]
    out: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = CLOCK()
            for _ in range(group):
                out[k] = fn()
            times[k].append((CLOCK() - t0) / group)
    return [(o, statistics.median(t)) for o, t in zip(out, times)]


def row_function(repeats: int, quick: bool) -> list[str]:
    """check_function against torch.autograd.gradcheck (slow mode)."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lines = [
        "| function | n | gradcheck (s) | check_function (s) | ratio | verdicts "
        "| gradcheck with forward AD (s) | ratio to it |",
        "|---|---|---|---|---|---|---|---|",
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
                (ok, t_ref), (ok_fwd, t_fwd), (rep, t_gc) = by_turns(
                    [
                        lambda fn=fn, args=args: torch.autograd.gradcheck(fn, args, raise_exception=False),
                        # the checks check_function makes: the VJP, the JVP, undefined output gradients
                        lambda fn=fn, args=args: torch.autograd.gradcheck(
                            fn, args, raise_exception=False, check_forward_ad=True
                        ),
                        lambda fn=fn, xs=xs: gc.check_function(fn, *xs),
                    ],
                    repeats,
                )
            lines.append(
                f"| {name} | {n} | {t_ref:.4f} | {t_gc:.4f} | {t_gc / t_ref:.2f} x | "
                f"{'pass' if ok else 'fail'} / {rep.verdict} | {t_fwd:.4f} ({'pass' if ok_fwd else 'fail'}) "
                f"| {t_gc / t_fwd:.2f} x |"
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


def row_numpy(repeats: int, quick: bool) -> list[str]:
    """Library time per evaluation of a numpy full sweep, on top of the loss's own time."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 50))
    params = {"W": rng.standard_normal((50, 20)), "b": rng.standard_normal(20)}

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(x @ p["W"] + p["b"]) ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.tanh(x @ p["W"] + p["b"])
        d = 2 * t * (1 - t * t)
        return {"W": x.T @ d, "b": d.sum(0)}

    # The loss alone and the check take turns; the fastest of each counts (on a
    # shared machine a run is only ever slowed down, by the same programs for both).
    per_loss, per_eval = [], []
    for _ in range(repeats):
        _, t = median_time(lambda: [loss(params) for _ in range(2000)], 3)
        report, total = median_time(lambda: gc.check(loss, params, grad, mode="full"), 1)
        per_loss.append(t / 2000)
        per_eval.append(total / report.nfev)
    t_loss, t_eval = min(per_loss), min(per_eval)
    return [
        "| parameters | loss (us) | check per evaluation (us) | library on top (us) | evaluations |",
        "|---|---|---|---|---|",
        f"| {report.n_params} | {t_loss * 1e6:.2f} | {t_eval * 1e6:.2f} | {(t_eval - t_loss) * 1e6:.2f} | {report.nfev} |",
    ]


def _slow_loss(p: Any) -> Any:
    """About 5 ms of single-threaded torch work, then a smooth scalar of ``p``.

    The Python branch on a value keeps it from being vectorised (vmap), as
    many real losses are.
    """
    import torch

    a = torch.ones(200, 200, dtype=torch.float64)
    for _ in range(12):
        a = torch.tanh(a @ a / 200)
    scale = 1.0 if float(p[0].detach()) < 10 else 2.0
    return scale * (torch.sin(p) * p).sum() + 0.0 * a.sum()


def row_dask(repeats: int, quick: bool) -> list[str]:
    """A 5 ms torch loss, full sweep: serial against a Dask LocalCluster of 2 worker processes.

    Two sizes: 40 parameters (about 90 evaluations, where the serial parts of a
    check, its first value, gradient and noise probe, weigh most) and 200.
    """
    import dask
    import torch
    from distributed import Client, LocalCluster

    torch.set_num_threads(1)
    sizes = (20,) if quick else (40, 200)
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's
    # adaptive mmap threshold: every 320 KB temporary of this loss is then mapped and unmapped,
    # and an evaluation costs about 1.5 times what it costs in this process.  The workers get
    # this process's allocator settings, so both sides run the same loss at the same speed.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        )
    client = Client(cluster)
    rows = [
        "| parameters | loss (ms) | evaluations | serial (s) | Dask, 2 processes (s) | speed-up | verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    try:
        executor = client.get_executor()
        for n in sizes:
            p = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
            _, t_loss = median_time(lambda p=p: _slow_loss(p), 5, time.perf_counter)
            gc.check(_slow_loss, p, mode="full", executor=executor)  # workers import torch
            serial, t_serial = median_time(
                lambda p=p: gc.check(_slow_loss, p, mode="full"), repeats, time.perf_counter
            )
            spread, t_dask = median_time(
                lambda p=p: gc.check(_slow_loss, p, mode="full", executor=executor),
                repeats,
                time.perf_counter,
            )
            rows.append(
                f"| {n} | {t_loss * 1e3:.1f} | {serial.nfev} | {t_serial:.3f} | {t_dask:.3f} | "
                f"{t_serial / t_dask:.2f} x | {serial.verdict} / {spread.verdict} |"
            )
    finally:
        client.close()
        cluster.close()
    return rows


def row_mlp(repeats: int, quick: bool) -> list[str]:
    """Full sweep of a 64-80-10 torch MLP (6,010 parameters) against gradcheck's slow mode."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, dtype=torch.float64, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 80), nn.Tanh(), nn.Linear(80, 10)).double()
    names = [name for name, _ in net.named_parameters()]

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    def loss_of_tensors(*tensors: torch.Tensor) -> torch.Tensor:
        return loss(dict(zip(names, tensors)))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    params = {name: p.detach() for name, p in net.named_parameters()}
    runs = 1 if quick else repeats
    ok, t_ref = median_time(
        lambda: torch.autograd.gradcheck(loss_of_tensors, inputs, raise_exception=False), runs
    )
    module, t_module = median_time(
        lambda: gc.check(lambda: F.cross_entropy(net(x), y), net, mode="full", progress=False), runs
    )
    functional, t_functional = median_time(lambda: gc.check(loss, params, mode="full", progress=False), runs)
    return [
        "| loss | gradcheck slow (s) | gc full sweep (s) | ratio | verdicts |",
        "|---|---|---|---|---|",
        f"| loss() over the module | {t_ref:.2f} | {t_module:.2f} | {t_module / t_ref:.2f} x | "
        f"{'pass' if ok else 'fail'} / {module.verdict} |",
        f"| functional loss(p) | {t_ref:.2f} | {t_functional:.2f} | {t_functional / t_ref:.2f} x | "
        f"{'pass' if ok else 'fail'} / {functional.verdict} |",
    ]


def _rss_now() -> int:
    """Resident memory of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_above(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """``fn()``, its time (by :data:`CLOCK`, as the unit it is divided by), and its peak memory.

    The peak is the process's resident memory above that before ``fn``:
    Linux's high-water mark (``VmHWM``), reset just before ``fn`` runs
    (writing 5 to ``/proc/self/clear_refs``).
    """
    base = _rss_now()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = CLOCK()
    out = fn()
    seconds = CLOCK() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return out, seconds, peak - base


def _warm_up_fast_mode() -> None:
    """Both tools once on a small float32 MLP: what a process pays on its first check goes here.

    The first float64 matrix products of a process and the first pass through
    the libraries' own code cost time that belongs to neither tool's check
    (a test suite pays it once): without this, whichever tool runs first
    carries it.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    small = nn.Sequential(nn.Linear(25, 40), nn.Tanh(), nn.Linear(40, 10))
    x = torch.randn(8, 25)
    y = torch.randint(0, 10, (8,))
    gc.check(lambda: F.cross_entropy(small(x), y), small, mode="fast", progress=False)
    names = [name for name, _ in small.named_parameters()]
    params = [p.detach().double().requires_grad_(True) for p in small.parameters()]

    def of_tensors(*tensors: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(small, dict(zip(names, tensors)), (x.double(),)), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.autograd.gradcheck(of_tensors, tuple(params), fast_mode=True, raise_exception=False)


def row_fast10m(repeats: int, quick: bool) -> list[str]:
    """Fast mode on a 10M-parameter torch MLP: evaluations, forward+backward units, time, peak memory.

    The model (float32, 2500-4000-10, one batch of 8) is checked as its user
    would: ``gc.check(loss, model, mode="fast")`` with ``loss()`` reading the
    module, once with autograd's gradient and twice with one entry of the
    first weight's gradient 1.5 times too large: made so by a hook (which
    returns a changed copy of the gradient, as hooks must: one more gradient
    held while autograd runs) and by a custom ``autograd.Function`` for the
    first layer whose backward gets that entry wrong.  Units: one
    forward+backward of the model as the user runs it (float32), measured in
    the same run; the other side: ``torch.autograd.gradcheck(fast_mode=True)``
    on float64 copies of the parameters.  Peak memory above the process, in
    units of the parameters' float64 bytes (8 n).  ``--quick``: 1M parameters.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    width = 400 if quick else 4000
    net = nn.Sequential(nn.Linear(2500, width), nn.Tanh(), nn.Linear(width, 10))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2500, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    n = sum(p.numel() for p in net.parameters())
    names = [name for name, _ in net.named_parameters()]

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(x), y)

    def fwd_bwd() -> None:
        net.zero_grad(set_to_none=True)
        loss().backward()

    fwd_bwd()
    _, t_fb = median_time(fwd_bwd, 5)
    net.zero_grad(set_to_none=True)
    wrong = (1, 2)
    _warm_up_fast_mode()

    def one_wrong(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[wrong] *= 1.5
        return grad

    class WrongLinear(torch.autograd.Function):
        """The first layer, its weight's gradient wrong in one entry (a bug in a custom backward)."""

        @staticmethod
        def forward(ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(inputs, weight)
            return F.linear(inputs, weight, bias)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
            inputs, weight = ctx.saved_tensors
            grad_weight = grad.T @ inputs.to(grad.dtype)
            grad_weight[wrong] *= 1.5
            grad_inputs = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
            return grad_inputs, grad_weight, grad.sum(0)

    def custom_loss() -> torch.Tensor:
        hidden = torch.tanh(WrongLinear.apply(x, net[0].weight, net[0].bias))
        return F.cross_entropy(net[2](hidden), y)

    rows = [
        f"{n:,} parameters (float32), one forward+backward {t_fb * 1e3:.1f} ms; memory in units of "
        f"8 n = {8 * n / 2**20:.0f} MiB",
        "",
        "| case | tool | verdict | evaluations | time (s) | forward+backward units | peak memory above the process |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in ("correct gradient", "one wrong entry", "one wrong entry, in a custom Function's backward"):
        hook = net[0].weight.register_hook(one_wrong) if case == "one wrong entry" else None
        checked = custom_loss if "custom" in case else loss
        try:
            report, seconds, peak = _peak_above(
                lambda checked=checked: gc.check(checked, net, mode="fast", progress=False)
            )
        finally:
            if hook is not None:
                hook.remove()
        named = ""
        failing = [b for b in report.blocks if b.verdict == "fail"]
        if failing:
            named = (
                f" (`{failing[0].name}{list(failing[0].worst_index or ())}`; wrong: `0.weight{list(wrong)}`)"
            )
        rows.append(
            f"| {case} | gc fast mode | {report.verdict}{named} | {report.nfev} | {seconds:.2f} | "
            f"{seconds / t_fb:.0f} | {peak / (8 * n):.2f} x |"
        )
    params = [p.detach().double().requires_grad_(True) for p in net.parameters()]
    x64 = x.double()

    def of_tensors(*tensors: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(net, dict(zip(names, tensors)), (x64,)), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, seconds, peak = _peak_above(
            lambda: torch.autograd.gradcheck(of_tensors, tuple(params), fast_mode=True, raise_exception=False)
        )
    rows.append(
        f"| correct gradient | gradcheck fast mode (float64 copy made beforehand) | {'pass' if ok else 'fail'} | - | "
        f"{seconds:.2f} | {seconds / t_fb:.0f} | {peak / (8 * n):.2f} x |"
    )
    return rows


def _numpy_mlp(width: int) -> tuple[dict[str, np.ndarray], Callable[..., float], Callable[..., Any]]:
    """A float64 numpy MLP 2500-``width``-10 on one batch of 8: parameters, loss and handwritten gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 2500))
    y = rng.integers(0, 10, 8)
    params = {
        "W1": rng.standard_normal((2500, width)) / 50.0,
        "b1": np.zeros(width),
        "W2": rng.standard_normal((width, 10)) / np.sqrt(width),
        "b2": np.zeros(10),
    }

    def forward(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ p["W1"] + p["b1"])
        z = h @ p["W2"] + p["b2"]
        z = z - z.max(axis=1, keepdims=True)
        return h, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)

    def loss(p: dict[str, np.ndarray]) -> float:
        _, q = forward(p)
        return float(-np.mean(np.log(q[np.arange(8), y])))

    def gradient(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h, q = forward(p)
        dz = q.copy()
        dz[np.arange(8), y] -= 1.0
        dz /= 8
        dh = (dz @ p["W2"].T) * (1 - h**2)
        return {"W1": x.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ dz, "b2": dz.sum(axis=0)}

    return params, loss, gradient


def row_numpy10m(repeats: int, quick: bool) -> list[str]:
    """Fast mode on 10M numpy parameters with a handwritten gradient: one vector, and an MLP.

    ``gc.check(loss, params, grad, mode="fast")`` on two float64 problems,
    with the right gradient and with one entry of it 1.5 times too large:
    one 10^7-entry vector with ``0.5 x.x + c.x`` (the loss allocates
    nothing), and an MLP 2500-4000-10 (one batch of 8, a dict of four
    arrays) whose gradient comes from its handwritten backward pass.  Units:
    one loss evaluation plus one gradient.  The other side:
    ``scipy.optimize.check_grad(direction="random")`` on the flat vector (one
    random direction, one difference; it returns the size of the mismatch
    and leaves the judgement to its user).  Peak memory above the process, in
    units of the parameters' bytes (8 n).  ``--quick``: 10^6 parameters.
    """
    # a process's first check pays for first calls that belong to no check: a small one first
    gc.check(lambda p: float(np.sum(p**2)), np.ones(1000), 2 * np.ones(1000), mode="fast", progress=False)
    size = 10**6 if quick else 10**7
    rng = np.random.default_rng(0)
    c = rng.standard_normal(size)
    vector = rng.standard_normal(size)

    def quadratic(x: np.ndarray) -> float:
        return 0.5 * float(np.dot(x, x)) + float(np.dot(c, x))

    mlp, mlp_loss, mlp_gradient = _numpy_mlp(400 if quick else 4000)
    problems: list[tuple[str, Any, Callable[..., float], Callable[..., Any], tuple[Any, ...]]] = [
        (f"one vector of {size:,} entries", vector, quadratic, lambda x: x + c, (12345,)),
        ("MLP 2500-4000-10, a dict of four arrays", mlp, mlp_loss, mlp_gradient, ("W1", (1, 2))),
    ]
    rows = [
        "| parameters | case | tool | verdict | evaluations | time (s) | forward+backward units | peak memory above the process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for problem in problems:
        rows += _numpy10m_rows(*problem)
    return rows


def _numpy10m_rows(
    label: str, params: Any, loss: Callable[..., float], gradient: Callable[..., Any], wrong: tuple[Any, ...]
) -> list[str]:
    """The rows of :func:`row_numpy10m` for one problem: gc correct and wrong, then scipy."""
    from scipy.optimize import check_grad

    leaves = params if isinstance(params, dict) else {"": params}
    n = sum(v.size for v in leaves.values())
    grads = gradient(params)

    def fwd_bwd() -> None:
        loss(params)
        gradient(params)

    _, t_fb = median_time(fwd_bwd, 5)
    head = f"{label} ({n:,}; one forward+backward {t_fb * 1e3:.1f} ms)"
    rows = []
    for case in ("correct gradient", "one wrong entry"):
        given = grads
        if case == "one wrong entry" and isinstance(grads, dict):
            given = dict(grads)
            given[wrong[0]] = grads[wrong[0]].copy()
            given[wrong[0]][wrong[1]] *= 1.5
        elif case == "one wrong entry":
            given = grads.copy()
            given[wrong] *= 1.5
        report, seconds, peak = _peak_above(
            lambda given=given: gc.check(loss, params, given, mode="fast", progress=False)
        )
        failing = [b for b in report.blocks if b.verdict == "fail"]
        named = f" (`{failing[0].name}{list(failing[0].worst_index or ())}`)" if failing else ""
        rows.append(
            f"| {head} | {case} | gc fast mode | {report.verdict}{named} | {report.nfev} | {seconds:.2f} | "
            f"{seconds / t_fb:.0f} | {peak / (8 * n):.2f} x |"
        )
    keys = list(leaves)
    shapes = [leaves[k].shape for k in keys]
    cuts = np.cumsum([0] + [leaves[k].size for k in keys])
    x0 = np.concatenate([leaves[k].ravel() for k in keys])
    flat_grad = np.concatenate([np.ravel(grads[k] if isinstance(grads, dict) else grads) for k in keys])

    def flat_loss(v: np.ndarray) -> float:
        if not isinstance(params, dict):
            return loss(v)
        return loss({k: v[a:b].reshape(s) for k, a, b, s in zip(keys, cuts[:-1], cuts[1:], shapes)})

    mismatch, seconds, peak = _peak_above(
        lambda: check_grad(flat_loss, lambda v: flat_grad, x0, direction="random", seed=0)
    )
    rows.append(
        f"| {head} | correct gradient | scipy check_grad, one random direction (flat vectors made "
        f"beforehand) | mismatch {mismatch:.2g} | - | {seconds:.2f} | {seconds / t_fb:.0f} | {peak / (8 * n):.2f} x |"
    )
    return rows


def row_jax_mlp(repeats: int, quick: bool) -> list[str]:
    """Full sweep of the 5,410-parameter digits MLP in JAX against a hand-written ``jit(vmap)`` sweep.

    The hand-written sweep is what a JAX user would write: central differences
    of the flat float64 loss at every coordinate, the shifted points built
    inside one compiled ``jax.vmap`` per chunk of coordinates, warm (compiled
    beforehand), at the best of several chunk sizes; gc checks the same float32
    model (evaluated in float64), after one warm-up check of the same program.
    """
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from jax_sweep import network_loss, problem

    from gradcheck_core.adapters.jax import x64

    params, X, Y = problem(jnp.float32, 64 if quick else 256)
    n = sum(int(np.size(v)) for v in params.values())

    def loss(p: Any) -> Any:
        return network_loss(p, X, Y)

    gc.check(loss, params, mode="full")  # compiles what a second check reuses
    report, t_gc = median_time(lambda: gc.check(loss, params, mode="full"), repeats)
    timings = []
    with x64():
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        flat, unravel = ravel_pytree(p64)
        X64, Y64 = jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64)

        def f(z: Any) -> Any:
            return network_loss(unravel(z), X64, Y64)

        steps = 1e-6 * jnp.maximum(1.0, jnp.abs(flat))

        def column(i: Any) -> Any:
            h = steps[i]
            return (f(flat.at[i].add(h)) - f(flat.at[i].add(-h))) / (2 * h)

        gradient = jax.jit(jax.grad(f))
        for chunk in (16, 32, 64, 128, 256, 512):
            columns = jax.jit(jax.vmap(column))

            def sweep(chunk: int = chunk, columns: Any = columns) -> Any:
                g = np.asarray(gradient(flat))
                numeric = np.concatenate(
                    [np.asarray(columns(jnp.arange(s, min(n, s + chunk)))) for s in range(0, n, chunk)]
                )
                return float(np.max(np.abs(numeric - g)))

            sweep()  # compile both block sizes
            _, t = median_time(sweep, repeats)
            timings.append((t, chunk))
    t_hand, best = min(timings)
    return [
        "| parameters | gc full sweep (s) | evaluations | hand-written jit(vmap) sweep (s) | best chunk | gc / hand-written | verdict |",
        "|---|---|---|---|---|---|---|",
        f"| {n} | {t_gc:.3f} | {report.nfev} | {t_hand:.3f} | {best} | {t_gc / t_hand:.2f} x | {report.verdict} |",
    ]


ROWS = {
    "function": row_function,
    "outputs": row_outputs,
    "numpy": row_numpy,
    "dask": row_dask,
    "mlp": row_mlp,
    "fast10m": row_fast10m,
    "numpy10m": row_numpy10m,
    "jaxmlp": row_jax_mlp,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, for a first look")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma separated, of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall time or this process's CPU time"
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        "Medians of",
        args.repeats,
        "runs,",
        "CPU time of this process" if args.clock == "cpu" else "wall time",
        "(the Dask row: wall time), one thread per framework (a shared machine: noisy).",
    )
    gc.check_function(lambda x: x * x, np.ones(3), vjp=lambda u, x: 2 * x * u)  # imports, first calls
    for name in args.rows.split(","):
        print(f"\n### {name}\n")
        print("\n".join(ROWS[name](args.repeats, args.quick)))


if __name__ == "__main__":
    main()
