"""Memory handed back while a large gradient is copied: values exact, nothing else touched."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheck_core as gc
from gradcheck_core import pages

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are given back on Linux only")

# float64 entries in MIN_BYTES, and a little more
LARGE = pages.MIN_BYTES // 8 + 4099


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@linux
def test_given_back_pages_leave_the_process_and_read_as_zero() -> None:
    a = np.random.default_rng(0).standard_normal(LARGE)
    head, tail = a[:3].copy(), a[-3:].copy()
    before = _resident()
    assert pages.give_back(a)
    assert before - _resident() > 0.9 * a.nbytes  # the memory has left the process
    inside = a[4096:-4096]  # whole pages, whatever the array's alignment
    assert not inside.any()
    # the bytes of the partial pages at either end are kept (they may be another's)
    start = a.ctypes.data
    if start % 4096:
        assert a[:3].tobytes() == head.tobytes()
    if (start + a.nbytes) % 4096:
        assert a[-3:].tobytes() == tail.tobytes()
    a[:] = 1.5  # usable again: writing takes fresh pages
    assert float(a.sum()) == 1.5 * a.size


def test_arrays_that_do_not_own_their_memory_or_are_small_are_left_alone(tmp_path: Any) -> None:
    a = np.random.default_rng(1).standard_normal(2 * LARGE)
    saved = a.copy()
    assert not pages.give_back(a[: LARGE + 10])  # a view
    assert not pages.give_back(a[::2])  # strided
    small = np.ones(1000)
    assert not pages.give_back(small) and small.sum() == 1000
    mapped = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(LARGE,))
    mapped[:] = 2.0
    assert not pages.give_back(mapped)  # a file's pages: dropping them would lose writes
    assert float(mapped[-1]) == 2.0
    assert a.tobytes() == saved.tobytes()


def _big_net() -> nn.Module:
    torch.manual_seed(0)
    # x0 of about 34 MiB: the gradient is copied with x0's pages handed back
    return nn.Sequential(nn.Linear(600, 7500), nn.Tanh(), nn.Linear(7500, 3))


def _bits(net: nn.Module) -> list[bytes]:
    return [p.detach().numpy().tobytes() for p in net.parameters()]


@pytest.mark.parametrize("kind", ["loss()", "loss(p)"])
def test_the_gradient_copied_with_x0_set_aside_is_autograds_and_x0_comes_back(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _big_net()
    x = torch.randn(4, 600, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1, 0])
    assert 8 * sum(p.numel() for p in net.parameters()) >= pages.MIN_BYTES
    before = _bits(net)
    given: list[np.ndarray] = []
    real = pages.give_back

    def watched(array: np.ndarray) -> bool:
        given.append(array)
        return real(array)

    def keep(array: np.ndarray) -> bool:
        return False

    # autograd's own gradients, as each gradient() call gets them, before they are copied
    from gradcheck_core.adapters.torch import autodiff

    returned: list[np.ndarray] = []
    real_copy = autodiff._flat_gradient

    def recorded(grads: list[Any], *args: Any) -> np.ndarray:
        returned.append(np.concatenate([g.detach().numpy().reshape(-1) for g in grads]))
        return real_copy(grads, *args)

    monkeypatch.setattr(autodiff, "_flat_gradient", recorded)

    # The gradient with x0's pages given back, then with them kept, then given back again.
    # (Two gradients of one target may differ in their last bits, as BLAS's may between calls.)
    gradients, x0 = _flat_gradients_of(net, x, y, kind, monkeypatch, [watched, keep, watched])
    # x0's pages were given back while the gradient was copied (x0 is whole again after: see the helper)
    assert len(given) == 2 and given[0] is x0 and given[1] is x0
    # each flat gradient is autograd's, bit for bit, whether x0's pages were given back meanwhile or not
    assert [g.tobytes() for g in gradients] == [r.tobytes() for r in returned]
    net64 = _big_net().double()
    expected = torch.autograd.grad(F.cross_entropy(net64(x.double()), y), list(net64.parameters()))
    for g in gradients:  # (not the zeros of pages given back: each is the float64 gradient)
        np.testing.assert_allclose(g, np.concatenate([e.numpy().reshape(-1) for e in expected]), rtol=1e-9)
    assert _bits(net) == before
    monkeypatch.setattr("gradcheck_core.adapters.torch.working.give_back", real)
    loss = (lambda: F.cross_entropy(net(x), y)) if kind == "loss()" else None
    if loss is None:
        report = gc.check(
            lambda p: F.cross_entropy(torch.func.functional_call(net, p, (x,)), y),
            dict(net.named_parameters()),
            mode="fast",
            progress=False,
        )
    else:
        report = gc.check(loss, net, mode="fast", progress=False)
    assert report.verdict == "pass"
    assert _bits(net) == before


def _flat_gradients_of(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    give_backs: list[Any],
) -> tuple[list[np.ndarray], np.ndarray]:
    """The flat gradients one torch target computes at x0, one per ``give_backs`` in turn, and x0.

    x0 is checked whole again after each gradient.
    """
    from gradcheck_core.adapters.torch import ADAPTER

    def loss_p(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(x), y)

    params = dict(net.named_parameters()) if kind == "loss(p)" else net
    gradients = []
    with ADAPTER.target(loss_p if kind == "loss(p)" else loss, params) as target:
        x0 = target.flat.x0.copy()
        for give_back in give_backs:
            monkeypatch.setattr("gradcheck_core.adapters.torch.working.give_back", give_back)
            gradients.append(np.asarray(target.gradient(), dtype=np.float64))
            assert target.flat.x0.tobytes() == x0.tobytes()
            assert target.evaluate(target.flat.x0) == target.evaluate(x0)
        return gradients, target.flat.x0


def test_x0_comes_back_when_the_copy_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcheck_core.adapters.torch import ADAPTER, autodiff

    net = _big_net()
    x = torch.randn(4, 600, generator=torch.Generator().manual_seed(1))
    before = _bits(net)

    def broken(*args: Any) -> np.ndarray:
        raise MemoryError("no room for the flat gradient")

    monkeypatch.setattr(autodiff, "_flat_gradient", broken)
    with ADAPTER.target(lambda: net(x).square().mean(), net) as target:
        x0 = target.flat.x0.copy()
        with pytest.raises(MemoryError, match="no room"):
            target.gradient()
        assert target.flat.x0.tobytes() == x0.tobytes()
        assert target.evaluate(target.flat.x0) == target.evaluate(x0)
    assert _bits(net) == before
