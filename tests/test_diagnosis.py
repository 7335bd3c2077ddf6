"""The finding names the bug, in both modes: kinds, transposes of any rank, report fields."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc
from gradcheck_core.diagnose import axis_permutations, entries_text, unpermuted

MODES = ["full", "fast"]
RNG = np.random.default_rng(11)


def _problem(shape: tuple[int, ...]):
    """A loss of one array of ``shape`` with a dense, unsymmetric gradient."""
    c = RNG.standard_normal(shape)
    d = RNG.standard_normal(shape)
    x = RNG.standard_normal(shape)

    def f(v: np.ndarray) -> float:
        return float(np.sum(c * np.sin(v) + d * v**2)) + 0.05 * float(np.sum(v**2))

    def g(v: np.ndarray) -> np.ndarray:
        return c * np.cos(v) + 2 * d * v + 0.1 * v

    return f, x, g


def _kinds(report: gc.Report) -> list[str]:
    return [f.kind for f in report.findings]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("corruption", "kind"),
    [
        (lambda g, x: 1.01 * g, "scale"),
        (lambda g, x: 64 * g, "scale"),
        (lambda g, x: -g, "sign"),
        (lambda g, x: 0 * g, "zero_gradient"),
        (lambda g, x: g - 0.1 * x, "missing_term"),
    ],
    ids=["x1.01", "sum_for_mean", "sign", "zeroed", "no_regulariser"],
)
def test_dense_corruptions_are_named(corruption, kind: str, mode: str) -> None:
    f, x, g = _problem((6, 5))
    report = gc.check(f, x, corruption(g(x), x), mode=mode)
    assert report.verdict == "fail"
    assert _kinds(report) == [kind], str(report)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(20,), (6, 5), (2, 3, 4), (2, 2, 3, 3)])
def test_one_entry_off_is_sparse_not_scale(shape: tuple[int, ...], mode: str) -> None:
    f, x, g = _problem(shape)
    wrong = g(x)
    wrong.reshape(-1)[7] += 1e-3 * np.max(np.abs(wrong))
    report = gc.check(f, x, wrong, mode=mode)
    assert report.verdict == "fail"
    assert _kinds(report) == ["sparse_error"], str(report)
    (finding,) = report.findings
    spot = tuple(int(i) for i in np.unravel_index(7, shape))
    assert finding.detail["entries"] == [spot] and finding.detail["n_bad"] == 1
    assert f"1 of the {x.size} entries of param is wrong" in finding.message
    assert report.blocks[0].worst_index == spot


@pytest.mark.parametrize("mode", MODES)
def test_a_few_entries_off_by_the_same_factor_are_sparse(mode: str) -> None:
    f, x, g = _problem((40,))
    wrong = g(x)
    wrong[[3, 21, 30]] *= 1.5
    report = gc.check(f, x, wrong, mode=mode)
    assert _kinds(report) == ["sparse_error"], str(report)
    assert "3 of the 40 entries of param are wrong" in report.findings[0].message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("shape", "perm"),
    [((5, 5), (1, 0)), ((3, 4, 4), (0, 2, 1)), ((2, 3, 3, 3), (0, 1, 3, 2)), ((3, 3, 2, 2), (1, 0, 2, 3))],
)
def test_transposes_of_any_rank(shape: tuple[int, ...], perm: tuple[int, ...], mode: str) -> None:
    f, x, g = _problem(shape)
    report = gc.check(f, x, np.transpose(g(x), perm), mode=mode)
    assert report.verdict == "fail"
    assert _kinds(report) == ["transpose"], str(report)
    assert tuple(report.findings[0].detail["axes"]) == perm


@pytest.mark.parametrize("mode", MODES)
def test_computed_in_transposed_layout_and_reshaped(mode: str) -> None:
    f, x, g = _problem((4, 6))
    report = gc.check(f, x, g(x).T.reshape(4, 6), mode=mode)
    assert _kinds(report) == ["transpose"], str(report)
    assert "(6, 4) array and reshaped" in report.findings[0].message


@pytest.mark.parametrize("mode", MODES)
def test_unexplained_errors_still_get_a_finding(mode: str) -> None:
    f, x, g = _problem((6, 5))
    report = gc.check(f, x, g(x) + 0.3 * RNG.standard_normal((6, 5)), mode=mode)
    assert report.verdict == "fail"
    assert _kinds(report) == ["mismatch"], str(report)


@pytest.mark.parametrize("mode", MODES)
def test_torch_custom_functions_transposed_in_3d_and_4d(mode: str) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def corrupted(op, perm):
        class Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, a, b):
                ctx.save_for_backward(a, b)
                return op(a, b)

            @staticmethod
            def backward(ctx, g):
                a, b = (t.detach().requires_grad_() for t in ctx.saved_tensors)
                with torch.enable_grad():
                    ga, gb = torch.autograd.grad(op(a, b), (a, b), g)
                return ga.permute(*perm).contiguous(), gb

        return Op.apply

    gen = torch.Generator().manual_seed(0)
    a3, b3 = torch.randn(2, 4, 4, generator=gen), torch.randn(2, 4, 3, generator=gen)
    report = gc.check_function(corrupted(torch.bmm, (0, 2, 1)), a3, b3, mode=mode)
    assert report.findings_of("transpose")[0].block == "input0->output0"
    w4, x4 = torch.randn(3, 3, 3, 3, generator=gen), torch.randn(1, 3, 5, 5, generator=gen)
    conv = corrupted(lambda w, x: F.conv2d(x, w, padding=1), (1, 0, 2, 3))
    report = gc.check_function(conv, w4, x4, mode=mode)
    (finding,) = [f for f in report.findings if f.block == "input0->output0"]
    assert finding.kind == "transpose" and finding.detail["axes"] == [1, 0, 2, 3]


# ----------------------------------------------------------------------------- report fields


@pytest.mark.parametrize("mode", MODES)
def test_worst_index_only_for_failing_blocks(mode: str) -> None:
    f, x, g = _problem((6, 5))
    right = gc.check(f, x, g(x), mode=mode)
    assert right.passed and right.blocks[0].worst_index is None
    wrong = g(x)
    wrong[2, 3] += 1.0
    assert gc.check(f, x, wrong, mode=mode).blocks[0].worst_index == (2, 3)


def test_checked_column_reads_in_fast_mode() -> None:
    f, x, g = _problem((6, 5))
    passed = gc.check(f, x, g(x), mode="fast")
    assert "3 directions" in str(passed)
    wrong = g(x)
    wrong[1, 1] += 1.0
    located = gc.check(f, x, wrong, mode="fast")
    row = next(line for line in str(located).splitlines() if line.startswith("FAIL"))
    assert "1 direction, 1 entry located" in row  # the first failing direction decides
    full = gc.check(f, x, g(x), mode="full")
    assert "30/30" in str(full)


def test_jvp_rows_say_what_they_checked() -> None:
    jnp = pytest.importorskip("jax.numpy")
    report = gc.check_function(jnp.sin, jnp.linspace(0.1, 1.0, 6))
    jvp_rows = [line for line in str(report).splitlines() if "(jvp)" in line]
    assert jvp_rows and all("jvp, 1 direction" in line for line in jvp_rows)


def test_entries_text_grammar() -> None:
    assert entries_text(1, 20, "V") == "1 of the 20 entries of V is wrong"
    assert entries_text(3, 20, "V") == "3 of the 20 entries of V are wrong"
    assert entries_text(1, 1, "b") == "the only entry of b is wrong"


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 3, 4, 5), (4, 1, 4)])
def test_unpermuted_inverts_every_axis_order(shape: tuple[int, ...]) -> None:
    g = RNG.standard_normal(shape)
    for perm in axis_permutations(shape):
        returned = np.transpose(g, perm).reshape(-1)
        np.testing.assert_array_equal(unpermuted(returned, shape, perm), g.reshape(-1))
        assert not np.array_equal(returned, g.reshape(-1))
