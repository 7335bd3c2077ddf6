"""Peak memory of a fast-mode check, phase by phase, on two 10M-parameter torch models.

``python benchmarks/memory_phases.py [--quick]``

A thread samples the process's resident memory every millisecond while
``gc.check(loss, model, mode="fast")`` runs; the check's own steps (the
gradient, the noise probe, the directional tests of fast mode) are wrapped
so that each sample is charged to the step that was running.  Figures are in
units of the parameters' float64 bytes (8 n) above the memory before the
check.  Two models of 10M float32 parameters: one 2500 x 4000 weight (one
tensor holds almost every parameter) and ten 1000 x 1000 layers.
``--quick``: smaller layers.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import gradcheck_core as gc
from gradcheck_core import differences as fd

# the check's module (``gradcheck_core.check`` the attribute is the function check())
check_module = sys.modules["gradcheck_core.check"]


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _Phases:
    """Resident memory sampled by a thread, each sample charged to the phase running."""

    def __init__(self) -> None:
        self.phase = "the rest of the check"
        self.peaks: dict[str, int] = {}
        self.stop = False

    def sample(self) -> None:
        while not self.stop:
            r, p = _resident(), self.phase
            self.peaks[p] = max(self.peaks.get(p, 0), r)
            time.sleep(0.001)

    def wrap(self, module: Any, name: str, label: str) -> Callable[[], None]:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, self.phase = self.phase, label
            try:
                return original(*args, **kwargs)
            finally:
                self.phase = before

        setattr(module, name, wrapped)
        return lambda: setattr(module, name, original)


def _measure(net: Any, x: Any, y: Any) -> tuple[str, dict[str, float]]:
    import torch.nn.functional as F

    n = sum(p.numel() for p in net.parameters())

    def loss() -> Any:
        return F.cross_entropy(net(x), y)

    phases = _Phases()
    undo = [
        phases.wrap(check_module, "_analytic_and_dtype", "gradient"),
        phases.wrap(fd, "estimate_noise", "noise probe"),
        phases.wrap(fd, "directional", "directional tests"),
    ]
    base = _resident()
    sampler = threading.Thread(target=phases.sample, daemon=True)
    sampler.start()
    try:
        report = gc.check(loss, net, mode="fast", progress=False)
    finally:
        phases.stop = True
        sampler.join()
        for u in undo:
            u()
    return report.verdict, {k: (v - base) / (8 * n) for k, v in phases.peaks.items()}


def _mlp(widths: list[int]) -> Any:
    """Linear layers of the given widths with tanh between them."""
    from torch import nn

    layers: list[Any] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _models(quick: bool) -> dict[str, list[int]]:
    k = 10 if quick else 1
    return {
        f"one 2500 x {4000 // k} weight": [2500, 4000 // k, 10],
        f"ten {1000 // k} x {1000 // k} layers": [1000 // k] * 11,
    }


_NAMES = ["gradient", "noise probe", "directional tests", "the rest of the check"]


def _row(label: str, widths: list[int]) -> str:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = _mlp(widths)
    x = torch.randn(8, widths[0], generator=g)
    y = torch.randint(0, widths[-1], (8,), generator=g)
    n = sum(p.numel() for p in net.parameters())
    verdict, peaks = _measure(net, x, y)
    cells = " | ".join(f"{peaks[name]:.2f} x" if name in peaks else "-" for name in _NAMES)
    return f"| {label} | {n:,} | {verdict} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # one model, in this process
    args = parser.parse_args()
    models = _models(args.quick)
    if args.model is not None:
        print(_row(args.model, models[args.model]))
        return
    print("| model | parameters | verdict | " + " | ".join(_NAMES) + " |")
    print("|---|---|---|" + "---|" * len(_NAMES))
    # each model in a fresh process: memory the allocator kept from one check would hide the next one's
    for label in models:
        extra = ["--quick"] if args.quick else []
        subprocess.run([sys.executable, __file__, "--model", label, *extra], check=True)


if __name__ == "__main__":
    main()
