"""gc.compare across torch and JAX: the same MLP agrees; broken ports are named."""

from __future__ import annotations

import numpy as np
import pytest

import gradcheck_core as gc

pytestmark = [pytest.mark.torch, pytest.mark.jax]

RNG = np.random.default_rng(0)
# data exactly representable in float32, so both frameworks see the same numbers
X = RNG.standard_normal((16, 4)).astype(np.float32).astype(np.float64)
Y = RNG.standard_normal((16, 2)).astype(np.float32).astype(np.float64)


@pytest.fixture
def torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    Xt, Yt = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    before = [p.detach().clone() for p in net.parameters()]
    yield net, (lambda: torch.nn.functional.mse_loss(net(Xt), Yt))
    for p, b in zip(net.parameters(), before):  # compare never changes the model
        assert p.dtype == torch.float32 and torch.equal(p.detach(), b)


def jax_model(activation=None, bias=True):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    act = activation or jnp.tanh

    def loss(p):
        h = act(X @ p["W1"] + (p["b1"] if bias else 0.0))
        return jnp.mean((h @ p["W2"] + p["b2"] - Y) ** 2)

    params = {"W1": jnp.zeros((4, 5)), "W2": jnp.zeros((5, 2)), "b2": jnp.zeros(2)}
    if bias:
        params = {"W1": params["W1"], "b1": jnp.zeros(5), "W2": params["W2"], "b2": params["b2"]}
    return loss, params


def test_same_mlp_in_torch_and_jax_agrees(torch_model) -> None:
    net, tloss = torch_model
    jloss, jp = jax_model()
    result = gc.compare({"torch": (tloss, net), "jax": (jloss, jp)})
    assert result.passed, str(result)
    assert [r.layout for r in result.rows] == ["transposed", "same", "transposed", "same"]
    assert next((r.reference_name, r.name) for r in result.rows) == ("0.weight", "W1")
    assert max(r.rel_error for r in result.rows) < 1e-12


def test_port_with_another_activation_differs(torch_model) -> None:
    import jax

    net, tloss = torch_model
    jloss, jp = jax_model(activation=jax.nn.relu)
    result = gc.compare({"torch": (tloss, net), "jax": (jloss, jp)})
    assert not result.passed
    assert result.loss_rel_diff["jax"] > 1e-3
    assert {r.reference_name for r in result.failed()} >= {"0.weight"}


def test_port_that_forgets_a_bias_names_it(torch_model) -> None:
    net, tloss = torch_model
    jloss, jp = jax_model(bias=False)
    with pytest.raises(gc.GradcheckError, match=r"0\.bias"):
        gc.compare({"torch": (tloss, net), "jax": (jloss, jp)})


def test_port_that_loads_a_kernel_the_wrong_way_is_named(torch_model) -> None:
    import jax.numpy as jnp

    net, tloss = torch_model

    def wrong(p):  # uses the (in, out) matrix as if it were (out, in)
        w1 = p["W1"].reshape(5, 4).T
        h = jnp.tanh(X @ w1 + p["b1"])
        return jnp.mean((h @ p["W2"] + p["b2"] - Y) ** 2)

    _, jp = jax_model()
    result = gc.compare({"torch": (tloss, net), "jax": (wrong, jp)})
    assert not result.passed
    assert "W1" in {r.name for r in result.failed()}
