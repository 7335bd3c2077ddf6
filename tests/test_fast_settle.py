"""Fast mode's early verdicts: two steps where they decide, the dense-error sample, the first failing direction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core import differences as fd
from gradcheck_core import fast


def _smooth(seed: int, n: int):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    b = rng.standard_normal(n)

    def f(x: np.ndarray) -> float:
        return float(np.sum(np.tanh(A @ x + b) ** 2) + 0.1 * np.sum(np.sin(3 * x)))

    def g(x: np.ndarray) -> np.ndarray:
        t = np.tanh(A @ x + b)
        return A.T @ (2 * t * (1 - t**2)) + 0.3 * np.cos(3 * x)

    return f, g, rng.standard_normal(n)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 1e-9, 1e-7, 1e-6, 1e-5, 1e-3, 0.5]))
def test_an_early_verdict_is_the_verdict_of_all_three_steps(seed: int, off: float) -> None:
    """Where two steps settle a direction, the third would not have changed pass or fail."""
    f, g, x0 = _smooth(seed, 12)
    w = np.random.default_rng(seed + 1).standard_normal(12)
    a_dot = float(g(x0) @ w) * (1 + off)
    base = 1e-6 * float(np.linalg.norm(g(x0) * w))
    settle = fast._settled(a_dot, base)
    f0 = f(x0)
    early, early_err, used = fd.directional(f, x0, w, rel_step=7e-4, noise=1e-16, f0=f0, settle=settle)
    full, full_err, used_full = fd.directional(f, x0, w, rel_step=7e-4, noise=1e-16, f0=f0)
    assert used_full == 6 and used in (4, 6)
    passed_full = abs(a_dot - full) <= base + fast.SAFETY * full_err
    passed_early = abs(a_dot - early) <= base + fast.SAFETY * early_err
    if used == 4:
        assert passed_early == passed_full
    else:
        assert (early, early_err) == (full, full_err)


def test_a_segment_across_a_kink_is_never_settled_early() -> None:
    x0 = np.array([1e-4, 0.3])

    def f(x: np.ndarray) -> float:
        return float(np.maximum(x[0], 0.0) * 3.0 + x[1] ** 2)

    asked = []

    def settle(d: float, err: float) -> bool:
        asked.append(d)
        return True

    _, err, used = fd.directional(
        f, x0, np.array([1.0, 0.0]), rel_step=1e-2, noise=1e-16, f0=f(x0), settle=settle
    )
    assert asked == [] and used == 6 and not np.isfinite(err)


def _dense_problem(n: int):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, n)) / np.sqrt(n)

    def f(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(np.tanh(A @ p["w"]) ** 2) + 0.05 * np.sum(p["v"] ** 2))

    def g(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.tanh(A @ p["w"])
        return {"w": A.T @ (2 * t * (1 - t**2)), "v": 0.1 * p["v"]}

    return f, g, {"w": rng.standard_normal(n), "v": rng.standard_normal(50)}


def test_a_dense_error_is_named_from_the_sample_without_a_deep_search() -> None:
    f, g, p = _dense_problem(2000)
    wrong = g(p)
    wrong["w"] = wrong["w"] * 1.3
    report = gc.check(f, p, wrong, mode="fast", progress=False)
    assert report.verdict == "fail" and report.failed_blocks == ["w"]
    block = next(b for b in report.blocks if b.name == "w")
    assert len(block.indices) == fast.DENSE_SAMPLE and block.n_bad == 2000
    assert any(f.kind == "scale" for f in report.findings)
    # first value and gradient, the noise probe, three directions on v, one on w, two halves, the sample
    assert report.nfev <= 3 + 8 + 3 * 6 + 6 + 2 * 6 + fast.DENSE_SAMPLE * 6


def test_one_wrong_entry_is_located_without_the_dense_sample() -> None:
    f, g, p = _dense_problem(2000)
    wrong = g(p)
    wrong["w"][1234] += 0.5
    report = gc.check(f, p, wrong, mode="fast", progress=False)
    block = next(b for b in report.blocks if b.name == "w")
    assert report.failed_blocks == ["w"] and block.n_bad == 1
    assert block.indices.tolist() == [1234]
    # log2(2000) = 11 levels of one test each (the second half by difference), no entry sample
    assert report.nfev <= 3 + 8 + 3 * 6 + 6 + 12 * 4 + 6  # two tests a level: about 120


def test_the_correct_gradient_passes_with_two_steps_per_direction() -> None:
    f, g, p = _dense_problem(2000)
    report = gc.check(f, p, g(p), mode="fast", progress=False)
    assert report.verdict == "pass"
    # two blocks, three directions each, four evaluations each when settled early
    assert report.nfev <= 3 + 8 + 2 * 3 * 4


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(0, 1999), min_size=1, max_size=4, unique=True),
    st.sampled_from([-1.0, 0.3, 2.0]),
)
def test_wrong_entries_are_located_exactly_with_second_halves_judged_by_difference(
    positions: list[int], delta: float
) -> None:
    """The second half of each failing group is judged from the group's test minus the first half's."""
    f, g, p = _dense_problem(2000)
    wrong = g(p)
    wrong["w"][positions] += delta * (1 + np.abs(wrong["w"][positions]))
    report = gc.check(f, p, wrong, mode="fast", progress=False)
    block = next(b for b in report.blocks if b.name == "w")
    assert report.failed_blocks == ["w"]
    bad = block.indices[np.abs(block.analytic - block.numeric) > block.tolerance]
    assert sorted(bad.tolist()) == sorted(positions) and block.n_bad == len(positions)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("factor", "kind"), [(1.01, "scale"), (-1.0, "sign")])
def test_a_dense_error_on_a_mostly_zero_gradient_is_named_right(factor: float, kind: str, seed: int) -> None:
    """Max pooling passes gradient to one entry in four; the sample must still show a scale as a scale."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + seed))

    class Pool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return F.max_pool2d(a, 2)

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            with torch.enable_grad():
                a = a.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(F.max_pool2d(a, 2), a, g)
            return grad * factor

    def loss(p):  # type: ignore[no-untyped-def]
        return (w * Pool.apply(p["x"])).mean() + 0.05 * Square.apply(p["x"])

    class Square(torch.autograd.Function):  # the L2 term, its gradient corrupted the same way
        @staticmethod
        def forward(ctx, a):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(a)
            return (a**2).sum()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            (a,) = ctx.saved_tensors
            return g * 2 * a * factor

    report = gc.check(loss, {"x": x}, mode="fast", progress=False)
    assert report.verdict == "fail"
    assert [f.kind for f in report.findings if f.block == "x"][:1] == [kind]
