"""The PyTorch adapter: modules, closures, custom Functions, float64, state, RNG."""

from __future__ import annotations

import random

import numpy as np
import pytest

import gradcheck_core as gc

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from gradcheck_core.adapters import get_adapter  # noqa: E402

pytestmark = pytest.mark.torch

ADAPTER = get_adapter("torch")


# -- custom Functions ----------------------------------------------------------


class Cubic(torch.autograd.Function):
    """y = x^3 + 2x, elementwise."""

    @staticmethod
    def forward(x):
        return x**3 + 2 * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (3 * x**2 + 2)

    @staticmethod
    def jvp(ctx, t):
        x = ctx.saved_for_jvp
        return t * (3 * x**2 + 2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.saved_for_jvp = x


class CubicWrongJvp(Cubic):
    """Backward right, forward-mode rule wrong by a factor 2."""

    @staticmethod
    def jvp(ctx, t):
        x = ctx.saved_for_jvp
        return 2 * t * (3 * x**2 + 2)


class CubicForgetsConstant(torch.autograd.Function):
    """Backward drops the derivative of the 2x term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3 + 2 * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


class Affine(torch.autograd.Function):
    """y = x @ W.T + b, with a backward written by hand."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W.T + b

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        return g @ W, g.T @ x, g.sum(0)


class AffineWrongWeight(torch.autograd.Function):
    """As :class:`Affine` but the weight gradient is doubled."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W.T + b

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        return g @ W, 2 * (g.T @ x), g.sum(0)


class SparseBug(torch.autograd.Function):
    """sum(sin(x)) with one gradient entry off by 1e-2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x).sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = g * torch.cos(x)
        out = out.clone()
        out[3] += 1e-2
        return out


def _affine_inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=gen, dtype=dtype, requires_grad=True)
    W = torch.randn(2, 3, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(2, generator=gen, dtype=dtype, requires_grad=True)
    return x, W, b


def _verdicts(report):
    return {b.name: b.verdict for b in report.blocks}


def test_custom_polynomial_correct_and_broken():
    x = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64, requires_grad=True)
    good = gc.check_function(Cubic.apply, x)
    assert good.verdict == "pass"
    assert good.rel_error < 1e-8
    bad = gc.check_function(CubicForgetsConstant.apply, x)
    assert bad.verdict == "fail"
    assert _verdicts(bad) == {"input0->output0": "fail"}


def test_custom_linear_layer_marks_only_the_broken_input():
    x, W, b = _affine_inputs()
    good = gc.check_function(Affine.apply, x, W, b)
    assert good.verdict == "pass"
    assert _verdicts(good) == {f"input{i}->output0": "pass" for i in range(3)}
    bad = gc.check_function(AffineWrongWeight.apply, x, W, b)
    assert bad.verdict == "fail"
    assert _verdicts(bad) == {
        "input0->output0": "pass",
        "input1->output0": "fail",
        "input2->output0": "pass",
    }
    scale = [f for f in bad.findings if f.kind == "scale"]
    assert scale and scale[0].block == "input1->output0"
    assert scale[0].detail["factor"] == pytest.approx(2.0, rel=1e-6)


def test_sparse_single_entry_bug_is_caught_and_located():
    x = torch.linspace(-2, 3, 40, dtype=torch.float64, requires_grad=True)
    report = gc.check_function(SparseBug.apply, x)
    assert report.verdict == "fail"
    block = report.blocks[0]
    assert block.n_bad == 1
    assert block.worst_index == (3,)


def test_float32_function_is_checked_in_float64():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(50, 50, generator=gen) / 7
    x = torch.randn(50, generator=gen, requires_grad=True)
    report = gc.check_function(lambda v: torch.tanh(A @ v).sum(), x)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert not [f for f in report.findings if f.kind == "low_precision"]
    loss_report = gc.check(lambda v: torch.tanh(A @ v).sum(), x.detach())
    assert loss_report.verdict == "pass"
    assert loss_report.rel_error < 1e-8
    assert x.dtype == torch.float32 and A.dtype == torch.float32


def test_float32_custom_function_inputs_are_promoted():
    x, W, b = _affine_inputs(torch.float32)
    report = gc.check_function(Affine.apply, x, W, b)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert all(t.dtype == torch.float32 for t in (x, W, b))


def test_second_order_through_create_graph():
    def first_derivative(x):
        (g,) = torch.autograd.grad(torch.sin(x).pow(2).sum(), x, create_graph=True)
        return g

    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    report = gc.check_function(first_derivative, x)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    # forward over reverse works too: no note about missing forward mode
    assert not [f for f in report.findings if f.kind == "no_forward_mode"]


def test_wrong_forward_mode_rule_is_caught():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    assert gc.check_function(Cubic.apply, x).verdict == "pass"
    report = gc.check_function(CubicWrongJvp.apply, x)
    assert report.verdict == "fail"
    assert _verdicts(report) == {"input0->output0": "pass", "input0->output0 (jvp)": "fail"}


class SmallWrongJvp(torch.autograd.Function):
    """1e-9 sin(x): the backward is right, the forward-mode rule gives half the derivative."""

    @staticmethod
    def forward(x):
        return 1e-9 * x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.x = x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 1e-9 * g * x.cos()

    @staticmethod
    def jvp(ctx, t):
        return 0.5e-9 * t * ctx.x.cos()


def test_wrong_forward_mode_rule_is_caught_at_any_scale_of_the_derivative():
    # judged relative to the JVP's own terms, not to |u| |v|, which would hide a factor at 1e-9
    report = gc.check_function(SmallWrongJvp.apply, torch.linspace(-1, 1, 6, dtype=torch.float64))
    assert _verdicts(report) == {"input0->output0": "pass", "input0->output0 (jvp)": "fail"}
    assert report.findings_of("forward_mode")


def test_integer_and_python_inputs_are_held_fixed():
    a = torch.linspace(-1, 1, 6)
    idx = torch.tensor([0, 2, 2, 5])
    report = gc.check_function(lambda v, i, k: (v[i] * k).sin(), a, idx, 3)
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks if "jvp" not in b.name] == ["input0->output0"]


def test_vjp_zero_for_an_input_that_does_not_matter():
    x = torch.randn(3, dtype=torch.float64)
    unused = torch.randn(2, dtype=torch.float64)
    u = np.ones(3)
    gx, gu = ADAPTER.vjp(lambda a, b: a * 2.0, [x, unused], [u])
    np.testing.assert_allclose(gx, 2 * u)
    np.testing.assert_array_equal(gu, np.zeros(2))


def test_jvp_forward_mode_and_its_absence():
    x = torch.linspace(-1, 1, 5, dtype=torch.float32)
    v = np.arange(5.0)
    (out,) = ADAPTER.jvp(Cubic.apply, [x], [v])
    xs = x.double().numpy()
    np.testing.assert_allclose(out, v * (3 * xs**2 + 2), rtol=1e-12)
    assert out.dtype == np.float64
    with pytest.raises(gc.InputError, match="forward-mode"):
        ADAPTER.jvp(CubicForgetsConstant.apply, [x], [v])


# -- modules ---------------------------------------------------------------------


def _mlp(dtype=torch.float32, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers).to(dtype)


def _data(dtype=torch.float32, n=12):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=gen, dtype=dtype), torch.randn(n, 3, generator=gen, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_with_zero_argument_closure(dtype):
    net = _mlp(dtype)
    x, y = _data(dtype)
    report = gc.check(lambda: F.mse_loss(net(x), y), net)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert [b.name for b in report.blocks] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p.dtype == dtype for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_with_functional_closure(dtype):
    net = _mlp(dtype)
    x, y = _data(dtype)
    report = gc.check(lambda p: F.mse_loss(p(x), y), net)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_module_is_evaluated_in_float64(dtype):
    net = _mlp(dtype)
    x, y = _data(dtype)
    report = gc.check(lambda: F.mse_loss(net(x), y), net)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert all(p.dtype == dtype for p in net.parameters())


class _Casting(nn.Module):
    """A forward pass that casts to float32 on its own (common in mixed-precision code)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        return self.lin(x.float()).to(torch.float32).softmax(-1, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["lstm", "conv", "casting"])
def test_other_float32_modules(kind):
    torch.manual_seed(0)
    if kind == "lstm":
        net = nn.LSTM(5, 4, batch_first=True)
        x = torch.randn(2, 3, 5)

        def loss():
            return net(x)[0].pow(2).sum()
    elif kind == "conv":
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 1))
        x = torch.randn(2, 1, 6, 6)

        def loss():
            return net(x).pow(2).mean()
    else:
        net = _Casting()
        x, _ = _data()

        def loss():
            return net(x)[:, 0].sum()

    report = gc.check(loss, net)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_gradient_hook_scales_one_parameter():
    net = _mlp()
    x, y = _data()
    handle = net[2].weight.register_hook(lambda g: g * 3)
    try:
        report = gc.check(lambda: F.mse_loss(net(x), y), net)
    finally:
        handle.remove()
    assert report.verdict == "fail"
    assert _verdicts(report) == {"0.weight": "pass", "0.bias": "pass", "2.weight": "fail", "2.bias": "pass"}
    scale = [f for f in report.findings if f.kind == "scale"]
    assert len(scale) == 1 and scale[0].block == "2.weight"
    assert scale[0].detail["factor"] == pytest.approx(3.0, rel=1e-6)


def test_fast_mode_finds_the_hooked_parameter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    handle = net[0].bias.register_hook(lambda g: g * 3)
    try:
        report = gc.check(lambda: F.cross_entropy(net(x), y), net, mode="fast")
    finally:
        handle.remove()
    assert report.mode == "fast"
    assert {b.name for b in report.blocks if b.verdict == "fail"} == {"0.bias"}
    assert [f.detail["factor"] for f in report.findings if f.kind == "scale"] == [
        pytest.approx(3.0, rel=1e-6)
    ]


def test_frozen_parameters_are_left_out():
    net = _mlp()
    net[0].weight.requires_grad_(False)
    x, y = _data()
    report = gc.check(lambda: F.mse_loss(net(x), y), net)
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks] == ["0.bias", "2.weight", "2.bias"]
    assert net[0].weight.requires_grad is False


def test_plain_tensors_list_and_dict():
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(3, 4, generator=gen, requires_grad=True)
    b = torch.randn(3, generator=gen)
    x = torch.randn(6, 4, generator=gen)
    report = gc.check(lambda: torch.tanh(x @ W.T + b).pow(2).sum(), [W, b])
    assert report.verdict == "pass"
    assert [blk.name for blk in report.blocks] == ["[0]", "[1]"]
    assert b.requires_grad is False and W.requires_grad is True
    report = gc.check(lambda p: torch.tanh(x @ p["W"].T + p["b"]).pow(2).sum(), {"W": W, "b": b})
    assert report.verdict == "pass"
    assert [blk.name for blk in report.blocks] == ["W", "b"]


def test_handwritten_gradients_as_tensors():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)

    def loss(p):
        return 0.5 * (x @ p["W"].T).pow(2).sum()

    def grad(p):
        return {"dW": (x @ p["W"].T).T @ x}

    assert gc.check(loss, {"W": W}, grad).verdict == "pass"
    assert gc.check(loss, {"W": W}, {"dW": grad({"W": W})["dW"].float()}).verdict == "pass"
    wrong = gc.check(loss, {"W": W}, lambda p: {"dW": 2 * grad(p)["dW"]})
    assert wrong.verdict == "fail"

    net = _mlp(torch.float64)
    xs, ys = _data(torch.float64)
    out = F.mse_loss(net(xs), ys)
    grads = torch.autograd.grad(out, list(net.parameters()))
    report = gc.check(lambda: F.mse_loss(net(xs), ys), net, list(grads))
    assert report.verdict == "pass"


def test_mixed_frameworks_is_a_clear_error():
    w = torch.zeros(3)
    with pytest.raises(gc.InputError, match="mixes frameworks"):
        gc.check(lambda p: p["w"].sum() + float(p["v"].sum()), {"w": w, "v": np.zeros(2)})


def test_loss_that_ignores_its_argument_is_a_clear_error():
    net = _mlp()
    x, y = _data()
    with pytest.raises(gc.InputError, match="does not depend on the parameters"):
        gc.check(lambda p: F.mse_loss(net(x).detach(), y), net)


def test_check_loss_with_torch_losses():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 4, generator=gen)
    labels = torch.randint(0, 4, (6,), generator=gen)
    target = torch.randn(6, 4, generator=gen)
    assert gc.check_loss(F.cross_entropy, labels, logits).verdict == "pass"
    report = gc.check_loss(nn.MSELoss(), target, logits)
    assert report.verdict == "pass" and report.rel_error < 1e-8


def test_float64_off_reports_low_precision_not_failure():
    net = _mlp()
    x, y = _data()
    report = gc.check(lambda: F.mse_loss(net(x), y), net, float64=False)
    assert report.verdict != "fail"
    kinds = [f.kind for f in report.findings]
    assert "low_precision" in kinds
    assert torch.get_default_dtype() == torch.float32


# -- randomness ------------------------------------------------------------------


def test_dropout_in_train_mode_is_replayed():
    net = _mlp(dropout=0.5).train()
    x, y = _data()
    before = torch.get_rng_state()
    report = gc.check(lambda: F.mse_loss(net(x), y), net)
    assert report.verdict == "pass"
    assert not [f for f in report.findings if f.kind == "nondeterministic"]
    assert torch.equal(torch.get_rng_state(), before)
    assert net.training


def test_dropout_with_functional_closure_falls_back_from_vmap():
    net = _mlp(dropout=0.5).train()
    x, y = _data()
    report = gc.check(lambda p: F.mse_loss(p(x), y), net)
    assert report.verdict == "pass"


def test_captured_generator_is_inconclusive_never_fail():
    net = _mlp()
    x, y = _data()
    gen = torch.Generator().manual_seed(0)

    def noisy():
        return F.mse_loss(net(x + 0.1 * torch.randn(x.shape, generator=gen)), y)

    report = gc.check(noisy, net)
    assert report.verdict == "inconclusive"
    assert "nondeterministic" in [f.kind for f in report.findings]


# -- state -------------------------------------------------------------------------


def _state(net):
    return {
        "values": [p.detach().clone() for p in net.parameters()],
        "dtypes": [p.dtype for p in net.parameters()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [p.grad for p in net.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "data_ptrs": [p.data_ptr() for p in net.parameters()],
        "training": [m.training for m in net.modules()],
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "random": random.getstate(),
    }


def _assert_same_state(net, before):
    after = _state(net)
    for a, b in zip(before["values"], after["values"]):
        assert a.dtype == b.dtype
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit
    for key in (
        "dtypes",
        "requires_grad",
        "data_ptrs",
        "training",
        "default_dtype",
        "grad_enabled",
        "random",
    ):
        assert before[key] == after[key], key
    for a, b in zip(before["grads"], after["grads"]):
        assert a is b
    for a, b in zip(before["grad_values"], after["grad_values"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    np.testing.assert_array_equal(before["numpy_rng"], after["numpy_rng"])


def _net_with_history():
    net = _mlp(dropout=0.3).train()
    net[0].bias.requires_grad_(False)
    x, y = _data()
    F.mse_loss(net(x), y).backward()  # existing .grad fields the check must keep
    return net, x, y


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("functional", [False, True])
def test_closure_raising_on_seventh_call_restores_everything(error, functional):
    net, x, y = _net_with_history()
    before = _state(net)
    calls = {"n": 0}

    def forward(model_out):
        calls["n"] += 1
        if calls["n"] == 7:
            raise error("seventh call")
        return F.mse_loss(model_out, y)

    if functional:

        def loss(p):
            return forward(p(x))
    else:

        def loss():
            return forward(net(x))

    with pytest.raises(error, match="seventh call"):
        gc.check(loss, net)
    assert calls["n"] == 7
    _assert_same_state(net, before)


def test_a_loss_writing_through_a_kept_reference_leaves_the_module_as_it_was():
    net = _mlp()
    x, y = _data()
    before = _state(net)
    kept = net[0].weight.data  # the parameter's own storage, as it was before the check

    def loss():
        kept.add_(1e-3)  # the loss writes into it on every call
        return F.mse_loss(net(x), y)

    gc.check(loss, net, mode="full", progress=False)
    _assert_same_state(net, before)


def test_closure_that_changes_global_state_is_undone():
    net, x, y = _net_with_history()
    before = _state(net)

    def meddling():
        net.eval()
        torch.set_default_dtype(torch.float64)
        return F.mse_loss(net(x), y)

    gc.check(meddling, net)
    _assert_same_state(net, before)


def test_pending_graph_still_backpropagates_after_a_check():
    net = _mlp()
    x, y = _data()
    out = F.mse_loss(net(x), y)
    expected = torch.autograd.grad(out, list(net.parameters()), retain_graph=True)
    gc.check(lambda: F.mse_loss(net(x), y), net)
    out.backward()
    for p, g in zip(net.parameters(), expected):
        assert torch.equal(p.grad, g)


def test_batchnorm_buffers_are_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1)).double().train()
    x, _ = _data(torch.float64)
    bn = net[1]
    mean, var, count = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    report = gc.check(lambda: net(x).pow(2).mean(), net)
    assert report.verdict == "pass"
    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, count)


# -- batched evaluation -------------------------------------------------------------


def test_vmap_batch_matches_the_loop():
    net = _mlp(torch.float32)
    x, y = _data()

    def loss(p):
        return F.mse_loss(p(x), y)

    rows = np.random.default_rng(0).normal(size=(5, sum(p.numel() for p in net.parameters())))
    with ADAPTER.target(loss, net) as target:
        assert target.evaluate_batch is not None
        batched = target.evaluate_batch(rows)
        assert target.evaluate_batch.works is True
        looped = np.array([float(target.evaluate(r)) for r in rows])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_unbatchable_loss_falls_back_to_the_loop():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=gen)

    def loss(v):
        return torch.tensor(float((A @ v).pow(2).sum().item()), requires_grad=False) + 0 * v.sum()

    v = torch.randn(4, generator=gen)
    rows = np.random.default_rng(1).normal(size=(3, 4))
    with ADAPTER.target(loss, v) as target:
        out = target.evaluate_batch(rows)
        assert target.evaluate_batch.works is False
    expected = [float((A.double() @ torch.tensor(r)).pow(2).sum()) for r in rows]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_a_module_loss_is_vectorised_and_matches_the_loop():
    net = _mlp(torch.float32)
    x, y = _data()
    before = _state(net)
    rows = np.random.default_rng(0).normal(size=(6, sum(p.numel() for p in net.parameters())))
    with ADAPTER.target(lambda: F.mse_loss(net(x), y), net) as target:
        assert target.evaluate_batch is not None
        batched = target.evaluate_batch(rows)
        assert target.evaluate_batch.works is True
        looped = np.array([float(target.evaluate(r).detach()) for r in rows])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    _assert_same_state(net, before)


def test_a_module_loss_that_reads_a_kept_reference_is_looped():
    # The loss reads the last bias through a reference taken before the check: under vmap
    # the module's slot would move and this tensor would not. The first batch's rows move
    # only the first weight, so comparing them with the loop would not show it.
    net = _mlp(torch.float32)
    x, y = _data()
    b = net[2].bias

    def loss():
        return F.mse_loss(F.linear(torch.tanh(net[0](x)), net[2].weight, b), y)

    with ADAPTER.target(loss, net) as target:
        # the first rows (compared with the loop) at x0, the others moving only that bias
        rows = np.repeat(target.flat.x0[None, :], 6, axis=0)
        rows[3:, -3:] += np.random.default_rng(0).normal(size=(3, 3))
        batched = target.evaluate_batch(rows)
        assert target.evaluate_batch.works is False
        looped = np.array([float(target.evaluate(r).detach()) for r in rows])
    np.testing.assert_array_equal(batched, looped)
    report = gc.check(loss, net, mode="full", progress=False)
    assert report.verdict == "pass", report


def _calls(loss):
    calls = [0]

    def counted():
        calls[0] += 1
        return loss()

    return counted, calls


def test_a_full_sweep_of_a_module_loss_is_vectorised_and_finds_a_wrong_entry():
    net = _mlp(torch.float64)
    x, y = _data(torch.float64)
    loss, calls = _calls(lambda: F.mse_loss(net(x), y))
    report = gc.check(loss, net, mode="full", progress=False)
    assert report.verdict == "pass"
    assert calls[0] < report.nfev / 4, (calls[0], report.nfev)
    names = [name for name, _ in net.named_parameters()]
    grads = torch.autograd.grad(F.mse_loss(net(x), y), list(net.parameters()))
    grad = {name: g.clone() for name, g in zip(names, grads)}
    grad["2.weight"][1, 4] *= 1.5
    wrong = gc.check(loss, net, grad, mode="full", progress=False)
    assert wrong.verdict == "fail"
    assert [b.name for b in wrong.blocks if b.verdict == "fail"] == ["2.weight"]
    assert tuple(wrong.blocks[2].worst_index) == (1, 4)


def test_tied_weights_are_moved_in_every_module_that_holds_them():
    torch.manual_seed(0)
    first, second = nn.Linear(10, 10).double(), nn.Linear(10, 10).double()
    second.weight = first.weight  # one parameter, registered twice
    net = nn.Sequential(first, nn.Tanh(), second)
    x = torch.randn(5, 10, dtype=torch.float64)
    loss, calls = _calls(lambda: net(x).pow(2).sum())
    report = gc.check(loss, net, mode="full", progress=False)
    assert report.verdict == "pass", report
    assert [b.name for b in report.blocks] == ["0.weight", "0.bias", "2.bias"]
    assert calls[0] < report.nfev / 4, (calls[0], report.nfev)


@pytest.mark.parametrize("functional", [False, True])
def test_thread_pool_executor(functional):
    from concurrent.futures import ThreadPoolExecutor

    net = _mlp()
    x, y = _data()
    before = _state(net)
    if functional:

        def loss(p):
            return F.mse_loss(p(x), y)
    else:

        def loss():
            return F.mse_loss(net(x), y)

    with ThreadPoolExecutor(2) as pool:
        report = gc.check(loss, net, executor=pool)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8
    _assert_same_state(net, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_module():
    net = _mlp().cuda()
    x, y = (t.cuda() for t in _data())
    assert gc.check(lambda: F.mse_loss(net(x), y), net).verdict == "pass"
    assert gc.check(lambda p: F.mse_loss(p(x), y), net).verdict == "pass"
    assert all(p.is_cuda and p.dtype == torch.float32 for p in net.parameters())


# ----------------------------------------------------------------------------- loss(m) with a module


class _Doubled(torch.autograd.Function):
    """tanh whose backward is twice too large: only autograd's gradient shows it."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return 2 * g * (1 - y**2)


class _Net(torch.nn.Module):
    def __init__(self, act=torch.tanh):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)
        self.drop = torch.nn.Dropout(0.3)
        self.register_buffer("scale", torch.tensor(1.5))
        self.act = act

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x)))) * self.scale


def _module_state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("train", [True, False])
def test_loss_of_the_module_receives_the_module(train: bool) -> None:
    torch.manual_seed(0)
    net = _Net().train(train)
    x = torch.randn(7, 3)
    before, rng = _module_state(net), torch.get_rng_state()
    seen = []

    def loss(m):
        seen.append((m is net, m.fc1.weight.dtype))
        return (m(x) ** 2).sum()

    report = gc.check(loss, net)
    assert report.passed and report.rel_error < 1e-8
    assert [b.name for b in report.blocks] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(is_net and dtype == torch.float64 for is_net, dtype in seen)
    after = _module_state(net)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert net.training is train and all(m.training is train for m in net.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())


def test_loss_of_the_module_checks_autograd() -> None:
    torch.manual_seed(1)
    net = _Net(act=_Doubled.apply).eval()
    x = torch.randn(6, 3)
    report = gc.check(lambda m: (m(x) ** 2).sum(), net)
    assert report.verdict == "fail"
    assert "fc1.weight" in report.failed_blocks and "fc2.weight" not in report.failed_blocks
    fast = gc.check(lambda m: (m(x) ** 2).sum(), net, mode="fast")
    assert fast.verdict == "fail"


def test_loss_of_the_module_in_compare_and_with_a_handwritten_gradient() -> None:
    torch.manual_seed(2)
    a, b = _Net().eval(), _Net().eval()
    x = torch.randn(5, 3)
    result = gc.compare({"a": (lambda m: (m(x) ** 2).sum(), a), "b": (lambda: (b(x) ** 2).sum(), b)})
    assert result.passed, str(result)

    def grad(m):  # a handwritten gradient is called like the loss: with the module, in float64
        assert m is a and m.fc1.weight.dtype == torch.float64
        h = torch.tanh(x.double() @ m.fc1.weight.T + m.fc1.bias)
        g_out = 2 * (h @ m.fc2.weight.T + m.fc2.bias) * m.scale * m.scale
        g_h = (g_out @ m.fc2.weight) * (1 - h**2)
        return {
            "fc1.weight": g_h.T @ x.double(),
            "fc1.bias": g_h.sum(0),
            "fc2.weight": g_out.T @ h,
            "fc2.bias": g_out.sum(0),
        }

    assert gc.check(lambda m: (m(x) ** 2).sum(), a, grad).passed


def test_forward_mode_checks_in_threads_take_turns() -> None:
    """torch keeps one forward-mode level per process: checks in threads must not collide on it."""
    import threading

    x = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    outcomes: list[tuple[str, frozenset[str]]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:  # many operators: a long stay in forward mode
        for _ in range(30):
            t = torch.softmax(t, -1) * 3
        return t

    def work() -> None:
        for _ in range(10):
            r = gc.check_function(fn, x)
            outcomes.append((r.verdict, frozenset(f.kind for f in r.findings)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [("pass", frozenset())] * 40
