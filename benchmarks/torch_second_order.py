"""gc.check_function(order=2) against torch.autograd.gradgradcheck on torch's own OpInfo samples.

Every op of ``torch.testing._internal.common_methods_invocations.op_db`` that
declares ``supports_gradgrad``, float64 samples (at most 2 per op, inputs of
at most 500 elements), both tools on the same function of the sample's
differentiable tensors (samples with an empty tensor are left out).  Prints one line per sample where the tools disagree
(with the reason gc gives), then a table: pass / fail / inconclusive / error
per tool, total time, and function evaluations.

Run: ``python benchmarks/torch_second_order.py [--quick N] [--ops NAME ...]``
(``--quick N``: every Nth op).
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import gradcheck_core as gc

MAX_ELEMENTS = 500
SAMPLES_PER_OP = 2


def _cases(op: Any) -> list[tuple[str, Callable[..., Any], list[torch.Tensor]]]:
    """(label, fn, tensors): ``fn(*tensors)`` returns the floating and complex outputs of one sample."""
    cases = []
    for k, sample in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        if len(cases) >= SAMPLES_PER_OP:
            break
        parts = [sample.input, *sample.args]
        slots = [i for i, a in enumerate(parts) if isinstance(a, torch.Tensor) and a.requires_grad]
        tensors = [parts[i] for i in slots]
        if (
            not tensors
            or any(t.numel() == 0 for t in tensors)
            or sum(t.numel() for t in tensors) > MAX_ELEMENTS
        ):
            continue
        if any(t.layout != torch.strided or not t.is_floating_point() for t in tensors):
            continue
        kwargs = sample.kwargs

        def fn(
            *ts: torch.Tensor, parts: list[Any] = parts, slots: list[int] = slots, kwargs: Any = kwargs
        ) -> Any:
            args = list(parts)
            for i, t in zip(slots, ts):
                args[i] = t
            out = op(*args, **kwargs)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            outs = [
                o for o in outs if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())
            ]
            return tuple(outs) if len(outs) != 1 else outs[0]

        cases.append(
            (f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}#{k}", fn, tensors)
        )
    return cases


class Counted:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


def run_torch(fn: Callable[..., Any], tensors: list[torch.Tensor]) -> tuple[str, float, int, str]:
    counted = Counted(fn)
    start = time.perf_counter()
    try:
        ok = torch.autograd.gradgradcheck(counted, tuple(tensors), raise_exception=False)
        verdict, why = ("pass" if ok else "fail"), ""
    except Exception as exc:
        verdict, why = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return verdict, time.perf_counter() - start, counted.calls, why


def _reverse_only(report: gc.Report) -> str:
    """The verdict of the reverse-over-reverse blocks alone (what gradgradcheck checks by default)."""
    verdicts = {b.verdict for b in report.blocks if not b.name.endswith("(jvp)")}
    if report.findings_of("not_twice_differentiable"):
        return "fail"
    if not verdicts:  # nothing reverse over reverse was checked: the report's own verdict says why
        return report.verdict
    return "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"


def run_gc(fn: Callable[..., Any], tensors: list[torch.Tensor]) -> tuple[str, float, int, str, str]:
    start = time.perf_counter()
    reverse = "error"
    try:
        report = gc.check_function(fn, *tensors, order=2)
        reverse = _reverse_only(report)
        why = "; ".join(
            f"{f.kind}: {f.message[:150]}" for f in report.findings if f.kind != "no_forward_mode"
        )
        verdict, nfev = report.verdict, report.nfev
        if report.failed_blocks:
            why = f"failed {', '.join(report.failed_blocks)}; " + why
    except Exception as exc:
        verdict, nfev, why = (
            "error",
            0,
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}",
        )
    return verdict, time.perf_counter() - start, nfev, why, reverse


def _reason(why: str) -> str:
    """An error message with its numbers and quoted names blanked, to group samples by it."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", why))[:140]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", type=int, default=1, help="every Nth op only")
    parser.add_argument("--ops", nargs="*", help="op names to run")
    args = parser.parse_args()
    from torch.testing._internal.common_methods_invocations import op_db

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ops = [op for op in op_db if op.supports_gradgrad and op.supports_autograd]
    if args.ops:
        ops = [op for op in ops if op.name in args.ops]
    ops = ops[:: args.quick]
    tally: dict[str, dict[str, int]] = {"gradgradcheck": {}, "gc order=2": {}, "gc rev-over-rev": {}}
    seconds = {"gradgradcheck": 0.0, "gc order=2": 0.0}
    evals = {"gradgradcheck": 0, "gc order=2": 0}
    errors: dict[str, dict[str, list[str]]] = {}
    n = 0
    for op in ops:
        try:
            cases = _cases(op)
        except Exception:
            continue
        for label, fn, tensors in cases:
            n += 1
            t_v, t_s, t_n, t_why = run_torch(fn, tensors)
            g_v, g_s, g_n, g_why, g_rev = run_gc(fn, tensors)
            for tool, v, s, e in (("gradgradcheck", t_v, t_s, t_n), ("gc order=2", g_v, g_s, g_n)):
                tally[tool][v] = tally[tool].get(v, 0) + 1
                seconds[tool] += s
                evals[tool] += e
            tally["gc rev-over-rev"][g_rev] = tally["gc rev-over-rev"].get(g_rev, 0) + 1
            for tool, v, why in (("gradgradcheck", t_v, t_why), ("gc", g_v, g_why)):
                if v == "error":
                    errors.setdefault(tool, {}).setdefault(_reason(why), []).append(label)
            if t_v != g_v:
                note = "" if op.supports_fwgrad_bwgrad else " [op declares no forward-over-reverse support]"
                print(
                    f"DISAGREE {label}{note}: gradgradcheck={t_v} {t_why} | gc={g_v} (rev-over-rev {g_rev}) {g_why}",
                    flush=True,
                )
    for tool, reasons in errors.items():
        print(f"\n{tool} raised on {sum(map(len, reasons.values()))} samples:")
        for why, labels in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(labels):>3} x {why}: {', '.join(labels)}")
    print(f"\n{len(ops)} ops, {n} samples (float64, <= {MAX_ELEMENTS} elements, <= {SAMPLES_PER_OP} per op)")
    print(f"{'tool':<17}{'pass':>6}{'fail':>6}{'inconcl.':>10}{'error':>7}{'seconds':>10}{'evaluations':>13}")
    for tool in tally:
        t = tally[tool]
        cost = f"{seconds[tool]:>10.1f}{evals[tool]:>13}" if tool in seconds else f"{'(same run)':>23}"
        print(
            f"{tool:<17}{t.get('pass', 0):>6}{t.get('fail', 0):>6}{t.get('inconclusive', 0):>10}"
            f"{t.get('error', 0):>7}{cost}"
        )


if __name__ == "__main__":
    main()
