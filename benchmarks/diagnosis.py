"""Does the finding name the bug?  A corruption suite in full and fast mode.

Every case is a scalar loss ``mean(w * op(inputs)) + 0.05 * ||x||^2`` of a few
inputs (``x`` is the first one), in one of three frameworks:

* torch: a custom ``autograd.Function`` whose backward is the true VJP
  (from autograd on the plain op), then corrupted;
* JAX: a ``jax.custom_vjp`` whose backward is ``jax.vjp`` of the plain op,
  then corrupted;
* numpy: a handwritten gradient, then corrupted.

The corruptions, each applied to the gradient of the first input, with the
finding kind that names it:

=================  ==========================================  ==============
corruption         what the backward returns                    right kind
=================  ==========================================  ==============
scale x1.01        ``1.01 g``                                    scale
sign               ``-g``                                        sign
zeroed             ``0``                                         zero_gradient
one entry          ``g`` with one entry off by 1e-3 of max|g|    sparse_error
transposed         ``g`` with two axes swapped (square inputs)   transpose
no regulariser     ``g - 0.1 x`` (the weight decay term left out) missing_term
sum for mean       ``m g`` (m = the op's output size)            scale
=================  ==========================================  ==============

Every case is also checked uncorrupted (a false alarm is any verdict but
pass).  Prints the confusion matrix (corruption x finding kind of the first
input's block) per mode, recall (corrupted cases that fail) and false alarms.

Run: ``python benchmarks/diagnosis.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gradcheck_core as gc

LAMBDA = 0.1  # the regulariser is 0.5 * LAMBDA * ||x||^2
CORRUPTIONS = ("scale", "sign", "zeroed", "one_entry", "transposed", "no_regulariser", "sum_for_mean")
EXPECTED = {
    "scale": "scale",
    "sign": "sign",
    "zeroed": "zero_gradient",
    "one_entry": "sparse_error",
    "transposed": "transpose",
    "no_regulariser": "missing_term",
    "sum_for_mean": "scale",
}


def corrupt(kind: str, g: np.ndarray, x: np.ndarray, perm: tuple[int, ...] | None, m: int) -> np.ndarray:
    """The corrupted gradient of the first input (``g`` includes the regulariser's ``LAMBDA x``)."""
    if kind == "none":
        return g
    if kind == "scale":
        return 1.01 * g
    if kind == "sign":
        return -g
    if kind == "zeroed":
        return np.zeros_like(g)
    if kind == "one_entry":
        out = g.copy()
        k = int(np.argmax(np.abs(g)) * 7 + 3) % g.size  # some entry, not always the largest
        out.reshape(-1)[k] += 1e-3 * float(np.max(np.abs(g)))
        return out
    if kind == "transposed":
        assert perm is not None
        return np.transpose(g, perm)
    if kind == "no_regulariser":
        return g - LAMBDA * x
    if kind == "sum_for_mean":
        return m * g
    raise ValueError(kind)


@dataclass
class Case:
    """One op: the plain function of numpy inputs and where a transpose makes sense."""

    name: str
    framework: str
    op: Callable[..., Any]
    shapes: list[tuple[int, ...]]
    perm: tuple[int, ...] | None = None  # axes swapped by the "transposed" corruption
    positive: bool = False  # inputs must be positive (log, sqrt, ...)
    grad: Callable[..., list[np.ndarray]] | None = None  # numpy: the handwritten VJP of op

    def output_size(self) -> int:
        if self.framework == "numpy":
            return int(np.size(self.op(*self.inputs())))
        if self.framework == "torch":
            import torch

            return int(self.op(*[torch.tensor(x) for x in self.inputs()]).numel())
        import jax.numpy as jnp

        return int(np.size(self.op(*[jnp.asarray(x) for x in self.inputs()])))

    def inputs(self) -> list[np.ndarray]:
        # a seed from the name's bytes: the same inputs in every process (hash() of a str is salted)
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        xs = [rng.standard_normal(s) for s in self.shapes]
        return [np.abs(x) + 0.5 for x in xs] if self.positive else xs


# ----------------------------------------------------------------------------- torch


def torch_cases() -> list[Case]:
    import torch
    import torch.nn.functional as F

    def c(name: str, op: Callable[..., Any], shapes: list[tuple[int, ...]], **kw: Any) -> Case:
        return Case(name, "torch", op, shapes, **kw)

    return [
        c("matmul", lambda a, b: a @ b, [(4, 4), (4, 3)], perm=(1, 0)),
        c("matmul_rhs", lambda b, a: a @ b, [(4, 4), (3, 4)], perm=(1, 0)),
        c("bmm", torch.bmm, [(3, 4, 4), (3, 4, 2)], perm=(0, 2, 1)),
        c(
            "einsum_bij",
            lambda a, b: torch.einsum("bij,bjk->bik", a, b),
            [(2, 3, 3), (2, 3, 4)],
            perm=(0, 2, 1),
        ),
        c("linear", lambda w, x, b: F.linear(x, w, b), [(5, 5), (3, 5), (5,)], perm=(1, 0)),
        c(
            "conv2d_weight",
            lambda w, x: F.conv2d(x, w, padding=1),
            [(3, 3, 3, 3), (2, 3, 5, 5)],
            perm=(1, 0, 2, 3),
        ),
        c("conv2d_input", lambda x, w: F.conv2d(x, w), [(2, 2, 5, 5), (3, 2, 3, 3)], perm=(0, 1, 3, 2)),
        c("conv1d", lambda w, x: F.conv1d(x, w), [(3, 3, 3), (2, 3, 7)], perm=(1, 0, 2)),
        c("avg_pool2d", lambda x: F.avg_pool2d(torch.sin(x), 2), [(2, 2, 6, 6)], perm=(0, 1, 3, 2)),
        c("max_pool2d", lambda x: F.max_pool2d(x, 2), [(2, 2, 6, 6)], perm=(0, 1, 3, 2)),
        c("group_norm", lambda x: F.group_norm(x, 2), [(2, 4, 4, 4)], perm=(0, 1, 3, 2)),
        c("layer_norm", lambda x: F.layer_norm(x, (5,)), [(5, 5)], perm=(1, 0)),
        c("batch_norm", lambda x: F.batch_norm(x, None, None, training=True), [(6, 6)], perm=(1, 0)),
        c("softmax", lambda x: torch.softmax(x, -1), [(4, 4)], perm=(1, 0)),
        c("log_softmax", lambda x: torch.log_softmax(x, -1), [(4, 4)], perm=(1, 0)),
        c("tanh", torch.tanh, [(4, 4)], perm=(1, 0)),
        c("sigmoid", torch.sigmoid, [(3, 3, 3)], perm=(2, 1, 0)),
        c("exp", torch.exp, [(6,)]),
        c("log", torch.log, [(6,)], positive=True),
        c("cumsum", lambda x: torch.cumsum(x, 1), [(4, 4)], perm=(1, 0)),
        c("logsumexp", lambda x: torch.logsumexp(x, 1), [(5, 5)], perm=(1, 0)),
        c("inverse", torch.linalg.inv, [(4, 4)], perm=(1, 0)),
        c(
            "solve",
            lambda a, b: torch.linalg.solve(a + 4 * torch.eye(4, dtype=a.dtype), b),
            [(4, 4), (4, 2)],
            perm=(1, 0),
        ),
        c(
            "attention",
            lambda q, k, v: torch.softmax(q @ k.transpose(-1, -2), -1) @ v,
            [(2, 4, 4), (2, 4, 4), (2, 4, 4)],
            perm=(0, 2, 1),
        ),
        c(
            "cross_entropy",
            lambda x: F.cross_entropy(x, torch.tensor([0, 2, 1, 3]), reduction="none"),
            [(4, 4)],
            perm=(1, 0),
        ),
        c("kron", torch.kron, [(3, 3), (2, 2)], perm=(1, 0)),
    ]


def torch_loss(case: Case, kind: str) -> tuple[Callable[..., Any], Any]:
    import torch

    xs = [torch.tensor(x, dtype=torch.float64) for x in case.inputs()]
    with torch.no_grad():
        out0 = case.op(*xs)
    w = torch.tensor(np.random.default_rng(1).standard_normal(tuple(out0.shape)), dtype=torch.float64)
    m = out0.numel()

    def plain(*args: Any) -> Any:
        return torch.mean(w * case.op(*args)) + 0.5 * LAMBDA * torch.sum(args[0] ** 2)

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Any:
            ctx.save_for_backward(*args)
            with torch.no_grad():
                return plain(*args)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            args = [a.detach().requires_grad_() for a in ctx.saved_tensors]
            with torch.enable_grad():
                grads = list(torch.autograd.grad(plain(*args), args))
            g0 = corrupt(kind, grads[0].numpy(), args[0].detach().numpy(), case.perm, m)
            grads[0] = torch.tensor(np.ascontiguousarray(g0), dtype=torch.float64)
            return tuple(g * gi for gi in grads)

    params = {f"x{i}": x.clone().requires_grad_() for i, x in enumerate(xs)}
    return (lambda p: Op.apply(*p.values())), params


# ----------------------------------------------------------------------------- jax


def jax_cases() -> list[Case]:
    import jax
    import jax.numpy as jnp

    def c(name: str, op: Callable[..., Any], shapes: list[tuple[int, ...]], **kw: Any) -> Case:
        return Case(name, "jax", op, shapes, **kw)

    def conv(x: Any, w: Any) -> Any:
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")

    return [
        c("jnp.matmul", jnp.matmul, [(4, 4), (4, 3)], perm=(1, 0)),
        c(
            "jnp.einsum_batched",
            lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
            [(2, 3, 3), (2, 3, 2)],
            perm=(0, 2, 1),
        ),
        c("lax.conv", lambda w, x: conv(x, w), [(2, 2, 3, 3), (1, 2, 5, 5)], perm=(0, 1, 3, 2)),
        c("jax.nn.softmax", lambda x: jax.nn.softmax(x, axis=-1), [(4, 4)], perm=(1, 0)),
        c("jax.nn.gelu", jax.nn.gelu, [(3, 3, 3)], perm=(0, 2, 1)),
        c("jax.nn.logsumexp", lambda x: jax.nn.logsumexp(x, axis=0), [(5, 5)], perm=(1, 0)),
        c("jnp.linalg.inv", jnp.linalg.inv, [(4, 4)], perm=(1, 0)),
        c("jnp.cumprod", lambda x: jnp.cumprod(x, axis=1), [(3, 3)], perm=(1, 0)),
        c("jnp.sin", jnp.sin, [(7,)]),
        c("jnp.tanh_layer", lambda w, x: jnp.tanh(x @ w), [(4, 4), (3, 4)], perm=(1, 0)),
        c("jnp.sqrt", jnp.sqrt, [(6,)], positive=True),
        c(
            "reduce_window_avg",
            lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"),
            [(1, 2, 4, 4)],
            perm=(0, 1, 3, 2),
        ),
    ]


def jax_loss(case: Case, kind: str) -> tuple[Callable[..., Any], Any]:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # this script's own setting, for float64 inputs
    xs = [jnp.asarray(x, dtype=jnp.float64) for x in case.inputs()]
    out0 = case.op(*xs)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(out0.shape), dtype=jnp.float64)
    m = int(np.prod(out0.shape))

    def plain(*args: Any) -> Any:
        return jnp.mean(w * case.op(*args)) + 0.5 * LAMBDA * jnp.sum(args[0] ** 2)

    @jax.custom_vjp
    def op(*args: Any) -> Any:
        return plain(*args)

    def fwd(*args: Any) -> Any:
        return plain(*args), args

    def bwd(args: Any, g: Any) -> Any:
        grads = list(jax.grad(plain, argnums=tuple(range(len(args))))(*args))
        g0 = jax.pure_callback(
            lambda a, x: corrupt(kind, np.asarray(a), np.asarray(x), case.perm, m),
            jax.ShapeDtypeStruct(grads[0].shape, grads[0].dtype),
            grads[0],
            args[0],
        )
        grads[0] = g0
        return tuple(g * gi for gi in grads)

    op.defvjp(fwd, bwd)
    params = {f"x{i}": x for i, x in enumerate(xs)}
    return (lambda p: op(*p.values())), params


# ----------------------------------------------------------------------------- numpy


def numpy_cases() -> list[Case]:
    def c(
        name: str, op: Callable[..., Any], grad: Callable[..., Any], shapes: list[tuple[int, ...]], **kw: Any
    ) -> Case:
        return Case(name, "numpy", op, shapes, grad=grad, **kw)

    X = np.random.default_rng(3).standard_normal((6, 4))
    B = np.random.default_rng(4).standard_normal((4, 4))

    def tanh_layer_grad(u: np.ndarray, W: np.ndarray) -> list[np.ndarray]:
        h = np.tanh(X @ W)
        return [X.T @ (u * (1 - h**2))]

    def mlp(W1: np.ndarray, W2: np.ndarray) -> np.ndarray:
        return np.tanh(X @ W1) @ W2

    def mlp_grad(u: np.ndarray, W1: np.ndarray, W2: np.ndarray) -> list[np.ndarray]:
        h = np.tanh(X @ W1)
        return [X.T @ ((u @ W2.T) * (1 - h**2)), h.T @ u]

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def softmax_grad(u: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
        s = softmax(z)
        return [s * (u - np.sum(u * s, axis=1, keepdims=True))]

    def batched(a: np.ndarray) -> np.ndarray:
        return np.einsum("bij,bjk->bik", a, a)

    def batched_grad(u: np.ndarray, a: np.ndarray) -> list[np.ndarray]:
        return [np.einsum("bik,bjk->bij", u, a) + np.einsum("bji,bjk->bik", a, u)]

    def quad(A: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.array([v @ A @ v])

    def quad_grad(u: np.ndarray, A: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
        return [u[0] * np.outer(v, v), u[0] * (A + A.T) @ v]

    def factor(U: np.ndarray) -> np.ndarray:
        return (U @ B - X[:4]) ** 2

    def factor_grad(u: np.ndarray, U: np.ndarray) -> list[np.ndarray]:
        return [(2 * u * (U @ B - X[:4])) @ B.T]

    def channels(x: np.ndarray) -> np.ndarray:
        return np.sin(x) * np.arange(1, x.shape[1] + 1)[None, :, None, None] + x[:, :, ::-1, :] ** 2

    def channels_grad(u: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        k = np.arange(1, x.shape[1] + 1)[None, :, None, None]
        return [u * np.cos(x) * k + (2 * u[:, :, ::-1, :] * x)]

    return [
        c("np.tanh_layer", lambda W: np.tanh(X @ W), tanh_layer_grad, [(4, 4)], perm=(1, 0)),
        c("np.mlp", mlp, mlp_grad, [(4, 4), (4, 3)], perm=(1, 0)),
        c("np.softmax", softmax, softmax_grad, [(5, 5)], perm=(1, 0)),
        c("np.batched_square", batched, batched_grad, [(2, 3, 3)], perm=(0, 2, 1)),
        c("np.quadratic_form", quad, quad_grad, [(4, 4), (4,)], perm=(1, 0)),
        c("np.factorisation", factor, factor_grad, [(4, 4)], perm=(1, 0)),
        c("np.channels_4d", channels, channels_grad, [(2, 2, 3, 3)], perm=(1, 0, 2, 3)),
        c("np.exp", np.exp, lambda u, x: [u * np.exp(x)], [(8,)]),
        c(
            "np.log1p_sq",
            lambda x: np.log1p(x**2),
            lambda u, x: [u * 2 * x / (1 + x**2)],
            [(3, 3)],
            perm=(1, 0),
        ),
    ]


def numpy_loss(case: Case, kind: str) -> tuple[Callable[..., Any], Any, Callable[..., Any]]:
    xs = case.inputs()
    out0 = case.op(*xs)
    w = np.random.default_rng(1).standard_normal(np.shape(out0))
    m = int(np.size(out0))
    names = [f"x{i}" for i in range(len(xs))]

    def loss(p: dict[str, np.ndarray]) -> float:
        args = [p[k] for k in names]
        return float(np.mean(w * case.op(*args)) + 0.5 * LAMBDA * np.sum(args[0] ** 2))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [p[k] for k in names]
        assert case.grad is not None
        gs = [g / m for g in case.grad(w, *args)]
        gs[0] = gs[0] + LAMBDA * args[0]
        gs[0] = corrupt(kind, gs[0], args[0], case.perm, m)
        return dict(zip(names, gs))

    return loss, dict(zip(names, xs)), grad


# ----------------------------------------------------------------------------- driver


def run_case(case: Case, kind: str, mode: str) -> tuple[str, str]:
    """(verdict, finding kind of the first input's block or '-')."""
    if case.framework == "torch":
        loss, params = torch_loss(case, kind)
        report = gc.check(loss, params, mode=mode, progress=False)
    elif case.framework == "jax":
        loss, params = jax_loss(case, kind)
        report = gc.check(loss, params, mode=mode, progress=False)
    else:
        loss, params, grad = numpy_loss(case, kind)
        report = gc.check(loss, params, grad, mode=mode, progress=False)
    first = report.blocks[0].name
    kinds = [f.kind for f in report.findings if f.block == first]
    return report.verdict, (kinds[0] if kinds else "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every third op only")
    parser.add_argument("--frameworks", default="torch,jax,numpy")
    args = parser.parse_args()
    cases: list[Case] = []
    wanted = args.frameworks.split(",")
    if "torch" in wanted:
        cases += torch_cases()
    if "jax" in wanted:
        cases += jax_cases()
    if "numpy" in wanted:
        cases += numpy_cases()
    if args.quick:
        cases = cases[::3]
    counts = Counter(c.framework for c in cases)
    print(f"{len(cases)} ops: " + ", ".join(f"{n} {fw}" for fw, n in counts.items()))
    for mode in ("full", "fast"):
        start = time.perf_counter()
        matrix: dict[str, Counter[str]] = defaultdict(Counter)
        caught: Counter[str] = Counter()
        total: Counter[str] = Counter()
        alarms, misses, wrong = [], [], []
        for case in cases:
            verdict, _ = run_case(case, "none", mode)
            if verdict != "pass":
                alarms.append(f"{case.name} ({verdict})")
            for kind in CORRUPTIONS:
                if kind == "transposed" and case.perm is None:
                    continue
                if kind == "sum_for_mean" and case.output_size() == 1:
                    continue
                verdict, found = run_case(case, kind, mode)
                total[kind] += 1
                caught[kind] += verdict == "fail"
                matrix[kind][found] += 1
                if verdict != "fail":
                    misses.append(f"{case.name}/{kind} ({verdict})")
                elif found != EXPECTED[kind]:
                    wrong.append(f"{case.name}/{kind} -> {found}")
        seconds = time.perf_counter() - start
        kinds = sorted({k for row in matrix.values() for k in row})
        print(f"\n### {mode} mode ({seconds:.0f} s)\n")
        print("| corruption (right kind) | " + " | ".join(kinds) + " | right kind | recall |")
        print("|---|" + "---|" * (len(kinds) + 2))
        for kind in CORRUPTIONS:
            row = matrix[kind]
            right = row[EXPECTED[kind]]
            cells = " | ".join(str(row[k]) if row[k] else "." for k in kinds)
            print(
                f"| {kind} ({EXPECTED[kind]}) | {cells} | {right}/{total[kind]} "
                f"({100 * right / total[kind]:.0f}%) | {caught[kind]}/{total[kind]} |"
            )
        print(
            f"\nfalse alarms on the uncorrupted versions: {len(alarms)}/{len(cases)} {alarms if alarms else ''}"
        )
        if misses:
            print("missed:", ", ".join(misses))
        if wrong:
            print("wrong kind:", ", ".join(wrong))


if __name__ == "__main__":
    main()
