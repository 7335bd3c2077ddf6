"""Fault injection: a loss that fails at its k-th call, and everything a check must leave as it was.

Used by ``tests/test_faults.py`` (a few hundred hypothesis examples) and by
``benchmarks/faults.py`` (thousands of runs, a table of the outcomes).

A *setup* builds a loss and its parameters in one framework; the loss calls
:class:`Fault` first, which counts the calls and, at the chosen one, raises a
ValueError or a KeyboardInterrupt, or makes the loss return NaN or inf.
:func:`run_case` runs one check and says whether every parameter and global
setting came back bit for bit and whether the caller saw the right outcome.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import gradcheck_core as gc
from gradcheck_core import interrupts

FAULTS = ("raise", "nan", "inf", "interrupt")
MODES = ("full", "fast")

_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """One shared thread pool for the runs with an executor."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2)
    return _POOL


# -- the fault ---------------------------------------------------------------------


_PHASES = (
    # (function name on the stack, phase); the innermost match names the phase
    ("_row_values", "batches"),
    ("_native_batch", "batches"),
    ("_analytic", "gradient"),
    ("estimate_noise", "noise probe"),
    ("_escalate", "escalation"),
    ("refine", "refinement"),
    ("_refine_once", "refinement"),
    ("run_fast", "fast mode"),
    ("sweep", "sweep"),
)


def _phase() -> str:
    frame: Any = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_name
        if "gradcheck_core" in frame.f_code.co_filename or "adapters" in frame.f_code.co_filename:
            for func, phase in _PHASES:
                if name == func:
                    return phase
            if name in ("run_check", "measured"):
                return "first value"
        frame = frame.f_back
    return "first value" if threading.current_thread() is threading.main_thread() else "batches"


class Fault:
    """Counts the loss's calls; at call ``at`` (1-based) does ``kind``."""

    def __init__(self, kind: str | None = None, at: int = 0) -> None:
        self.kind = kind
        self.at = at
        self.calls = 0
        self.lock = threading.Lock()
        self.fired = False
        self.phase: str | None = None
        self.error: BaseException | None = None
        self.phases: list[str] = []  # the phase of every call (a counting run)

    def __call__(self) -> float:
        with self.lock:
            self.calls += 1
            now = self.calls
        if self.kind is None:
            self.phases.append(_phase())
            return 0.0
        if self.kind == "off" or now != self.at:
            return 0.0
        self.fired = True
        self.phase = _phase()
        if self.kind == "raise":
            self.error = ValueError(f"injected fault at call {now}")
            raise self.error
        if self.kind == "interrupt":
            raise KeyboardInterrupt
        return float("nan") if self.kind == "nan" else float("inf")


# -- setups --------------------------------------------------------------------------


@dataclass
class Setup:
    """One framework case: ``make(fault)`` -> (loss, params, grad, options)."""

    name: str
    framework: str
    make: Callable[[Fault], tuple[Any, Any, Any]]
    state: Callable[[Any], Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _np_state(params: Any) -> Any:
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in params.items()}


def numpy_setups() -> list[Setup]:
    rng = np.random.default_rng(1)
    W0, b0 = rng.standard_normal((3, 2)), rng.standard_normal(2)
    x = rng.standard_normal((4, 3))

    def make(fault: Fault) -> tuple[Any, Any, Any]:
        def loss(p: Any) -> float:
            return float(np.sum(np.tanh(x @ p["W"] + p["b"]) ** 2)) + fault()

        def grad(p: Any) -> Any:
            z = np.tanh(x @ p["W"] + p["b"])
            d = 2 * z * (1 - z**2)
            return {"W": x.T @ d, "b": d.sum(0)}

        return loss, {"W": W0.copy(), "b": b0.copy()}, grad

    def make_wrong(fault: Fault) -> tuple[Any, Any, Any]:
        loss, params, grad = make(fault)

        def wrong(p: Any) -> Any:  # one entry off: the sweep refines the suspects
            g = grad(p)
            g["W"][0, 0] += 1e-3
            return g

        return loss, params, wrong

    return [
        Setup("numpy", "numpy", make, _np_state),
        Setup("numpy wrong gradient", "numpy", make_wrong, _np_state),
    ]


def _torch_tensor_state(t: Any) -> Any:
    g = t.grad
    return (
        str(t.dtype),
        str(t.device),
        tuple(t.shape),
        t.detach().cpu().numpy().tobytes(),
        t.requires_grad,
        None if g is None else g.detach().cpu().numpy().tobytes(),
        t.data_ptr(),
    )


def torch_setups() -> list[Setup]:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen)

    def functional(fault: Fault) -> tuple[Any, Any, Any]:
        params = {"W": torch.randn(3, 2, generator=gen), "b": torch.randn(2, generator=gen)}

        def loss(p: Any) -> Any:
            return torch.tanh(x @ p["W"] + p["b"]).pow(2).sum() + fault()

        return loss, params, None

    def module(fault: Fault) -> tuple[Any, Any, Any]:
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Dropout(0.25), torch.nn.Linear(4, 1)
        )
        m.train()

        def loss() -> Any:
            return m(x).pow(2).mean() + fault()

        return loss, m, None

    def in_place(fault: Fault) -> tuple[Any, Any, Any]:
        W = torch.randn(3, 2, generator=gen, requires_grad=True)
        b = torch.randn(2, generator=gen, requires_grad=True)
        W.grad = torch.ones(3, 2)

        def loss() -> Any:
            return (torch.sin(x @ W) + b).pow(2).sum() + fault()

        return loss, [W, b], None

    def module_state(m: Any) -> Any:
        if isinstance(m, torch.nn.Module):
            return (
                [(n, _torch_tensor_state(p)) for n, p in m.named_parameters()],
                [mod.training for mod in m.modules()],
            )
        if isinstance(m, dict):
            return {k: _torch_tensor_state(v) for k, v in m.items()}
        return [_torch_tensor_state(v) for v in m]

    return [
        Setup("torch loss(p)", "torch", functional, module_state),
        Setup("torch module loss()", "torch", module, module_state),
        Setup("torch loss() tensors", "torch", in_place, module_state),
    ]


def jax_setups() -> list[Setup]:
    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)

    def jitted(fault: Fault) -> tuple[Any, Any, Any]:
        params = {"W": jnp.ones((3, 2), jnp.float32) * 0.3, "b": jnp.arange(2, dtype=jnp.float32)}

        def loss(p: Any) -> Any:
            return jnp.sum(jnp.tanh(x @ p["W"] + p["b"]) ** 2) + fault()

        return loss, params, None

    def eager(fault: Fault) -> tuple[Any, Any, Any]:
        params = {"W": jnp.ones((3, 2), jnp.float32) * 0.3, "b": jnp.arange(2, dtype=jnp.float32)}

        def pure(p: Any) -> Any:
            return jnp.sum(jnp.sin(x @ p["W"] + p["b"]) ** 2)

        def loss(p: Any) -> Any:
            # float() on the value: JAX cannot trace it, so every call runs here
            return float(pure(p)) + fault()

        return loss, params, jax.grad(pure)

    def state(params: Any) -> Any:
        return {k: (str(v.dtype), np.asarray(v).tobytes()) for k, v in params.items()}

    return [Setup("jax jit", "jax", jitted, state), Setup("jax eager", "jax", eager, state)]


def tensorflow_setup() -> Setup:
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(3).standard_normal((5, 3)), dtype=tf.float32)

    def make(fault: Fault) -> tuple[Any, Any, Any]:
        W = tf.Variable(np.full((3, 2), 0.2, np.float32), name="W")
        b = tf.Variable(np.array([0.1, -0.3], np.float32), name="b")

        def loss() -> Any:
            return tf.reduce_sum(tf.tanh(x @ W + b) ** 2) + fault()

        return loss, [W, b], None

    def state(vs: Any) -> Any:
        return [(v.dtype.name, v.numpy().tobytes()) for v in vs]

    return Setup("tensorflow variables", "tensorflow", make, state)


def keras_setup() -> Setup:
    import keras

    x = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")
    on_numpy = keras.backend.backend() == "numpy"

    def make(fault: Fault) -> tuple[Any, Any, Any]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])

        def loss(m: Any) -> Any:
            return keras.ops.sum(m(x)) + fault()

        grad = None
        if on_numpy:  # no autodiff on that backend: the gradient of a linear model by hand
            k1, b1, k2, _ = (np.asarray(w) for w in model.get_weights())
            n = x.shape[0]
            grad = [
                np.outer(x.sum(0), k2[:, 0]),
                n * k2[:, 0],
                (x @ k1 + b1).sum(0)[:, None],
                np.full(1, float(n)),
            ]
        return loss, model, grad

    def state(model: Any) -> Any:
        return [
            (v.path, str(v.dtype), np.asarray(keras.ops.convert_to_numpy(v.value)).tobytes())
            for v in model.weights
        ]

    return Setup(f"keras ({keras.backend.backend()})", "keras", make, state)


def available(framework: str) -> bool:
    module = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "keras": "keras"}
    return importlib.util.find_spec(module[framework]) is not None


def setups(frameworks: tuple[str, ...] = ("numpy", "torch", "jax", "tensorflow")) -> list[Setup]:
    out: list[Setup] = []
    for f in frameworks:
        if not available(f):
            continue
        if f == "numpy":
            out.extend(numpy_setups())
        elif f == "torch":
            out.extend(torch_setups())
        elif f == "jax":
            out.extend(jax_setups())
        elif f == "tensorflow":
            out.append(tensorflow_setup())
        elif f == "keras":
            out.append(keras_setup())
    return out


# -- global settings -----------------------------------------------------------------


def global_settings(framework: str) -> dict[str, Any]:
    """Every setting the adapters touch, as comparable values."""
    state: dict[str, Any] = {
        "numpy.random": _np_rng(np.random.get_state()),
        "random": random.getstate(),
        "sigint handler": signal.getsignal(signal.SIGINT),
    }
    if "torch" in sys.modules:
        import torch

        state["torch default dtype"] = torch.get_default_dtype()
        state["torch mode stack"] = torch._C._len_torch_function_stack()
        state["torch grad enabled"] = torch.is_grad_enabled()
        state["torch rng"] = torch.get_rng_state().numpy().tobytes()
    if "jax" in sys.modules:
        import jax

        state["jax x64"] = bool(jax.config.read("jax_enable_x64"))
        state["jax x64 (this thread)"] = bool(jax.numpy.zeros(1, dtype=float).dtype == np.float64)
    if "keras" in sys.modules:
        import keras

        state["keras floatx"] = keras.config.floatx()
        state["keras dtype policy"] = keras.config.dtype_policy().name
    if framework in ("tensorflow", "keras") and "tensorflow" in sys.modules:
        import tensorflow as tf

        state["tf global generator"] = tf.random.get_global_generator().state.numpy().tobytes()
    return state


def _np_rng(s: Any) -> Any:
    return (s[0], s[1].tobytes(), *s[2:])


# -- one run --------------------------------------------------------------------------


@dataclass
class Outcome:
    restored: bool
    right: bool
    fired: bool
    phase: str | None
    what: str  # what went wrong, for a failing assertion


def run_case(
    setup: Setup, mode: str, fault: Fault, executor: bool, line: LineInterrupt | None = None
) -> Outcome:
    """One check with ``fault`` (or a Ctrl-C at a line: ``line``) in ``setup``; compare everything."""
    loss, params, grad = setup.make(fault)
    before_params = setup.state(params)
    before = global_settings(setup.framework)
    seen: BaseException | None = None
    report = None
    options: dict[str, Any] = {"mode": mode, "progress": False}
    if executor:
        options["executor"] = pool()
    if line is not None:
        sys.settrace(line.tracer())
    try:
        report = gc.check(loss, params, grad, **options)
    except BaseException as exc:
        seen = exc
    finally:
        sys.settrace(None)
    after_params = setup.state(params)
    after = global_settings(setup.framework)
    problems = []
    if after_params != before_params:
        problems.append("parameters changed")
    for key in before:
        if before[key] != after.get(key):
            problems.append(f"{key}: {before[key]!r} -> {after.get(key)!r}"[:200])
    restored = not problems
    if line is not None:
        right, what = _right_line(line, seen, report)
        fired, phase = line.fired, line.phase
    else:
        right, what = _right(fault, seen, report)
        fired, phase = fault.fired, fault.phase
    if not right:
        problems.append(what)
    return Outcome(restored, right, fired, phase, "; ".join(problems))


def _right_line(line: LineInterrupt, seen: BaseException | None, report: Any) -> tuple[bool, str]:
    name = "no exception" if seen is None else f"{type(seen).__name__}: {seen}"[:300]
    if line.fired:
        return isinstance(seen, KeyboardInterrupt), f"expected KeyboardInterrupt, got {name}"
    return seen is None and report is not None, f"no interrupt fired, but: {name}"


def _right(fault: Fault, seen: BaseException | None, report: Any) -> tuple[bool, str]:
    name = "no exception" if seen is None else f"{type(seen).__name__}: {seen}"[:300]
    if not fault.fired:
        return seen is None and report is not None, f"no fault fired, but: {name}"
    if fault.kind == "raise":
        ok = type(seen) is ValueError and str(seen) == str(fault.error)
        return ok, f"expected the loss's ValueError, got {name}"
    if fault.kind == "interrupt":
        return isinstance(seen, KeyboardInterrupt), f"expected KeyboardInterrupt, got {name}"
    # NaN or inf: a clear error of the library, or a verdict
    ok = (seen is None and report is not None) or isinstance(seen, gc.GradcheckError)
    return ok, f"expected a GradcheckError or a report, got {name}"


def count_calls(setup: Setup, mode: str, executor: bool) -> list[str]:
    """The phase of every call of the loss in a run without faults."""
    fault = Fault()
    outcome = run_case(setup, mode, fault, executor)
    if not (outcome.restored and outcome.right):
        raise AssertionError(f"{setup.name}, {mode}: a run without faults: {outcome.what}")
    return fault.phases


def count_lines(setup: Setup, mode: str, only: tuple[str, ...] = ()) -> int:
    """Line events in the library's own files (or the adapter files ``only``) in a run without faults."""
    line = LineInterrupt(0, only)
    outcome = run_case(setup, mode, Fault("off"), False, line)
    if not (outcome.restored and outcome.right):
        raise AssertionError(f"{setup.name}, {mode}: a traced run without faults: {outcome.what}")
    return line.lines


# -- Ctrl-C at a line of the library's own code ------------------------------------------

_OWN = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (gc.__file__, importlib.util.find_spec("gradcheck_core.adapters").origin)  # type: ignore[union-attr]
)


class LineInterrupt:
    """A trace function that delivers Ctrl-C at the k-th line event in the library's files.

    The interrupt is delivered as a SIGINT would be: through the handler the
    check installed (deferred in the library's code, raised in the user's),
    or raised on the spot where no check handler is installed.
    """

    def __init__(self, at: int, only: tuple[str, ...] = (), paths: tuple[str, ...] = ()) -> None:
        """``only``: adapter files (relative to the adapters' folder); ``paths``: exact files."""
        self.at = at
        self.only = paths or (tuple(os.path.join(_OWN[1], o) for o in only) if only else _OWN)
        self.lines = 0
        self.fired = False
        self.phase: str | None = None

    def tracer(self) -> Callable[..., Any]:
        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and not self.fired:
                self.lines += 1
                if self.lines == self.at:
                    self.fired = True
                    self.phase = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"
                    if signal.getsignal(signal.SIGINT) is interrupts._handler:
                        interrupts._handler(signal.SIGINT, frame)
                    else:
                        raise KeyboardInterrupt
            return local

        def global_(frame: Any, event: str, arg: Any) -> Any:
            if self.fired:
                return None
            if frame.f_code.co_filename.startswith(self.only):
                return local
            return None

        return global_
