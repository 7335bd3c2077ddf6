"""PyTorch's operator database, checked by torch.autograd.gradcheck and by gc.check_function.

Every differentiable operator of ``op_db`` (PyTorch's OpInfo database), up to
three samples each (inputs of at most 2,000 elements), with the function
built the way PyTorch's own gradient tests build it: the tensors that require
grad are the inputs, the rest of the sample is held fixed, in-place variants
work on a clone, and ``sample.output_process_fn_grad`` picks the outputs to
differentiate.  Both tools check the same function at the same inputs;
gradcheck runs with its defaults plus ``check_undefined_grad=True`` and, where
the operator supports forward mode, ``check_forward_ad=True``.

Prints pass / fail / inconclusive / error per tool, the time and the function
evaluations of each, and every sample where they disagree, with the reason
(gradcheck's message, gc's finding).

Usage::

    python benchmarks/torch_opinfo.py                      # float64, every op
    python benchmarks/torch_opinfo.py --dtype float32
    python benchmarks/torch_opinfo.py --quick              # every 10th op
    python benchmarks/torch_opinfo.py --ops cov,polar --json out.json

Needs ``expecttest`` (imported by ``torch.testing._internal``).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from itertools import chain
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

import gradcheck_core as gc

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _table import Outcome, Row, SampleTimeout, disagreement_line, first_line, summary, time_limit

MAX_ELEMENTS = 2000
SAMPLES_PER_OP = 3


def _is_tensor_list(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, torch.Tensor) for v in value)
    )


def build_function(op: Any, variant: Callable[..., Any], sample: Any) -> tuple[Callable[..., Any], tuple]:
    """The function of the tensors that require grad, and those tensors (as test_ops_gradients does)."""
    if _is_tensor_list(sample.input):
        everything = chain(sample.input, sample.args, sample.kwargs.values())
    else:
        everything = chain((sample.input,), sample.args, sample.kwargs.values())
    grad_args = tuple(x for x in everything if isinstance(x, torch.Tensor) and x.requires_grad)

    def recompose(inputs: tuple, value: Any, k: int) -> tuple[Any, int]:
        if _is_tensor_list(value):
            out = []
            for x in value:
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    out.append(inputs[k])
                    k += 1
                else:
                    out.append(x)
            return out, k
        if isinstance(value, torch.Tensor) and value.requires_grad:
            return inputs[k], k + 1
        return value, k

    def fn(*inputs: Any) -> Any:
        k = 0
        first, k = recompose(inputs, sample.input, k)
        positional = [first]
        for a in sample.args:
            value, k = recompose(inputs, a, k)
            positional.append(value)
        kwargs = {}
        for name, v in sample.kwargs.items():
            kwargs[name], k = recompose(inputs, v, k)
        output = op.gradcheck_wrapper(variant, *positional, **kwargs)
        if sample.output_process_fn_grad is not None:
            return sample.output_process_fn_grad(output)
        return output

    return fn, grad_args


def _counted(fn: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    calls = [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return fn(*args)

    return counted, calls


def run_gradcheck(op: Any, fn: Callable[..., Any], args: tuple, limit: float) -> Outcome:
    counted, calls = _counted(fn)
    start = time.perf_counter()
    try:
        with time_limit(limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.autograd.gradcheck(
                counted,
                args,
                nondet_tol=op.gradcheck_nondet_tol,
                check_undefined_grad=True,
                check_forward_ad=bool(op.supports_forward_ad),
            )
        return Outcome("pass", time.perf_counter() - start, calls[0])
    except GradcheckError as exc:
        return Outcome("fail", time.perf_counter() - start, calls[0], first_line(exc))
    except SampleTimeout as exc:
        return Outcome("timeout", time.perf_counter() - start, calls[0], str(exc))
    except Exception as exc:
        return Outcome(
            "error", time.perf_counter() - start, calls[0], f"{type(exc).__name__}: {first_line(exc)}"
        )


def run_gc(fn: Callable[..., Any], args: tuple, limit: float) -> tuple[Outcome, list[str]]:
    start = time.perf_counter()
    try:
        with time_limit(limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = gc.check_function(fn, *args)
    except SampleTimeout as exc:
        return Outcome("timeout", time.perf_counter() - start, 0, str(exc)), []
    except Exception as exc:
        return Outcome(
            "error", time.perf_counter() - start, 0, f"{type(exc).__name__}: {first_line(exc)}"
        ), []
    reason = ""
    if report.verdict != "pass":
        blocks = [f"{b.name} {b.verdict}" for b in report.blocks if b.verdict != "pass"]
        findings = [
            f"{f.kind}: {f.block or ''} {first_line(f.message, 200)}"
            for f in report.findings
            if f.kind != "no_forward_mode"
        ]
        reason = "; ".join(blocks + (findings or ["(no finding)"]))
    skipped = [f"{w}: {r}" for w, r in report.skipped]
    return Outcome(report.verdict, time.perf_counter() - start, report.nfev, reason), skipped


def _numel(sample: Any) -> int:
    values = chain(
        sample.input if _is_tensor_list(sample.input) else (sample.input,),
        sample.args,
        sample.kwargs.values(),
    )
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel()
        elif _is_tensor_list(v):
            total += sum(t.numel() for t in v)
    return total


def selected_ops(names: list[str] | None, every: int) -> list[Any]:
    from torch.testing._internal.common_methods_invocations import op_db

    ops = [op for op in op_db if op.supports_autograd]
    if names:
        wanted = set(names)
        ops = [op for op in ops if op.name in wanted or _full_name(op) in wanted]
    return ops[::every]


def _full_name(op: Any) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


class Stopped(BaseException):
    """SIGTERM (``timeout``) arrived: report what was measured so far."""


def _on_term(signum: int, frame: Any) -> None:
    raise Stopped()


def run(
    ops: list[Any], dtype: torch.dtype, limit: float, rows: list[Row], out: Any = sys.stdout
) -> list[Row]:
    """Check every sample of ``ops``, appending to ``rows`` (kept when the run is stopped)."""
    for op in ops:
        if dtype not in op.supported_backward_dtypes("cpu"):
            continue
        variant = op.get_op()
        try:
            samples = op.sample_inputs("cpu", dtype, requires_grad=True)
            picked = []
            for sample in samples:
                if _numel(sample) <= MAX_ELEMENTS:
                    picked.append(sample)
                if len(picked) == SAMPLES_PER_OP:
                    break
        except Exception as exc:
            print(f"  {_full_name(op)}: samples could not be made ({type(exc).__name__}: {exc})", file=out)
            continue
        for k, sample in enumerate(picked):
            fn, args = build_function(op, variant, sample)
            if not args:
                continue
            shapes = [list(a.shape) for a in args]
            g_out = run_gradcheck(op, fn, args, limit)
            c_out, skipped = run_gc(fn, args, limit)
            row = Row(_full_name(op), str(dtype).replace("torch.", ""), k, shapes, g_out, c_out, skipped)
            rows.append(row)
            if row.disagree:
                print(disagreement_line(row, "gradcheck"), file=out, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--quick", action="store_true", help="every 10th op only (see --every)")
    parser.add_argument("--every", type=int, default=None, help="every Nth op (default 1, 10 with --quick)")
    parser.add_argument("--ops", default=None, help="comma-separated op names (name or name.variant)")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds per sample and tool")
    parser.add_argument("--json", default=None, help="write every sample's outcome to this file")
    args = parser.parse_args(argv)
    every = args.every or (10 if args.quick else 1)
    if every < 1:
        parser.error("--every must be at least 1")
    dtype = getattr(torch, args.dtype)
    ops = selected_ops(args.ops.split(",") if args.ops else None, every)
    print(
        f"torch {torch.__version__}, gradcheck-core {gc.__version__}, Python {platform.python_version()}, "
        f"{len(ops)} ops, {args.dtype}",
        flush=True,
    )
    start = time.perf_counter()
    print("disagreements as they come:", flush=True)
    rows: list[Row] = []
    complete = True
    signal.signal(signal.SIGTERM, _on_term)
    try:
        run(ops, dtype, args.limit, rows)
    except (Stopped, KeyboardInterrupt):
        complete = False
        print(f"stopped early: {len(rows)} samples measured, up to {rows[-1].op if rows else '-'}")
    print(summary(rows, args.dtype, "torch.autograd.gradcheck"))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "torch": torch.__version__,
                    "gradcheck_core": gc.__version__,
                    "dtype": args.dtype,
                    "complete": complete,
                    "rows": [asdict(r) for r in rows],
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
