"""A Dask cluster of worker processes evaluates torch and JAX losses (closures, modules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import gradcheck_core as gc

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_torch_module_loss_in_worker_processes(client: Any) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(5, 3)
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}

    def loss(p: dict[str, Any]) -> Any:  # a closure over the module and the data
        return torch.func.functional_call(model, p, (x,)).pow(2).sum()

    report = gc.check(loss, params, mode="full", executor=client.get_executor())
    assert report.verdict == "pass"
    assert report.nfev >= 2 * sum(v.numel() for v in params.values())
    assert all(torch.equal(before[k], v) for k, v in params.items())


def test_torch_wrong_gradient_found_in_worker_processes(client: Any) -> None:
    torch = pytest.importorskip("torch")
    w = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64)

    def loss(p: Any) -> Any:
        return (p.sin() * p).sum()

    def grad(p: Any) -> Any:
        g = p.cos() * p + p.sin()
        g[5] += 1e-3
        return g

    report = gc.check(loss, w, grad, mode="full", executor=client.get_executor())
    assert report.verdict == "fail"
    assert report.blocks[0].worst_index == (5,)


def test_jax_loss_in_worker_processes(client: Any) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    data = np.linspace(0.0, 1.0, 6)

    def loss(p: dict[str, Any]) -> Any:
        return jnp.sum(jnp.tanh(p["w"] * data + p["b"]) ** 2)

    params = {"w": jnp.asarray(np.linspace(-0.5, 0.5, 6)), "b": jnp.asarray(0.1)}
    report = gc.check(loss, params, mode="full", executor=client.get_executor())
    assert report.verdict == "pass"
    assert report.framework == "jax"
