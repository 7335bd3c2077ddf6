"""Real architectures, built from code with random weights: do their gradients check?

For each model the script checks the framework's own gradient (it must
pass), then replaces one layer with a custom op whose backward pass is wrong
in one entry (``torch.autograd.Function``, ``jax.custom_vjp``,
``keras.ops.custom_gradient``, i.e. ``tf.custom_gradient`` on TensorFlow) and
checks again: the failing entry must be named.  Time and evaluations are
given in units of one forward+backward pass of the model as its user runs it
(float32, compiled where the framework compiles).

Models: torchvision ResNet-18; Hugging Face ``transformers`` BERT and GPT-2 of
a small config (``BertConfig``/``GPT2Config``, no pretrained weights); Keras
``applications.MobileNetV3Small(weights=None)`` on the TensorFlow and JAX
backends (one process per backend: the script runs itself again with
``KERAS_BACKEND`` set); a Flax linen CNN; an Equinox MLP; a Haiku MLP.
torchvision does not import beside every torch build; the ResNet row runs in
whichever interpreter has it (``--torchvision-python``, default: this one)
and is skipped with the reason otherwise.

The Keras rows check ``loss(model)``, which evaluates a float64 copy of the
model, in inference mode with batch-normalisation statistics taken from the
check's four images (see ``_keras_rows`` for why).

Nothing is asserted; the numbers depend on the machine.  Run it with
``python benchmarks/real_models.py`` (about 40 minutes on two busy CPU cores,
most of it the two Keras rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

WRONG_ENTRY = 3  # flat index of the entry whose backward is wrong
WRONG_FACTOR = 1.5
#: Random directions per parameter in fast mode for the large models (the library's default is 3).
BIG_DIRECTIONS = 1
ROW = "ROW "


def _timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    fn()  # warm-up (compilation)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _at(shape: tuple[int, ...], entry: int = WRONG_ENTRY) -> str:
    """The wrong entry's index in a parameter of ``shape``, as the report prints it."""
    return str([int(i) for i in np.unravel_index(entry, tuple(shape))])


def _row(
    model: str, framework: str, n: int, mode: str, t_fb: float, good: Any, bad: Any, expected: str
) -> dict:
    failing = [b for b in bad.blocks if b.verdict == "fail"]
    named = f"{failing[0].name}{[int(i) for i in failing[0].worst_index or ()]}" if failing else "-"
    return {
        "model": model,
        "framework": framework,
        "params": n,
        "mode": mode,
        "correct": good.verdict,
        "evals": good.nfev,
        "seconds": round(good.seconds, 2),
        "fwd_bwd_ms": round(1e3 * t_fb, 2),
        "cost": round(good.seconds / t_fb, 1),
        "broken": bad.verdict,
        "named": named,
        "expected": expected,
    }


def _emit(row: dict) -> None:
    print(ROW + json.dumps(row), flush=True)


def _why(label: str, report: Any) -> None:
    """For a verdict other than the expected one: the blocks it came from and the findings."""
    blocks = [f"{b.name} {b.verdict} ({b.rel_error:.2g})" for b in report.blocks if b.verdict != "pass"]
    print(f"  {label}: {report.verdict}; {len(blocks)} of {len(report.blocks)} blocks not passed", flush=True)
    for line in blocks[:20]:
        print(f"    {line}", flush=True)
    for f in report.findings:
        print(f"    [{f.kind}] {f.block or ''}: {f.message[:300]}", flush=True)


# -- torch -----------------------------------------------------------------------
def _torch_wrong_identity(entry: list[int]) -> Any:
    """The identity, whose backward multiplies the entry ``entry[0]`` of the gradient by WRONG_FACTOR."""
    import torch

    class WrongIdentity(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, w: Any) -> Any:
            return w.clone()

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            g = g.clone()
            g.view(-1)[entry[0]] *= WRONG_FACTOR
            return g

    return WrongIdentity.apply


def _torch_rows(which: set[str]) -> None:
    import torch
    import torch.nn.functional as F

    import gradcheck_core as gc

    torch.manual_seed(0)
    entry = [WRONG_ENTRY]
    wrong = _torch_wrong_identity(entry)

    class WrongLinear(torch.nn.Module):
        """``nn.Linear``'s forward, with a backward wrong in one weight entry."""

        def __init__(self, lin: Any) -> None:
            super().__init__()
            self.weight, self.bias = lin.weight, lin.bias

        def forward(self, x: Any) -> Any:
            return F.linear(x, wrong(self.weight), self.bias)

    class WrongConv1D(torch.nn.Module):
        """GPT-2's ``Conv1D`` (x @ W + b), with a backward wrong in one weight entry."""

        def __init__(self, conv: Any) -> None:
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias

        def forward(self, x: Any) -> Any:
            return x @ wrong(self.weight) + self.bias

    def run(
        name: str, model: Any, loss: Callable[[], Any], swap: Callable[[], str], directions: int = 3
    ) -> None:
        model.eval()
        n = sum(p.numel() for p in model.parameters())

        def fb() -> None:
            model.zero_grad(set_to_none=True)
            loss().backward()

        t_fb = _timed(fb)
        model.zero_grad(set_to_none=True)
        opts = {"mode": "fast", "directions": directions, "progress": False}
        good = gc.check(loss, model, **opts)
        expected = swap()
        bad = gc.check(loss, model, **opts)
        _emit(_row(name, "torch", n, f"fast, {directions} dir.", t_fb, good, bad, expected))

    def where(module: Any, attr: str, shape: tuple[int, ...]) -> str:
        return f"{attr}.weight{_at(shape)}"

    if "resnet" in which:
        import torchvision

        net = torchvision.models.resnet18(weights=None, num_classes=10)
        x = torch.randn(1, 3, 32, 32)
        y = torch.tensor([7])

        def swap_fc() -> str:
            # After ReLU and pooling to 1x1, many features of one image are 0, and so is
            # the gradient of their fc weights (scaling it changes nothing): the wrong
            # entry is the first from WRONG_ENTRY on whose gradient is not zero.
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            live = np.flatnonzero(net.fc.weight.grad.reshape(-1).numpy() != 0)
            net.zero_grad(set_to_none=True)
            entry[0] = int(live[live >= WRONG_ENTRY][0])
            shape = tuple(net.fc.weight.shape)
            net.fc = WrongLinear(net.fc)
            return f"fc.weight{_at(shape, entry[0])}"

        run("ResNet-18 (torchvision)", net, lambda: F.cross_entropy(net(x), y), swap_fc, BIG_DIRECTIONS)
    if "hf" in which:
        from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

        cfg = BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=3,
        )  # fmt: skip
        bert = BertForSequenceClassification(cfg)
        ids = torch.randint(0, 100, (2, 12))
        labels = torch.tensor([0, 2])

        def swap_classifier() -> str:
            bert.classifier = WrongLinear(bert.classifier)
            return where(bert, "classifier", tuple(bert.classifier.weight.shape))

        run("BERT (transformers, 2 layers, hidden 32)", bert,
            lambda: F.cross_entropy(bert(ids).logits, labels), swap_classifier)  # fmt: skip

        gcfg = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2)
        gpt = GPT2LMHeadModel(gcfg)
        tokens = torch.randint(0, 100, (2, 12))

        def swap_proj() -> str:
            block = gpt.transformer.h[-1].mlp
            shape = tuple(block.c_proj.weight.shape)
            block.c_proj = WrongConv1D(block.c_proj)
            return where(gpt, "transformer.h.1.mlp.c_proj", shape)

        run("GPT-2 (transformers, 2 layers, n_embd 32)", gpt,
            lambda: gpt(tokens, labels=tokens).loss, swap_proj)  # fmt: skip


# -- JAX: Flax, Equinox, Haiku -----------------------------------------------------
def _jax_rows() -> None:
    import jax
    import jax.numpy as jnp

    import gradcheck_core as gc

    @jax.custom_vjp
    def wrong(w: Any) -> Any:
        return w

    def fwd(w: Any) -> Any:
        return w, None

    def bwd(_: Any, g: Any) -> Any:
        return (g.reshape(-1).at[WRONG_ENTRY].multiply(WRONG_FACTOR).reshape(g.shape),)

    wrong.defvjp(fwd, bwd)
    key = jax.random.PRNGKey(0)
    kx, ky, kp = jax.random.split(key, 3)

    def run(
        name: str, framework: str, params: Any, loss: Callable, bad_loss: Callable, expected: str, mode: str
    ) -> None:
        n = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
        if framework == "equinox":
            import equinox as eqx

            vg = eqx.filter_jit(eqx.filter_value_and_grad(loss))
        else:
            vg = jax.jit(jax.value_and_grad(loss))
        t_fb = _timed(lambda: jax.block_until_ready(vg(params)))
        good = gc.check(loss, params, mode=mode, progress=False)
        bad = gc.check(bad_loss, params, mode=mode, progress=False)
        _emit(_row(name, framework, n, mode, t_fb, good, bad, expected))

    # Flax linen CNN on float32 images
    import flax.linen as nn

    class CNN(nn.Module):
        broken: bool = False

        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0] // 1, -1)
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 10))
            return x @ (wrong(kernel) if self.broken else kernel)

    images = jax.random.normal(kx, (4, 12, 12, 1), jnp.float32)
    labels = jax.nn.one_hot(jnp.array([1, 3, 5, 7]), 10)
    cnn_params = CNN().init(kp, images)

    def cnn_loss(p: Any, model: Any = None) -> Any:
        model = CNN() if model is None else model
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(model.apply(p, images)), -1))

    shape = cnn_params["params"]["kernel"].shape
    run("CNN (Flax linen)", "flax", cnn_params, cnn_loss, lambda p: cnn_loss(p, CNN(broken=True)),
        f"params.kernel{_at(shape)}", "full")  # fmt: skip

    # Equinox MLP
    import equinox as eqx

    X = jax.random.normal(kx, (32, 8), jnp.float32)
    Y = jax.random.normal(ky, (32, 2), jnp.float32)
    mlp = eqx.nn.MLP(8, 2, 32, 2, activation=jnp.tanh, key=kp)

    def eqx_loss(m: Any) -> Any:
        return jnp.mean((jax.vmap(m)(X) - Y) ** 2)

    def eqx_bad(m: Any) -> Any:
        m = eqx.tree_at(lambda t: t.layers[-1].weight, m, wrong(m.layers[-1].weight))
        return eqx_loss(m)

    last = mlp.layers[-1].weight.shape
    run("MLP (Equinox)", "equinox", mlp, eqx_loss, eqx_bad,
        f"layers[2].weight{_at(last)}", "full")  # fmt: skip

    # Haiku MLP
    import haiku as hk

    def forward(x: Any, broken: bool = False) -> Any:
        h = jnp.tanh(hk.Linear(32, name="hidden")(x))
        w = hk.get_parameter("w", (32, 2), init=hk.initializers.TruncatedNormal(0.2))
        return h @ (wrong(w) if broken else w)

    net = hk.without_apply_rng(hk.transform(forward))
    hk_params = net.init(kp, X)

    def hk_loss(p: Any, broken: bool = False) -> Any:
        return jnp.mean((net.apply(p, X, broken) - Y) ** 2)

    run("MLP (Haiku)", "haiku", hk_params, hk_loss, lambda p: hk_loss(p, True),
        f"~.w{_at((32, 2))}", "full")  # fmt: skip


# -- Keras -------------------------------------------------------------------------
def _keras_rows() -> None:
    import keras
    from keras import ops

    import gradcheck_core as gc

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)

    @ops.custom_gradient
    def wrong(w: Any) -> Any:
        def grad(*args: Any, upstream: Any = None, variables: Any = None) -> Any:
            if upstream is None:
                (upstream,) = args
            mask = np.ones(tuple(w.shape))
            mask.reshape(-1)[WRONG_ENTRY] = WRONG_FACTOR
            g = upstream * ops.cast(mask, upstream.dtype)
            if variables is not None:  # TensorFlow: the kernel was read inside; its gradient flows through w
                return (g,), [None] * len(variables)
            return g

        # (keras.ops.identity(n) is the n x n identity matrix, not the identity function)
        return ops.copy(w), grad

    # Registered, with its settings in get_config: the check rebuilds the model
    # from its config as a float64 copy (loss(model)).
    @keras.saving.register_keras_serializable(package="real_models")
    class Head(keras.layers.Layer):
        """A dense head; ``broken`` routes its kernel through a wrong backward."""

        def __init__(self, units: int, broken: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units, self.broken = units, broken

        def get_config(self) -> dict:
            return {**super().get_config(), "units": self.units, "broken": self.broken}

        def build(self, shape: Any) -> None:
            self.kernel = self.add_weight(shape=(shape[-1], self.units), name="kernel")

        def call(self, x: Any) -> Any:
            return ops.matmul(x, wrong(ops.convert_to_tensor(self.kernel)) if self.broken else self.kernel)

    base = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg", include_preprocessing=False
    )
    head = Head(10, name="head")
    model = keras.Sequential([base, head])
    # Four images, in inference mode, with every batch normalisation's moving
    # statistics set to those of the four images (as a trained model has them).
    # With the initial statistics (mean 0, variance 1: the identity) the
    # random-weight activations shrink layer after layer to ~1e-10: the loss is
    # log(10) + 6e-11 and the gradients of most tensors are 1e-26 to 1e-10
    # (median 2e-11), below what finite differences of a float64 loss can
    # resolve.  Training mode (batch statistics) keeps every layer at unit
    # scale, but then the beta of each projection's batch normalisation has a
    # gradient of exactly 0 (the next batch normalisation removes any constant
    # shift), which autodiff returns as round-off (1e-16) and finite
    # differences cannot tell from 0.
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[[5, 1, 2, 7]]
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become the batch's
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    cce = keras.losses.CategoricalCrossentropy(from_logits=True)

    def loss(m: Any) -> Any:
        # m: the float64 copy of the model; a loss object made here is float64 too
        ce = keras.losses.CategoricalCrossentropy(from_logits=True)
        return ce(y, m(x, training=False))

    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def fb() -> Any:
            with tf.GradientTape() as tape:
                value = cce(y, model(x, training=False))
            return tape.gradient(value, model.trainable_variables)

        t_fb = _timed(fb)
    else:
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        def f(tv: Any) -> Any:
            out, _ = model.stateless_call(tv, ntv, x, training=False)
            return cce(y, out)

        vg = jax.jit(jax.value_and_grad(f))
        t_fb = _timed(lambda: jax.block_until_ready(vg(tv)))
    opts = {"mode": "fast", "directions": BIG_DIRECTIONS, "progress": False}
    good = gc.check(loss, model, **opts)
    print(f"  correct gradient: {good.verdict}, {good.nfev} evaluations, {good.seconds:.0f} s", flush=True)
    if good.verdict != "pass":
        _why("correct gradient", good)
    head.broken = True
    bad = gc.check(loss, model, **opts)
    if bad.verdict != "fail":
        _why("broken backward", bad)
    expected = f"{head.kernel.path}{_at(tuple(head.kernel.shape))}"
    _emit(
        _row(
            "MobileNetV3Small (Keras)",
            f"keras/{backend}",
            n,
            f"fast, {BIG_DIRECTIONS} dir.",
            t_fb,
            good,
            bad,
            expected,
        )
    )


# -- driver ------------------------------------------------------------------------
def _child(args: list[str], env: dict[str, str] | None = None, python: str | None = None) -> list[dict]:
    cmd = [python or sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800
    )
    rows = [json.loads(line[len(ROW) :]) for line in proc.stdout.splitlines() if line.startswith(ROW)]
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  ({' '.join(args)}: no result, exit {proc.returncode}: {' | '.join(tail)})")
    return rows


def _has_torchvision(python: str) -> bool:
    probe = "import torch, torchvision; torchvision.models.resnet18"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _table(rows: list[dict]) -> str:
    head = ("model", "framework", "params", "mode", "correct gradient", "evaluations", "time",
            "cost (fwd+bwd units)", "broken backward", "entry named (expected)")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        named = r["named"] if r["named"] == r["expected"] else f"{r['named']} ({r['expected']})"
        lines.append(
            f"| {r['model']} | {r['framework']} | {r['params']:,} | {r['mode']} | {r['correct']} | "
            f"{r['evals']} | {r['seconds']} s | {r['cost']} x {r['fwd_bwd_ms']} ms | {r['broken']} | "
            f"`{named}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["torchvision", "hf", "jax", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--torchvision-python", default=None, help="an interpreter that has torchvision")
    args = parser.parse_args()
    if args.only == "torchvision":
        return _torch_rows({"resnet"})
    if args.only == "hf":
        return _torch_rows({"hf"})
    if args.only == "jax":
        return _jax_rows()
    if args.only == "keras":
        return _keras_rows()

    rows: list[dict] = []
    candidates = [args.torchvision_python or sys.executable]
    tv_python = next((p for p in candidates if p and os.path.exists(p) and _has_torchvision(p)), None)
    if tv_python is None:
        print("  (ResNet-18 skipped: no interpreter here imports torchvision; pass --torchvision-python)")
    else:
        rows += _child(["--only", "torchvision"], python=tv_python)
    rows += _child(["--only", "hf"])
    rows += _child(["--only", "jax"])
    for backend in ("tensorflow", "jax"):
        rows += _child(["--only", "keras"], env={"KERAS_BACKEND": backend})
    print(_table(rows))


if __name__ == "__main__":
    main()
