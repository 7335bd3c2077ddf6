"""Figures: report bars and heat maps, the error-against-step curve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import gradcheck_core as gc
from gradcheck_core import plot
from gradcheck_core.demos import digits_l2, three_layer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def failing() -> gc.Report:
    params, X, Y = three_layer.problem()
    return gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))


@pytest.fixture(scope="module")
def passing() -> gc.Report:
    params, X, Y = three_layer.problem()
    return gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y))


def test_plot_report_writes_png_with_bars_and_heat_maps(failing: gc.Report, tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    fig = gc.plot_report(failing, path)
    assert path.read_bytes()[:8] == PNG
    assert path.stat().st_size > 20_000
    bars_ax = fig.axes[0]
    heights = [p.get_height() for p in bars_ax.patches]
    assert np.allclose(heights, [b.rel_error for b in failing.blocks])
    assert bars_ax.get_yscale() == "log"
    assert [t.get_text() for t in bars_ax.get_xticklabels()] == [b.name for b in failing.blocks]
    titles = [ax.get_title() for ax in fig.axes[1:]]
    # each failing parameter gets a heat map (most wrong entries first), titled with its finding
    maps = [t for t in titles if "checked entries off" in t]
    assert maps[0].splitlines()[:2] == ["W2 (3, 5)", "8 of 15 checked entries off"]
    assert maps[0].splitlines()[2] == "finding: scale, x 2"
    assert maps[1].splitlines() == ["b1 (5, 1)", "5 of 5 checked entries off", "finding: scale, x 4"]


def test_passing_report_has_only_the_bars(passing: gc.Report, tmp_path: Path) -> None:
    fig = gc.plot_report(passing, tmp_path / "ok.png")
    assert len(fig.axes) == 1
    colours = {tuple(np.round(p.get_facecolor()[:3], 2)) for p in fig.axes[0].patches}
    assert len(colours) == 1  # every bar in the pass colour


def test_plot_without_path_returns_figure_and_writes_nothing(failing: gc.Report, tmp_path: Path) -> None:
    fig = plot.plot_report(failing, None, max_heatmaps=1)
    assert len([ax for ax in fig.axes if "checked entries off" in ax.get_title()]) == 1
    assert list(tmp_path.iterdir()) == []


def test_heat_map_grid_marks_unchecked_and_bad_entries() -> None:
    params, X, Y = digits_l2.problem(samples=60)
    report = gc.check(
        digits_l2.cost(X, Y), params, digits_l2.backward(X, Y, forget_l2_layer2=True), sample=30, seed=1
    )
    block = report.block("theta2")
    assert block.verdict == "fail"
    grid = plot._grid(block)
    assert grid.shape == (101, 10)
    checked = np.isfinite(grid)
    assert checked.sum() == block.n_checked == 30
    # entries past the tolerance are exactly the positive ones
    ratio = np.abs(block.analytic - block.numeric) / block.tolerance
    assert (grid.ravel()[block.indices] > 0).sum() == (ratio > 1).sum()


def test_step_errors_show_the_float32_and_float64_noise_floors() -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((20, 5))
    w = rng.standard_normal(5) * 0.5

    def loss64(p: np.ndarray) -> float:
        return float(np.sum(np.tanh(A @ p) ** 2))

    def loss32(p: np.ndarray) -> np.float32:
        return np.sum(np.tanh(A.astype(np.float32) @ p.astype(np.float32)) ** 2)

    def grad(p: np.ndarray) -> np.ndarray:
        t = np.tanh(A @ p)
        return A.T @ (2 * t * (1 - t**2))

    curve = plot.step_errors({"float32": loss32, "float64": loss64}, w, grad)
    assert curve.dtypes == {"float32": "float32", "float64": "float64"}
    assert curve.reference_source == "your gradient"
    assert curve.reference == pytest.approx(
        float(np.max(np.abs(grad(w))) * np.sign(grad(w)[np.argmax(np.abs(grad(w)))]))
    )
    h32, e32 = curve.best("float32")
    h64, e64 = curve.best("float64")
    assert e64 < 1e-8 < e32 < 1e-2
    assert h64 < h32
    for label in ("float32", "float64"):
        err = curve.errors[label]
        h, e = curve.best(label)
        assert err[0] > 100 * e and err[-1] > 100 * e  # a V: round-off on the left, truncation on the right
        # the step the check takes lies within two decades of the bottom of the V
        assert abs(np.log10(curve.chosen[label]) - np.log10(h)) <= 2.0


def test_a_wrong_gradient_has_no_v() -> None:
    x = np.array([0.4, -1.2, 0.9])
    curve = plot.step_errors(lambda p: float(np.sum(np.sin(p))), x, lambda p: 1.15 * np.cos(p))
    (label,) = curve.errors
    assert curve.best(label)[1] > 0.1  # never closer than the 15% mistake


def test_step_errors_without_a_gradient_uses_richardson() -> None:
    x = np.array([0.4, -1.2, 0.9])
    curve = plot.step_errors(lambda p: float(np.sum(np.sin(p))), x, index=1)
    assert curve.coordinate == "param[1]"
    assert curve.reference_source.startswith("Richardson")
    assert curve.reference == pytest.approx(np.cos(-1.2), rel=1e-9)
    assert len(curve.errors) == 1  # float64=True and False are the same for numpy: one curve


def test_step_curve_figure(tmp_path: Path) -> None:
    path = tmp_path / "steps.png"
    x = {"W": np.array([[0.4, -1.2], [0.9, 0.1]])}
    fig = plot.step_curve(
        lambda p: float(np.sum(np.sin(p["W"]))),
        x,
        lambda p: {"dW": np.cos(p["W"])},
        path=path,
        param="W",
        index=(1, 0),
    )
    assert path.read_bytes()[:8] == PNG
    assert fig.step_curve.coordinate == "W[1, 0]"
    assert "W[1, 0]" in fig.axes[0].get_title()
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"param": "V"}, "not a parameter name"),
        ({"param": "W", "index": 7}, "outside W"),
        ({"param": "W", "index": (3, 3)}, "not an index"),
        ({"steps": []}, "steps="),
    ],
)
def test_step_errors_bad_input(kwargs: dict, needle: str) -> None:
    with pytest.raises(gc.InputError, match=needle):
        plot.step_errors(lambda p: float(np.sum(p["W"] ** 2)), {"W": np.ones((2, 2))}, **kwargs)


def test_missing_matplotlib_says_how_to_install(failing: gc.Report, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"gradcheck-core\[plot\]"):
        gc.plot_report(failing, "never.png")


def test_plotting_leaves_pyplot_alone(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np, gradcheck_core as gc\n"
        "from gradcheck_core.demos import three_layer\n"
        "p, X, Y = three_layer.problem()\n"
        "r = gc.check(three_layer.cost(X, Y), p, three_layer.backward(X, Y, buggy=True))\n"
        f"gc.plot_report(r, {str(tmp_path / 'a.png')!r})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.torch
def test_step_errors_float32_model_gives_two_curves() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    X = torch.randn(10, 3)
    before = [p.detach().clone() for p in model.parameters()]
    curve = plot.step_errors(lambda: (model(X) ** 2).mean(), model, param="0.weight")
    assert sorted(curve.dtypes.values()) == ["float32", "float64"]
    assert curve.reference_source == "autodiff"
    assert curve.coordinate.startswith("0.weight[")
    e32 = curve.best("float32 loss")[1]
    e64 = curve.best("float64 loss")[1]
    assert e64 < 1e-8 and e64 < e32
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_flat_error_is_drawn_flat() -> None:
    # a gradient off by a factor 2: the relative error is 0.5 at every step
    x = np.array([0.4, -1.2, 0.9])
    fig = plot.step_curve(lambda p: float(np.sum(np.sin(p))), x, lambda p: 2 * np.cos(p))
    (label,) = fig.step_curve.errors
    assert fig.step_curve.is_flat(label)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert np.log10(high / low) >= 4  # not stretched to 0.4988-0.5002
    assert not [line for line in ax.get_lines() if line.get_marker() == "*"]  # no "best" step
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("at every step" in t for t in legend)


def test_a_correct_gradient_keeps_its_v_and_star() -> None:
    x = np.array([0.4, -1.2, 0.9])
    fig = plot.step_curve(lambda p: float(np.sum(np.sin(p))), x, lambda p: np.cos(p))
    (label,) = fig.step_curve.errors
    assert not fig.step_curve.is_flat(label)
    assert [line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]
