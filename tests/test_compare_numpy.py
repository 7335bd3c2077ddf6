"""gc.compare with numpy candidates (handwritten gradients): matching, layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

RNG = np.random.default_rng(0)
X = RNG.standard_normal((12, 3))
Y = RNG.standard_normal(12)


def loss_in_out(p):  # kernel stored (in, out), as Keras and JAX do
    return float(np.mean((np.tanh(X @ p["kernel"] + p["bias"]) @ p["v"] - Y) ** 2))


def grad_in_out(p):
    h = np.tanh(X @ p["kernel"] + p["bias"])
    r = 2 * (h @ p["v"] - Y) / len(Y)
    dz = np.outer(r, p["v"]) * (1 - h**2)
    return {"kernel": X.T @ dz, "bias": dz.sum(0), "v": h.T @ r}


def loss_out_in(p):  # weight stored (out, in), as torch.nn.Linear does
    return loss_in_out({"kernel": p["weight"].T, "bias": p["bias"], "v": p["v"]})


def grad_out_in(p):
    g = grad_in_out({"kernel": p["weight"].T, "bias": p["bias"], "v": p["v"]})
    return {"weight": g["kernel"].T, "bias": g["bias"], "v": g["v"]}


REF = {"kernel": RNG.standard_normal((3, 4)), "bias": RNG.standard_normal(4), "v": RNG.standard_normal(4)}
OTHER = {"weight": np.zeros((4, 3)), "bias": np.zeros(4), "v": np.zeros(4)}


def test_same_model_in_two_layouts_agrees() -> None:
    result = gc.compare(
        {"keras-style": (loss_in_out, REF, grad_in_out), "torch-style": (loss_out_in, OTHER, grad_out_in)}
    )
    assert result.passed, str(result)
    assert [r.layout for r in result.rows] == ["transposed", "same", "same"]
    assert result.loss_rel_diff["torch-style"] < 1e-12
    assert "AGREE" in str(result)
    assert result.to_dict()["rows"][0]["name"] == "weight"


def test_other_activation_is_reported() -> None:
    def relu_loss(p):
        return float(np.mean((np.maximum(X @ p["weight"].T + p["bias"], 0) @ p["v"] - Y) ** 2))

    result = gc.compare({"a": (loss_in_out, REF, grad_in_out), "b": (relu_loss, OTHER, grad_out_in)})
    assert not result.passed
    assert result.loss_rel_diff["b"] > 1e-3
    assert "different functions" in " ".join(result.messages)


def test_wrong_backward_in_one_parameter_is_named() -> None:
    def bad_grad(p):
        g = grad_out_in(p)
        g["bias"] = 0.5 * g["bias"]
        return g

    result = gc.compare({"a": (loss_in_out, REF, grad_in_out), "b": (loss_out_in, OTHER, bad_grad)})
    assert [r.reference_name for r in result.failed()] == ["bias"]
    assert "backward pass differs" in " ".join(result.messages)
    with pytest.raises(gc.GradcheckError, match="bias"):
        result.raise_if_failed()


def test_forgotten_bias_names_the_parameter() -> None:
    def no_bias(p):
        return float(np.mean((np.tanh(X @ p["weight"].T) @ p["v"] - Y) ** 2))

    with pytest.raises(gc.GradcheckError, match=r"bias.*\(4,\)"):
        gc.compare(
            {
                "a": (loss_in_out, REF, grad_in_out),
                "b": (no_bias, {"weight": OTHER["weight"], "v": OTHER["v"]}, None),
            }
        )


def test_explicit_mapping_and_square_layout() -> None:
    sq = {"W": RNG.standard_normal((3, 3))}
    other = {"M": np.zeros((3, 3))}

    def la(p):
        return float(np.sum(np.sin(X @ p["W"])))

    def ga(p):
        return {"W": X.T @ np.cos(X @ p["W"])}

    def lb(p):  # stores the matrix transposed
        return la({"W": p["M"].T})

    def gb(p):
        return {"M": ga({"W": p["M"].T})["W"].T}

    plain = gc.compare({"a": (la, sq, ga), "b": (lb, other, gb)})
    assert not plain.passed  # square: by shape alone the layout is taken as the same
    mapped = gc.compare({"a": (la, sq, ga), "b": (lb, other, gb)}, mapping={"W": ("M", "transposed")})
    assert mapped.passed, str(mapped)


def test_conv_kernel_layouts() -> None:
    k = RNG.standard_normal((5, 2, 3, 3))  # OIHW
    w = RNG.standard_normal(5 * 2 * 9)

    def la(p):
        return float(np.sum(np.tanh(p["conv.weight"].reshape(-1)) * w))

    def ga(p):
        return {"conv.weight": ((1 - np.tanh(p["conv.weight"].reshape(-1)) ** 2) * w).reshape(5, 2, 3, 3)}

    def lb(p):
        return la({"conv.weight": np.transpose(p["conv/kernel"], (3, 2, 0, 1))})

    def gb(p):
        return {
            "conv/kernel": np.transpose(
                ga({"conv.weight": np.transpose(p["conv/kernel"], (3, 2, 0, 1))})["conv.weight"], (2, 3, 1, 0)
            )
        }

    result = gc.compare(
        {"torch": (la, {"conv.weight": k}, ga), "keras": (lb, {"conv/kernel": np.zeros((3, 3, 2, 5))}, gb)}
    )
    assert result.passed and result.rows[0].layout == "OIHW->HWIO"


def test_bad_candidates() -> None:
    with pytest.raises(gc.GradcheckError, match="two candidates"):
        gc.compare({"a": (loss_in_out, REF, grad_in_out)})
    with pytest.raises(gc.GradcheckError, match="no autodiff"):
        gc.compare({"a": (loss_in_out, REF, grad_in_out), "b": (loss_out_in, OTHER)})


def _linear_candidate(weights, dtype, gradient_error):
    weights = np.asarray(weights)

    def loss(p):
        return (np.asarray(p["b"], dtype=dtype) @ weights.astype(dtype)).astype(dtype)

    def grad(p):
        return {"b": weights + np.asarray(gradient_error)}

    return loss, {"b": np.ones(len(weights))}, grad


@pytest.mark.parametrize(
    ("dtype", "error", "agree"),
    [
        ("float32", [0.0, 3e-8, 0.0], True),  # round-off of a float32 sum landing on an exact zero
        ("float32", [0.0, 1e-3, 0.0], False),  # far above float32 round-off: a real difference
        ("float64", [0.0, 3e-8, 0.0], False),  # the same 3e-8 is no round-off in float64
    ],
)
def test_entry_near_zero_is_judged_against_round_off_of_its_tensor(dtype, error, agree) -> None:
    weights = [0.5, 0.0, -2.0]
    result = gc.compare(
        {
            "reference": _linear_candidate(weights, "float64", [0.0, 0.0, 0.0]),
            "other": _linear_candidate(weights, dtype, error),
        }
    )
    assert result.passed is agree, str(result)
    assert result.rows[0].passed is agree
    if dtype == "float32":
        assert any("float32" in m for m in result.messages)
