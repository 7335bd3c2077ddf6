"""Full sweeps of a JAX model: batched (vmap) against point by point, and
against ``jax.test_util.check_grads``.

The model is a 64-72-10 tanh/softmax network on the first 256 digits images
(5,410 parameters, float32 as a JAX user would create them).  The script
prints:

1. the time of a full sweep (every coordinate, central differences) with the
   sweep's points evaluated in compiled ``jax.vmap`` batches, one by one with
   the compiled loss, and one by one without compilation; then the same
   network on 16 images, where calling the loss costs more than computing it;
2. for a correct gradient and for a ``jax.custom_vjp`` loss whose backward
   pass is wrong in one entry by a relative 1e-3, whether gradcheck-core and
   ``check_grads`` notice, with parameters in float32 and in float64.

Nothing is asserted; the numbers depend on the machine.  Run it with
``python benchmarks/jax_sweep.py`` (one to two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import gradcheck_core as gc
from gradcheck_core.adapters import get_adapter
from gradcheck_core.adapters.jax import x64

HIDDEN = 72
SAMPLES = 256
SMALL_SAMPLES = 16  # little work per evaluation: the cost of calling dominates
WRONG_BY = 1e-3


def problem(dtype: Any, samples: int = SAMPLES) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """Parameters, inputs and one-hot targets of the digits network."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data[:samples] / 16.0
    Y = np.eye(10)[data.target[:samples]]
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.normal(0.0, 0.3, size=(64, HIDDEN)),
        "b1": rng.normal(0.0, 0.1, size=HIDDEN),
        "W2": rng.normal(0.0, 0.3, size=(HIDDEN, 10)),
        "b2": rng.normal(0.0, 0.1, size=10),
    }
    as_jax = lambda a: jnp.asarray(a, dtype=dtype)  # noqa: E731
    return {k: as_jax(v) for k, v in params.items()}, as_jax(X), as_jax(Y)


def network_loss(p: dict[str, jax.Array], X: jax.Array, Y: jax.Array) -> jax.Array:
    h = jnp.tanh(X @ p["W1"] + p["b1"])
    logits = h @ p["W2"] + p["b2"]
    ce = -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1))
    return ce + 1e-3 * (jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2))


def wrong_entry(params: dict[str, jax.Array], X: jax.Array, Y: jax.Array, where: str) -> tuple[int, int]:
    """An entry of W1: the one with the largest gradient, or one of median size."""
    g = np.abs(np.asarray(jax.grad(network_loss)(params, X, Y)["W1"], dtype=np.float64))
    flat = np.argsort(g, axis=None)
    k = flat[-1] if where == "largest" else flat[len(flat) // 2]
    i, j = np.unravel_index(int(k), g.shape)
    return int(i), int(j)


def with_custom_vjp(X: jax.Array, Y: jax.Array, entry: tuple[int, int] | None) -> Callable[[Any], jax.Array]:
    """The loss as a ``jax.custom_vjp`` function; its backward pass is wrong at ``entry``."""

    @jax.custom_vjp
    def loss(p: dict[str, jax.Array]) -> jax.Array:
        return network_loss(p, X, Y)

    def fwd(p: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
        return network_loss(p, X, Y), p

    def bwd(p: dict[str, jax.Array], g: jax.Array) -> tuple[dict[str, jax.Array]]:
        grads = jax.grad(network_loss)(p, X, Y)
        grads = {k: g * v for k, v in grads.items()}
        if entry is not None:
            grads["W1"] = grads["W1"].at[entry].multiply(1.0 + WRONG_BY)
        return (grads,)

    loss.defvjp(fwd, bwd)
    return loss


@contextlib.contextmanager
def adapter_settings(*, jit: bool, vectorize: bool) -> Iterator[None]:
    adapter = get_adapter("jax")
    before = (adapter.jit, adapter.vectorize)
    adapter.jit, adapter.vectorize = jit, vectorize
    try:
        yield
    finally:
        adapter.jit, adapter.vectorize = before


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sweep_table(samples: int, with_eager: bool, repeats: int = 2) -> None:
    params, X, Y = problem(jnp.float32, samples)
    n = sum(int(np.size(v)) for v in params.values())
    loss = lambda p: network_loss(p, X, Y)  # noqa: E731
    jax.block_until_ready(loss(params))  # JAX's own start-up, not the check's
    rows = []
    settings = [("batched: jit(vmap(loss)) per chunk", True, True), ("one by one, jit(loss)", True, False)]
    if with_eager:
        settings.append(("one by one, no jit", False, False))
    for label, jit, vectorize in settings:
        best = np.inf
        for _ in range(repeats if jit else 1):  # the best of a few runs: the machine may be shared
            with adapter_settings(jit=jit, vectorize=vectorize):
                report, seconds = timed(lambda: gc.check(loss, params, mode="full", progress=False))
            best = min(best, seconds)
        rows.append((label, best, report))
    base = rows[0][1]
    print(
        f"\nFull sweep of a 64-{HIDDEN}-10 network on {samples} digits images: {n:,} parameters (float32), "
        f"central differences"
    )
    print(
        f"  {'evaluation':<38} {'seconds':>8} {'x batched':>10} {'evals':>7} {'verdict':>8} {'rel_error':>10}"
    )
    for label, seconds, report in rows:
        print(
            f"  {label:<38} {seconds:8.2f} {seconds / base:10.1f} {report.nfev:7d} {report.verdict:>8} "
            f"{report.rel_error:10.1e}"
        )
    print(f"  (whole check including compilation; best of {repeats} runs, 1 run without jit)")
    costs = evaluation_costs(loss, params, with_eager)
    line = ", ".join(f"{label} {seconds * 1e6:.0f} us" for label, seconds in costs)
    print(f"  per evaluation, compiled and warm (best of 3): {line}")


def evaluation_costs(
    loss: Callable[[Any], jax.Array], params: Any, with_eager: bool
) -> list[tuple[str, float]]:
    """Seconds per evaluation of each strategy, without compilation or the check's own work."""
    adapter = get_adapter("jax")
    out = []
    strategies = [("batched", True, True), ("jit loop", True, False)] + (
        [("no jit", False, False)] if with_eager else []
    )
    for label, jit, vectorize in strategies:
        with adapter_settings(jit=jit, vectorize=vectorize), adapter.target(loss, params) as target:
            x0 = target.flat.x0
            rows = x0 + 1e-6 * np.random.default_rng(0).standard_normal((512 if vectorize else 100, x0.size))
            if vectorize:
                target.evaluate_batch(rows)  # compile the block sizes

                def run() -> None:
                    target.evaluate_batch(rows)  # noqa: B023 - called within this iteration
            else:
                target.evaluate(x0)

                def run() -> None:
                    for row in rows:  # noqa: B023 - called within this iteration
                        np.asarray(target.evaluate(row))

            best = min(timed(run)[1] for _ in range(3))
        out.append((label, best / len(rows)))
    return out


def run_check_grads(fn: Callable[[Any], jax.Array], params: Any) -> tuple[str, float]:
    def go() -> str:
        try:
            check_grads(fn, (params,), order=1, modes=("rev",))
            return "pass"
        except AssertionError:
            return "FAIL"

    go()  # compile everything once; time the second run
    return timed(go)


def run_gradcheck(fn: Callable[[Any], jax.Array], params: Any, **options: Any) -> tuple[gc.Report, float]:
    return timed(lambda: gc.check(fn, params, mode="full", progress=False, **options))


def detection_table() -> None:
    print(
        f"\nOne wrong entry: a jax.custom_vjp loss whose backward pass scales one entry of W1 by 1 + {WRONG_BY:g}"
    )
    print(f"  {'case':<32} {'params':<8} {'tool':<36} {'seconds':>8}  {'result':<6} {'caught?':<8}")
    for dtype_name in ("float32", "float64"):
        dtype = jnp.float32 if dtype_name == "float32" else jnp.float64
        scope = x64() if dtype_name == "float64" else contextlib.nullcontext()
        with scope:
            params, X, Y = problem(dtype)
            cases = [("correct gradient", None)]
            for where in ("largest", "median"):
                entry = wrong_entry(params, X, Y, where)
                cases.append((f"W1{list(entry)} wrong ({where} |g|)", entry))
            for case, entry in cases:
                fn = with_custom_vjp(X, Y, entry)
                expected = "pass" if entry is None else "FAIL"
                result, seconds = run_check_grads(fn, params)
                _row(case, dtype_name, "jax.test_util.check_grads", seconds, result, expected)
                report, seconds = run_gradcheck(fn, params)
                result = "pass" if report.verdict == "pass" else "FAIL" if report.verdict == "fail" else "?"
                where_found = ""
                if entry is not None and report.verdict == "fail":
                    bad = [b for b in report.blocks if b.verdict == "fail"]
                    where_found = ", ".join(f"{b.name}{list(b.worst_index)}" for b in bad)
                _row(
                    case, dtype_name, "gc.check (float64 evaluation)", seconds, result, expected, where_found
                )
                if dtype_name == "float32":
                    report, seconds = run_gradcheck(fn, params, float64=False)
                    result = {"pass": "pass", "fail": "FAIL"}.get(report.verdict, "incon.")
                    _row(case, dtype_name, "gc.check(float64=False)", seconds, result, expected)


def _row(
    case: str, dtype: str, tool: str, seconds: float, result: str, expected: str, note: str = ""
) -> None:
    if expected == "pass":
        verdict = "ok" if result == "pass" else "false alarm" if result == "FAIL" else "undecided"
    else:
        verdict = "yes" if result == "FAIL" else "no"
    print(f"  {case:<32} {dtype:<8} {tool:<36} {seconds:8.2f}  {result:<6} {verdict:<8} {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-eager", action="store_true", help="skip the uncompiled point-by-point sweep")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; x64 flag: {jax.config.jax_enable_x64}")
    sweep_table(SAMPLES, with_eager=not args.no_eager)
    sweep_table(SMALL_SAMPLES, with_eager=False)
    detection_table()
    print(f"\nx64 flag afterwards: {jax.config.jax_enable_x64}")


if __name__ == "__main__":
    main()
