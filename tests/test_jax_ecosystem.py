"""Flax, Equinox and Haiku models; float32 data under float64; pytrees everywhere.

Each test runs real library code (Equinox and Haiku conv layers call
``lax.conv`` directly, Flax nnx modules are pytrees with internal state) and
asserts the check's outcome, its names and its findings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.errors import InputError, ReverseModeUnsupported


@jax.custom_vjp
def _wrong_at_3(w):
    return w


_wrong_at_3.defvjp(lambda w: (w, None), lambda _, g: (g.reshape(-1).at[3].multiply(1.5).reshape(g.shape),))


def _images(shape=(2, 8, 8, 1)):
    return jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)


# -- float32 data meets float64 parameters ---------------------------------------
LOW, HIGH, ZERO = (jnp.asarray(v, jnp.float32) for v in (-0.5, 0.5, 0.0))  # float32 data, read as globals


@pytest.mark.parametrize(
    "op",
    [
        lambda w, x: jax.lax.conv(x, w, (1, 1), "SAME"),
        lambda w, x: jax.lax.clamp(LOW, x * w[0, 0, 0, 0], HIGH),
        lambda w, x: jax.lax.pad(x * w[0, 0, 0, 0], ZERO, [(0, 0, 0), (0, 0, 0), (1, 1, 0), (1, 1, 0)]),
    ],
    ids=["conv", "clamp", "pad"],
)
def test_lax_primitives_with_captured_float32_data_run_in_float64(op):
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 6, 6), jnp.float32) * 0.3
    w = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 3, 3), jnp.float32)
    report = gc.check(lambda p: jnp.sum(jnp.sin(op(p, x))), w)
    assert report.verdict == "pass"
    assert report.rel_error < 1e-8  # float64 precision, not float32's
    assert not [f for f in report.findings if f.kind == "low_precision"]


def test_equinox_cnn_on_float32_images():
    eqx = pytest.importorskip("equinox")
    key = jax.random.PRNGKey(0)
    conv = eqx.nn.Conv2d(1, 2, 3, key=key)
    X = _images((1, 6, 6))
    report = gc.check(lambda m: jnp.sum(jnp.tanh(m(X)) ** 2), conv)
    assert report.verdict == "pass" and report.rel_error < 1e-8
    assert [b.name for b in report.blocks] == ["weight", "bias"]


def test_haiku_cnn_on_float32_images_and_a_wrong_entry_named():
    hk = pytest.importorskip("haiku")
    X = _images()

    def forward(x, broken=False):
        h = jax.nn.relu(hk.Conv2D(3, 3, name="conv")(x))
        w = hk.get_parameter("w", (h.shape[-1], 2), init=hk.initializers.TruncatedNormal(0.5))
        return jnp.mean(h, axis=(1, 2)) @ (_wrong_at_3(w) if broken else w)

    net = hk.without_apply_rng(hk.transform(forward))
    params = net.init(jax.random.PRNGKey(0), X)
    good = gc.check(lambda p: jnp.sum(net.apply(p, X) ** 2), params)
    assert good.verdict == "pass"
    bad = gc.check(lambda p: jnp.sum(net.apply(p, X, True) ** 2), params)
    failing = [b for b in bad.blocks if b.verdict == "fail"]
    assert [(b.name, b.worst_index) for b in failing] == [("~.w", (1, 1))]


def test_check_function_gives_fn_float64_inputs():
    seen = []

    def fn(x):
        seen.append(x.dtype)
        return x * jnp.asarray(0.1)  # a Python scalar: float64 in 64-bit mode

    report = gc.check_function(fn, jnp.linspace(0.0, 1.0, 5, dtype=jnp.float32))
    assert report.verdict == "pass"
    assert set(map(str, seen)) == {"float64"}


# -- pytrees ---------------------------------------------------------------------
def test_check_function_takes_dict_inputs_and_names_their_leaves():
    p = {"w": jnp.full((3, 2), 0.3), "b": jnp.zeros(2)}
    x = jnp.linspace(0.0, 1.0, 6).reshape(2, 3)
    report = gc.check_function(lambda p, x: jnp.tanh(x @ p["w"] + p["b"]), p, x)
    assert report.verdict == "pass"
    names = [b.name for b in report.blocks]
    assert names[:3] == ["input0.w->output0", "input0.b->output0", "input1->output0"]


def test_check_function_names_the_wrong_entry_inside_a_dict_input():
    report = gc.check_function(lambda d: jnp.sin(_wrong_at_3(d["a"])), {"a": jnp.linspace(0.1, 1.0, 6)})
    assert report.verdict == "fail"
    (bad,) = [b for b in report.blocks if b.verdict == "fail"]
    assert (bad.name, bad.worst_index) == ("input0.a->output0", (3,))


def test_equinox_module_as_gradient_is_read_not_called():
    eqx = pytest.importorskip("equinox")
    X = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    mlp = eqx.nn.MLP(4, 1, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(1))

    def loss(m):
        return jnp.mean(jax.vmap(m)(X) ** 2)

    grads = eqx.filter_grad(loss)(mlp)  # callable: an eqx.nn.MLP holding gradients
    assert gc.check(loss, mlp, grads).verdict == "pass"
    wrong = eqx.tree_at(lambda g: g.layers[0].bias, grads, grads.layers[0].bias * 2)
    report = gc.check(loss, mlp, wrong)
    assert report.verdict == "fail"
    assert [b.name for b in report.blocks if b.verdict == "fail"] == ["layers[0].bias"]


def test_equinox_module_with_non_array_leaves_is_filtered_to_its_arrays():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))  # activation functions are leaves
    X = jnp.ones((5, 3))
    report = gc.check(lambda m: jnp.sum(jax.vmap(m)(X) ** 2), mlp)
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks] == [
        "layers[0].weight",
        "layers[0].bias",
        "layers[1].weight",
        "layers[1].bias",
    ]


def _nnx_model():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1))])
            self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(2))
            self.drop = nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(3))

        def __call__(self, x):
            return self.layers[1](self.drop(self.bn(jnp.tanh(self.layers[0](x)))))

    return nnx, Net()


NNX_NAMES = [
    "bn.bias",
    "bn.scale",
    "layers[0].bias",
    "layers[0].kernel",
    "layers[1].bias",
    "layers[1].kernel",
]


def test_nnx_module_as_params():
    _, model = _nnx_model()
    X = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    report = gc.check(lambda m: jnp.sum(m(X) ** 2), model)
    assert report.verdict == "pass"
    assert sorted(b.name for b in report.blocks) == NNX_NAMES  # no batch statistics, no rng keys


def test_nnx_split_state_names_without_value_suffix():
    nnx, model = _nnx_model()
    X = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p, rest)(X) ** 2)

    report = gc.check(loss, params)
    assert report.verdict == "pass"
    assert sorted(b.name for b in report.blocks) == NNX_NAMES
    grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2))(model)
    assert gc.check(loss, params, grads).verdict == "pass"


def test_flax_linen_params_with_float32_data():
    nn = pytest.importorskip("flax.linen")

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    X = _images()
    params = CNN().init(jax.random.PRNGKey(0), X)
    report = gc.check(lambda p: jnp.sum(CNN().apply(p, X) ** 2), params)
    assert report.verdict == "pass"
    assert {b.name for b in report.blocks} == {
        "params.Conv_0.kernel",
        "params.Conv_0.bias",
        "params.Dense_0.kernel",
        "params.Dense_0.bias",
    }


def test_integer_dict_keys_read_as_positions():
    report = gc.check(lambda p: jnp.sum(p[0] ** 2) + jnp.sum(p[1]), {0: jnp.ones(2), 1: jnp.ones(3)})
    assert [b.name for b in report.blocks] == ["[0]", "[1]"]


# -- float32 gradients given as values -----------------------------------------------
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000))
def test_correct_float32_gradient_values_pass_with_a_low_precision_finding(seed):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    X = jax.random.normal(k1, (32, 5), jnp.float32)
    p32 = {"W": jax.random.normal(k2, (5, 3)), "b": jax.random.normal(k3, (3,))}

    def loss(p):
        return jnp.sum(jnp.tanh(X @ p["W"] + p["b"]) ** 2)

    report = gc.check(loss, p32, jax.grad(loss)(p32))
    assert report.verdict == "pass"
    notes = [f for f in report.findings if f.kind == "low_precision"]
    assert notes and "float32" in notes[0].message


def test_float32_gradient_values_still_catch_a_wrong_entry():
    X = jax.random.normal(jax.random.PRNGKey(0), (32, 5), jnp.float32)
    p32 = {"W": jax.random.normal(jax.random.PRNGKey(1), (5, 3)), "b": jnp.zeros(3)}

    def loss(p):
        return jnp.sum(jnp.tanh(X @ p["W"] + p["b"]) ** 2)

    g = jax.grad(loss)(p32)
    g = {"W": g["W"].at[1, 1].multiply(1.001), "b": g["b"]}
    report = gc.check(loss, p32, g)
    assert report.verdict == "fail"
    assert [(b.name, b.worst_index) for b in report.blocks if b.verdict == "fail"] == [("W", (1, 1))]


def test_float64_gradient_values_keep_the_tight_tolerance():
    x = jnp.linspace(0.1, 1.0, 4, dtype=jnp.float32)
    report = gc.check(lambda p: jnp.sum(p**3), x, np.asarray(3 * np.asarray(x, np.float64) ** 2))
    assert report.rtol == pytest.approx(1e-6)
    assert not [f for f in report.findings if f.kind == "low_precision"]


# -- while_loop ------------------------------------------------------------------
def _grow(x):
    return jax.lax.while_loop(lambda c: c[0] < 5.0, lambda c: c * 1.5, x)


def test_while_loop_function_gets_its_forward_mode_checked():
    # reverse mode is unsupported: the VJPs come from jax.jvp, and the JVPs are checked too
    report = gc.check_function(_grow, jnp.array([1.0, 2.0]))
    assert report.verdict == "pass"
    assert [b.name for b in report.blocks] == ["input0->output0", "input0->output0 (jvp)"]
    assert not [f for f in report.findings if "custom_vjp" in f.message]


def test_while_loop_loss_says_what_is_wrong_and_how_to_check_forward_mode():
    def loss(p):
        return jnp.sum(_grow(p) ** 2)

    with pytest.raises(ReverseModeUnsupported, match=r"jax\.jacfwd") as info:
        gc.check(loss, jnp.array([1.0, 2.0]))
    assert isinstance(info.value, InputError)
    assert gc.check(loss, jnp.array([1.0, 2.0]), jax.jacfwd(loss)).verdict == "pass"


# -- located low precision ---------------------------------------------------------
def test_dot_product_attention_named_as_the_float32_computation():
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 1, 4))
    report = gc.check(lambda q: jnp.sum(jax.nn.dot_product_attention(q, q, q) ** 2), q)
    assert report.verdict != "fail"
    (note,) = [f for f in report.findings if f.kind == "low_precision"]
    assert "dot_product_attention" in note.message and "softmax" in note.message


# -- saturation --------------------------------------------------------------------
def test_clipped_loss_with_unclipped_gradient_gets_a_saturation_finding():
    x = jnp.linspace(-2.0, 2.0, 8)
    report = gc.check(lambda v: jnp.sum(jnp.clip(v, -1.0, 1.0) ** 2), x, 2 * x)
    assert report.verdict == "fail"
    (finding,) = [f for f in report.findings if f.kind == "saturation"]
    assert finding.detail["n_flat"] == 4
    assert finding.detail["entries"] == [(0,), (1,), (6,), (7,)]
    assert not [f for f in report.findings if f.kind == "missing_term"]


def test_jitted_loss_with_captured_float32_data_runs_in_float64():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 6, 6), jnp.float32)

    @jax.jit
    def loss(w):
        return jnp.sum(jnp.tanh(jax.lax.conv(x, w, (1, 1), "SAME")) ** 2)

    report = gc.check(loss, jnp.full((1, 1, 3, 3), 0.2, jnp.float32))
    assert report.verdict == "pass" and report.rel_error < 1e-8


def test_float32_data_out_of_reach_gets_an_error_with_the_remedy():
    class Batch:
        images = jnp.ones((1, 1, 5, 5), jnp.float32)

    batch = Batch()
    with pytest.raises(InputError, match=r"jnp\.asarray\(X, jnp\.float64\)"):
        gc.check(lambda w: jnp.sum(jax.lax.conv(batch.images, w, (1, 1), "SAME")), jnp.ones((1, 1, 3, 3)))
