"""Fast mode against a full sweep on the digits net with a forgotten L2 term.

The 64-100-10 sigmoid net on all 1,797 digits (7,510 parameters), whose
second-layer gradient leaves out the regularisation term: fast mode must find
the wrong layer (and say what is wrong) in under 2% of the time of a full
sweep, both measured in this run.
Run: ``python benchmarks/digits_fast_vs_full.py`` (the full sweep takes about a minute).
"""

from __future__ import annotations

import time

import gradcheck_core as gc
from gradcheck_core.demos import digits_l2


def main() -> None:
    try:  # one BLAS thread: steadier timings on a shared machine, the same for both modes
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    params, X, Y = digits_l2.problem()
    loss = digits_l2.cost(X, Y)
    grad = digits_l2.backward(X, Y, forget_l2_layer2=True)
    n = sum(v.size for v in params.values())
    rows = []
    for mode in ("fast", "full"):
        t0 = time.perf_counter()
        report = gc.check(loss, params, grad, mode=mode, progress=False)
        rows.append((mode, report, time.perf_counter() - t0))
    print(f"digits net, {n} parameters, {X.shape[0]} samples, layer-2 regularisation term forgotten\n")
    print(f"{'mode':6s} {'verdict':8s} {'failed':12s} {'nfev':>7s} {'seconds':>8s}  findings")
    for mode, report, seconds in rows:
        kinds = ", ".join(f"{f.kind}({f.block})" for f in report.findings)
        print(
            f"{mode:6s} {report.verdict:8s} {','.join(report.failed_blocks):12s} {report.nfev:7d} {seconds:8.2f}  {kinds}"
        )
    fast, full = rows[0], rows[1]
    print(
        f"\nfast / full: {fast[2] / full[2]:.2%} of the time, {fast[1].nfev / full[1].nfev:.2%} of the evaluations"
    )


if __name__ == "__main__":
    main()
