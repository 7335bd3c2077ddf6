"""Complex values as pairs of real vectors: gc.check and gc.check_function, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.errors import InputError
from gradcheck_core.flatten import flatten


def _leaf(value: object) -> bool:
    return isinstance(value, np.ndarray)


# -- the representation ------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=4),
    st.integers(0, 2**31 - 1),
)
def test_flatten_round_trip_with_complex_leaves(spec: list[tuple[int, bool]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    params = {}
    for k, (n, is_complex) in enumerate(spec):
        value = rng.standard_normal(n)
        params[f"p{k}"] = value + 1j * rng.standard_normal(n) if is_complex else value
    if sum(v.size for v in params.values()) == 0:
        return
    flat = flatten(params, is_leaf=_leaf, to_numpy=np.asarray, complex_ok=True)
    assert flat.n == sum(v.size * (2 if np.iscomplexobj(v) else 1) for v in params.values())
    back = flat.unravel(flat.x0)
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value)
        assert np.iscomplexobj(back[name]) == np.iscomplexobj(value)
    np.testing.assert_array_equal(flat.join(list(params.values())), flat.x0)
    expected = [
        n
        for name, v in params.items()
        for n in ((f"{name}.real", f"{name}.imag") if np.iscomplexobj(v) else (name,))
    ]
    assert flat.names == expected


def test_complex_parameter_rejected_where_not_supported() -> None:
    with pytest.raises(InputError, match="complex"):
        flatten({"z": np.ones(2, complex)}, is_leaf=_leaf, to_numpy=np.asarray)


# -- numpy: a real loss of complex parameters ----------------------------------------


def _quadratic(p: dict) -> float:
    z, w = p["z"], p["w"]
    return float(np.sum(np.abs(z) ** 2 * np.arange(1, z.size + 1)) + np.sum(z * w).real + np.sum(w.imag**3))


def _quadratic_grad(p: dict) -> dict:
    z, w = p["z"], p["w"]
    weights = np.arange(1, z.size + 1)
    # dL/dRe + 1j dL/dIm of each
    dz = 2 * weights * z + np.conj(w)
    dw = np.conj(z) + 1j * 3 * w.imag**2
    return {"z": dz, "w": dw}


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "z": rng.standard_normal(4) + 1j * rng.standard_normal(4),
        "w": rng.standard_normal(4) + 1j * rng.standard_normal(4),
    }


def test_numpy_complex_params_right_gradient_passes() -> None:
    report = gc.check(_quadratic, _params(), grad=_quadratic_grad)
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks] == ["z.real", "z.imag", "w.real", "w.imag"]


def test_numpy_complex_params_wrong_imaginary_part_fails_there() -> None:
    def wrong(p: dict) -> dict:
        g = _quadratic_grad(p)
        g["w"] = g["w"].real + 2j * g["w"].imag  # the imaginary part's gradient doubled
        return g

    report = gc.check(_quadratic, _params(), grad=wrong)
    assert report.verdict == "fail"
    assert report.failed_blocks == ["w.imag"]
    assert any(f.kind == "scale" and f.block == "w.imag" for f in report.findings)


def test_numpy_conjugated_gradient_fails() -> None:
    # The other common convention (dL/dz, the conjugate of PyTorch's) is caught on the imaginary parts.
    report = gc.check(
        _quadratic, _params(), grad=lambda p: {k: np.conj(v) for k, v in _quadratic_grad(p).items()}
    )
    assert report.verdict == "fail"
    assert set(report.failed_blocks) == {"z.imag", "w.imag"}


def test_numpy_complex_step_falls_back_and_says_so() -> None:
    report = gc.check(_quadratic, _params(), grad=_quadratic_grad, method="complex")
    assert report.verdict == "pass"
    assert report.method == "richardson"
    assert [f.kind for f in report.findings_of("method_changed")] == ["method_changed"]


def test_numpy_check_function_complex_with_vjp() -> None:
    a = np.array([1.0 + 2.0j, -0.5 + 0.1j])

    def fn(z: np.ndarray) -> np.ndarray:
        return a * z

    def vjp(u: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.conj(a) * u  # dL/dRe z + 1j dL/dIm z for L = <u, a z> (real pairing)

    z = np.array([0.3 - 1.0j, 2.0 + 0.5j])
    assert gc.check_function(fn, z, vjp=vjp).verdict == "pass"
    report = gc.check_function(fn, z, vjp=lambda u, z: a * u)
    assert report.verdict == "fail"
    assert "input0.imag->output0" in report.failed_blocks
