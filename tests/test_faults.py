"""Fault injection: whatever the loss does at whichever evaluation, nothing leaks.

Hypothesis picks the framework setup, the fault (the loss raises a ValueError,
returns NaN or inf, or is interrupted), the call of the loss at which it
happens (every phase: first value, gradient, noise probe, sweep, batches,
refinement, fast mode), the mode and whether a thread pool evaluates the
sweep.  After each run, the parameters (values bit for bit, dtype, device,
requires_grad, .grad, train/eval) and every global setting the adapters
touch must be as before, and the caller must have seen the loss's own
exception, KeyboardInterrupt, or (NaN/inf) a GradcheckError or a report.
Ctrl-C is also delivered at random lines of the library's own code, the
way a SIGINT arrives there.
"""

from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import fault_harness as fh

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@functools.cache
def _setups(framework: str) -> dict[str, fh.Setup]:
    return {s.name: s for s in fh.setups((framework,))}


@functools.cache
def _calls(framework: str, name: str, mode: str, executor: bool) -> int:
    return len(fh.count_calls(_setups(framework)[name], mode, executor))


@functools.cache
def _lines(framework: str, name: str, mode: str, only: tuple[str, ...]) -> int:
    return fh.count_lines(_setups(framework)[name], mode, only)


def _fault_run(framework: str, data: Any) -> None:
    names = sorted(_setups(framework))
    name = data.draw(st.sampled_from(names), label="setup")
    mode = data.draw(st.sampled_from(fh.MODES), label="mode")
    executor = data.draw(st.booleans(), label="executor")
    kind = data.draw(st.sampled_from(fh.FAULTS), label="fault")
    n = _calls(framework, name, mode, executor)
    at = data.draw(st.integers(1, n + 1), label="call")  # n + 1: no fault fires
    fault = fh.Fault(kind, at)
    outcome = fh.run_case(_setups(framework)[name], mode, fault, executor)
    assert outcome.restored and outcome.right, f"{name}, {mode}, call {at} ({outcome.phase}): {outcome.what}"
    assert outcome.fired == (at <= n)


def _line_run(framework: str, data: Any, only: tuple[str, ...]) -> None:
    names = sorted(_setups(framework))
    name = data.draw(st.sampled_from(names), label="setup")
    mode = data.draw(st.sampled_from(fh.MODES), label="mode")
    n = _lines(framework, name, mode, only)
    at = data.draw(st.integers(1, n), label="line event")
    line = fh.LineInterrupt(at, only)
    outcome = fh.run_case(_setups(framework)[name], mode, fh.Fault("off"), False, line)
    assert outcome.fired
    assert outcome.restored and outcome.right, f"{name}, {mode}, line {at} ({outcome.phase}): {outcome.what}"


@SETTINGS
@given(st.data())
def test_numpy_faults(data: Any) -> None:
    _fault_run("numpy", data)


@pytest.mark.torch
@SETTINGS
@given(st.data())
def test_torch_faults(data: Any) -> None:
    _fault_run("torch", data)


@pytest.mark.jax
@SETTINGS
@given(st.data())
def test_jax_faults(data: Any) -> None:
    _fault_run("jax", data)


@pytest.mark.tensorflow
@settings(SETTINGS, max_examples=25)
@given(st.data())
def test_tensorflow_faults(data: Any) -> None:
    _fault_run("tensorflow", data)


@pytest.mark.keras
@settings(SETTINGS, max_examples=25)
@given(st.data())
def test_keras_faults(data: Any) -> None:
    _fault_run("keras", data)


@pytest.mark.torch
@settings(SETTINGS, max_examples=30)
@given(st.data())
def test_torch_ctrl_c_at_any_line(data: Any) -> None:
    _line_run("torch", data, ())


@pytest.mark.torch
@settings(SETTINGS, max_examples=30)
@given(st.data())
def test_torch_ctrl_c_in_the_float64_scope_and_restore(data: Any) -> None:
    _line_run("torch", data, ("torch" + "/",))


@pytest.mark.jax
@settings(SETTINGS, max_examples=30)
@given(st.data())
def test_jax_ctrl_c_at_any_line(data: Any) -> None:
    _line_run("jax", data, ())


@pytest.mark.jax
@settings(SETTINGS, max_examples=20)
@given(st.data())
def test_jax_ctrl_c_in_the_adapter(data: Any) -> None:
    _line_run("jax", data, ("jax" + "/",))


# -- threads and executors ------------------------------------------------------------


@pytest.mark.torch
def test_torch_checks_in_two_threads_leave_the_default_dtype_alone() -> None:
    import torch

    import gradcheck_core as gc

    before = torch.get_default_dtype()
    seen: list[Any] = []
    stop = threading.Event()

    def watch() -> None:  # another thread creates tensors while checks run
        while not stop.is_set():
            seen.append(torch.zeros(1).dtype)

    def run() -> None:
        W = torch.randn(4, 3)
        for _ in range(3):
            gc.check(lambda p: (p @ p.T).tanh().sum() + torch.ones(1).sum(), W, mode="full")

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=run) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()
    assert torch.get_default_dtype() == before
    assert set(seen) == {before}


@pytest.mark.torch
def test_torch_factories_inside_the_loss_are_float64() -> None:
    import torch

    import gradcheck_core as gc

    W = torch.randn(3, 3)
    made: list[torch.dtype] = []

    def loss(p: Any) -> Any:
        c = torch.tensor(0.1)  # a float32 constant without the float64 forcing
        made.append(c.dtype)
        return ((p * c).sin() + torch.ones(3).sum() + torch.linspace(0, 1, 3).sum()).sum()

    report = gc.check(loss, W, mode="full")
    assert report.passed
    assert set(made) == {torch.float64}
    assert torch.tensor(0.1).dtype == torch.float32


def test_a_thread_pool_passes_the_loss_own_exception_and_drains_its_workers() -> None:
    import gradcheck_core as gc

    started = threading.Event()
    finished: list[int] = []
    error = ValueError("bad row")

    def loss(p: Any) -> float:
        if not np.array_equal(p["x"], x0) and threading.current_thread() is not threading.main_thread():
            if not started.is_set():
                started.set()
                raise error
            np.random.random()  # a worker still running draws from numpy's generator
            finished.append(1)
        return float(np.sum(p["x"] ** 2))

    x0 = np.linspace(0.1, 1, 40)
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool, pytest.raises(ValueError, match="bad row") as info:
        gc.check(loss, {"x": x0}, lambda p: {"x": 2 * p["x"]}, mode="full", executor=pool)
    assert info.value is error
    assert np.array_equal(np.random.get_state()[1], state)


def test_executor_threads_is_a_thread_pool_of_the_check() -> None:
    import gradcheck_core as gc

    names: set[str] = set()

    def loss(p: Any) -> float:
        names.add(threading.current_thread().name)
        return float(np.sum(np.sin(p["x"])))

    x = np.linspace(0, 1, 30)
    report = gc.check(loss, {"x": x}, lambda p: {"x": np.cos(p["x"])}, mode="full", executor="threads")
    assert report.passed
    assert any(n.startswith("gradcheck") for n in names)
    assert not [t for t in threading.enumerate() if t.name.startswith("gradcheck")]


def test_a_process_pool_with_a_lambda_says_why() -> None:
    from concurrent.futures import ProcessPoolExecutor

    import gradcheck_core as gc

    x = np.linspace(0, 1, 6)
    with ProcessPoolExecutor(1) as pool, pytest.raises(gc.GradcheckError, match=r"pickl.*threads"):
        gc.check(lambda p: float(np.sum(p["x"] ** 2)), {"x": x}, {"x": 2 * x}, mode="full", executor=pool)


# -- Keras: the float64 copy leaves the generators alone -------------------------------


@pytest.mark.keras
def test_keras_model_check_leaves_python_and_numpy_random_alone() -> None:
    import random

    import keras

    import gradcheck_core as gc

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dropout(0.3)])
    x = np.ones((4, 3), "float32")
    random.seed(3)
    np.random.seed(3)
    py, nps = random.getstate(), np.random.get_state()[1].copy()
    grad = None
    if keras.backend.backend() == "numpy":
        grad = [np.outer(x.sum(0), np.ones(2)), np.full(2, 4.0)]
    gc.check(lambda m: keras.ops.sum(m(x)), model, grad)
    assert random.getstate() == py
    assert np.array_equal(np.random.get_state()[1], nps)


# -- JAX callbacks --------------------------------------------------------------------


@pytest.mark.jax
def test_jax_callback_errors_are_not_called_untraceable() -> None:
    import jax
    import jax.numpy as jnp

    import gradcheck_core as gc

    calls = [0]

    def host(v: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise KeyboardInterrupt
        return np.asarray(v, dtype=v.dtype)

    def loss(p: Any) -> Any:
        y = jax.pure_callback(host, jax.ShapeDtypeStruct(p.shape, p.dtype), p)
        return jnp.sum(y**2)

    with pytest.raises(KeyboardInterrupt):
        gc.check(loss, jnp.ones(3), lambda p: 2 * p)


@pytest.mark.torch
@pytest.mark.parametrize("at", [1, 2, 5, 12, 18])
def test_a_real_sigint_in_a_torch_loss_is_a_keyboard_interrupt_and_leaves_nothing(at: int) -> None:
    import signal

    import torch

    import gradcheck_core as gc

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(6, 3)
    before = [p.detach().clone() for p in m.parameters()]
    calls = [0]

    def loss() -> Any:
        calls[0] += 1
        if calls[0] == at:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, as the terminal sends it
        return m(x).pow(2).sum()

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        gc.check(loss, m, mode="full")
    kept = info.value.__traceback__  # as IPython keeps sys.last_traceback
    assert kept is not None
    assert torch._C._len_torch_function_stack() == 0
    assert torch.get_default_dtype() == torch.float32
    assert (x @ x.T).dtype == torch.float32
    assert signal.getsignal(signal.SIGINT) is handler
    assert all(torch.equal(a, b) and b.dtype == torch.float32 for a, b in zip(before, m.parameters()))


def test_ctrl_c_while_the_deferring_handler_is_installed_leaves_later_checks_protected() -> None:
    """Ctrl-C at each line of the code that installs and removes the check's SIGINT handler.

    Where the check's handler is not in place yet (or any more), Python
    raises the interrupt on the spot; where it is, the handler defers it.
    Afterwards the user's handler must be back, and the next check must
    install its handler again: a check that believed itself nested inside a
    vanished one would leave every later check without protection.
    """
    import signal

    import gradcheck_core as gc
    from gradcheck_core import interrupts

    handler = signal.getsignal(signal.SIGINT)
    paths = (interrupts.__file__,)
    w = np.array([0.5, -1.0, 2.0])

    def plain_loss(p: np.ndarray) -> float:
        return float(np.sum(p**2))

    counting = fh.LineInterrupt(0, paths=paths)
    sys.settrace(counting.tracer())
    try:
        gc.check(plain_loss, w.copy(), lambda p: 2 * p, mode="full", progress=False)
    finally:
        sys.settrace(None)
    assert counting.lines > 5
    for at in range(1, counting.lines + 1):
        line = fh.LineInterrupt(at, paths=paths)
        sys.settrace(line.tracer())
        try:
            gc.check(plain_loss, w.copy(), lambda p: 2 * p, mode="full", progress=False)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        assert line.fired
        assert signal.getsignal(signal.SIGINT) is handler, f"line event {at}"
        during: list[Any] = []

        def watched_loss(p: np.ndarray, during: list[Any] = during) -> float:
            during.append(signal.getsignal(signal.SIGINT))
            return float(np.sum(p**2))

        report = gc.check(watched_loss, w.copy(), lambda p: 2 * p, mode="full", progress=False)
        assert report.passed
        assert during and all(h is interrupts._handler for h in during), f"line event {at}"
        assert signal.getsignal(signal.SIGINT) is handler
