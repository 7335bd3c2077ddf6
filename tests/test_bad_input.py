"""Bad input gets one clear error that names the value and the remedy."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

W = np.random.default_rng(0).standard_normal((3, 2))


def ok_loss(p):
    return float(np.sum(p["W"] ** 2))


def ok_grad(p):
    return {"W": 2 * p["W"]}


def test_non_scalar_loss() -> None:
    with pytest.raises(gc.GradcheckError, match=r"shape \(3, 2\).*not a scalar.*sum"):
        gc.check(lambda p: p["W"] ** 2, {"W": W}, ok_grad)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss(bad: float) -> None:
    with pytest.raises(gc.GradcheckError, match="finite"):
        gc.check(lambda p: bad, {"W": W}, ok_grad)


def test_loss_non_finite_next_to_the_parameters_names_the_entry() -> None:
    x = np.array([1.0, 0.0])
    with np.errstate(invalid="ignore"), pytest.raises(gc.GradcheckError, match=r"x\[1\]"):
        gc.check(lambda p: float(np.sum(np.sqrt(p["x"]))), {"x": x}, {"x": np.ones(2)})


def test_gradient_of_wrong_shape_says_transposed() -> None:
    with pytest.raises(gc.GradcheckError, match=r"shape \(2, 3\).*shape \(3, 2\).*transposed"):
        gc.check(ok_loss, {"W": W}, lambda p: {"dW": (2 * p["W"]).T})


def test_gradient_with_missing_keys_lists_what_it_has() -> None:
    with pytest.raises(gc.GradcheckError, match=r"'b'.*'db'.*it has 'dW'"):
        gc.check(
            lambda p: ok_loss(p) + float(np.sum(p["b"])),
            {"W": W, "b": np.ones(2)},
            lambda p: {"dW": 2 * p["W"]},
        )


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_nan_in_gradient_is_a_failure_that_says_so(mode: str) -> None:
    report = gc.check(ok_loss, {"W": W}, {"W": np.full((3, 2), np.nan)}, mode=mode)
    assert report.verdict == "fail"
    (finding,) = report.findings_of("non_finite_gradient")
    assert finding.block == "W" and finding.detail["n_bad"] == 6


def test_integer_parameters() -> None:
    with pytest.raises(gc.GradcheckError, match=r"'n'.*int.*float"):
        gc.check(lambda p: float(p["n"].sum()), {"n": np.arange(3)}, {"n": np.ones(3)})
    with pytest.raises(gc.GradcheckError, match=r"'k'.*integer"):
        gc.check(lambda p: 1.0, {"k": 3}, {"k": 1.0})
    with pytest.raises(gc.GradcheckError, match=r"bool"):
        gc.check(lambda p: 1.0, {"m": np.array([True])}, {"m": np.ones(1)})


def test_empty_parameters() -> None:
    with pytest.raises(gc.GradcheckError, match="empty"):
        gc.check(lambda p: 0.0, {}, {})
    with pytest.raises(gc.GradcheckError, match="empty"):
        gc.check(lambda p: 0.0, {"W": np.zeros((0, 3))}, {"W": np.zeros((0, 3))})


def test_unsupported_value() -> None:
    with pytest.raises(gc.GradcheckError, match="cannot check"):
        gc.check(lambda p: 0.0, {"W": "weights"}, None)


def test_numpy_without_grad_asks_for_grad() -> None:
    with pytest.raises(gc.GradcheckError, match="grad="):
        gc.check(ok_loss, {"W": W})


@pytest.mark.parametrize(
    "options,match",
    [
        ({"mode": "slow"}, "mode="),
        ({"method": "backward"}, "method="),
        ({"step": 0}, "step="),
        ({"rtol": -1}, "rtol="),
        ({"sample": 0}, "sample="),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(gc.GradcheckError, match=match):
        gc.check(ok_loss, {"W": W}, ok_grad, **options)


def test_complex_method_needs_a_loss_that_carries_complex_values() -> None:
    with pytest.raises(gc.GradcheckError, match="complex"):
        gc.check(lambda p: float(np.sum(np.abs(p["W"]) ** 2)), {"W": W}, ok_grad, method="complex")


def test_errors_leave_arrays_untouched_for_in_place_losses() -> None:
    w = np.linspace(-1, 1, 5)
    keep = w.copy()
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("boom on the 7th call")
        return float(np.sum(w**2))

    with pytest.raises(RuntimeError, match="7th"):
        gc.check(loss, [w], lambda: [2 * w])
    assert w.tobytes() == keep.tobytes()
