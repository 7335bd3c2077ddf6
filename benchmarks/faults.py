"""Fault injection at scale: how often a check restores everything and raises the right exception.

Each run builds one framework setup (numpy; torch loss(p), a module read by
loss(), tensors read by loss(); JAX compiled and eager; TensorFlow variables;
Keras loss(model) on each backend), picks a fault (the loss raises a
ValueError, returns NaN or inf, or raises KeyboardInterrupt), the call of the
loss at which it happens, full or fast mode, with or without a thread pool,
and checks afterwards that parameters and global settings are bit for bit as
before and that the caller saw the right outcome (see
``tests/fault_harness.py``).  Ctrl-C is also delivered at random lines of the
library's own code.  Prints one table per framework.

Run: ``python benchmarks/faults.py [--runs 2000] [--lines 300] [--seed 0]``.
Keras runs in one child process per backend (``--keras-runs``).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fault_harness as fh

KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy")


def run(frameworks: tuple[str, ...], runs: int, lines: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    setups = fh.setups(frameworks)
    calls: dict[tuple[str, str, bool], list[str]] = {}
    line_counts: dict[tuple[str, str], int] = {}
    rows = []
    for k in range(runs + lines):
        setup = rng.choice(setups)
        mode = rng.choice(fh.MODES)
        if k < runs:
            executor = rng.random() < 0.5
            key = (setup.name, mode, executor)
            if key not in calls:
                calls[key] = fh.count_calls(setup, mode, executor)
            n = len(calls[key])
            kind = rng.choice(fh.FAULTS)
            at = rng.randint(1, n)
            fault = fh.Fault(kind, at)
            outcome = fh.run_case(setup, mode, fault, executor)
            phase = calls[key][at - 1]
        else:
            executor = False
            only = rng.choice(((), (setup.framework + "/",))) if setup.framework in ("torch", "jax") else ()
            lkey = (setup.name + repr(only), mode)
            if lkey not in line_counts:
                line_counts[lkey] = fh.count_lines(setup, mode, only)
            at = rng.randint(1, line_counts[lkey])
            line = fh.LineInterrupt(at, only)
            outcome = fh.run_case(setup, mode, fh.Fault("off"), False, line)
            kind = "Ctrl-C at a line"
            phase = "library line" if not only else f"adapters/{only[0]} line"
        rows.append(
            {
                "framework": setup.name if setup.framework == "keras" else setup.framework,
                "setup": setup.name,
                "mode": mode,
                "executor": executor,
                "kind": kind,
                "phase": phase,
                "fired": outcome.fired,
                "restored": outcome.restored,
                "right": outcome.right,
                "what": outcome.what,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = []
    groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["framework"], r["mode"], r["executor"])].append(r)
    out.append(
        f"{'framework':<22} {'mode':<5} {'executor':<8} {'runs':>5} {'fired':>6} {'restored':>10} {'right':>10}"
    )
    for (fw, mode, ex), rs in sorted(groups.items()):
        restored = sum(r["restored"] for r in rs)
        right = sum(r["right"] for r in rs)
        fired = sum(r["fired"] for r in rs)
        out.append(
            f"{fw:<22} {mode:<5} {'threads' if ex else '-':<8} {len(rs):>5} {fired:>6} "
            f"{restored:>5}/{len(rs):<4} {right:>5}/{len(rs):<4}"
        )
    out.append("")
    kinds = Counter(r["kind"] for r in rows if r["fired"])
    phases = Counter(r["phase"] for r in rows if r["fired"])
    out.append("faults fired by kind:  " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    out.append("faults fired by phase: " + ", ".join(f"{k} {v}" for k, v in sorted(phases.items())))
    restored = sum(r["restored"] for r in rows)
    right = sum(r["right"] for r in rows)
    out.append(f"all: {len(rows)} runs, restored {restored}/{len(rows)}, right exception {right}/{len(rows)}")
    for r in rows:
        if not (r["restored"] and r["right"]):
            out.append(f"  FAILED {r['setup']} {r['mode']} {r['kind']} {r['phase']}: {r['what'][:200]}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="fault runs (numpy, torch, JAX, TensorFlow)")
    parser.add_argument("--lines", type=int, default=300, help="Ctrl-C at a random line of the library")
    parser.add_argument("--keras-runs", type=int, default=150, help="fault runs per Keras backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frameworks", default="numpy,torch,jax,tensorflow")
    args = parser.parse_args()
    frameworks = tuple(f for f in args.frameworks.split(",") if f)
    start = time.perf_counter()
    if frameworks != ("keras",):
        rows = run(frameworks, args.runs, args.lines, args.seed)
        print(table(rows))
        print(f"({time.perf_counter() - start:.0f} s)")
        if args.keras_runs and fh.available("keras"):
            for backend in KERAS_BACKENDS:
                print(f"\nKeras, KERAS_BACKEND={backend}:")
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
                cmd = [sys.executable, __file__, "--frameworks", "keras", "--runs", str(args.keras_runs)]
                cmd += [
                    "--lines",
                    str(max(1, args.keras_runs // 10)),
                    "--seed",
                    str(args.seed),
                    "--keras-runs",
                    "0",
                ]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                print(done.stdout.strip() or done.stderr[-2000:])
    else:
        rows = run(frameworks, args.runs, args.lines, args.seed)
        print(table(rows))


if __name__ == "__main__":
    main()
