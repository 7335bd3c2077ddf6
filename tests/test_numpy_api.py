"""The public surface with numpy: parameter forms, gradient forms, options, reports."""

from __future__ import annotations

import collections
import json
import multiprocessing
import time

import numpy as np
import pytest

import gradcheck_core as gc
from gradcheck_core.flatten import flatten

RNG = np.random.default_rng(0)
X = RNG.standard_normal((12, 4))
Y = RNG.standard_normal(12)


def mse(w: np.ndarray, b: float) -> float:
    r = X @ w + b - Y
    return 0.5 * float(np.mean(r**2))


def mse_grad(w: np.ndarray, b: float) -> tuple[np.ndarray, float]:
    r = X @ w + b - Y
    return X.T @ r / len(Y), float(np.mean(r))


def test_names_follow_the_structure() -> None:
    a, b, c = np.zeros(2), np.zeros((2, 2)), np.zeros(3)
    flat = flatten(
        {"enc": {"W": a, "b": c}, "layer": [b, c], "top": (a,)},
        is_leaf=lambda v: isinstance(v, np.ndarray),
        to_numpy=np.asarray,
    )
    assert flat.names == ["enc.W", "enc.b", "layer[0]", "layer[1]", "top[0]"]
    top = flatten([a, b], is_leaf=lambda v: isinstance(v, np.ndarray), to_numpy=np.asarray)
    assert top.names == ["[0]", "[1]"]
    Pair = collections.namedtuple("Pair", "w b")
    nt = flatten(Pair(a, c), is_leaf=lambda v: isinstance(v, np.ndarray), to_numpy=np.asarray)
    assert nt.names == ["w", "b"]
    rebuilt = nt.unravel(np.arange(5.0))
    assert isinstance(rebuilt, Pair) and rebuilt.b.tolist() == [2.0, 3.0, 4.0]


def test_single_array_list_tuple_and_dict_params() -> None:
    w, b = RNG.standard_normal(4), np.array(0.2)
    r1 = gc.check(lambda w_: mse(w_, 0.2), w, lambda w_: mse_grad(w_, 0.2)[0])
    r2 = gc.check(lambda p: mse(p[0], p[1]), [w, b], lambda p: list(mse_grad(p[0], p[1])))
    r3 = gc.check(lambda p: mse(*p), (w, b), lambda p: mse_grad(*p))
    r4 = gc.check(
        lambda p: mse(p["w"], p["b"]),
        {"w": w, "b": b},
        lambda p: dict(zip(("w", "b"), mse_grad(p["w"], p["b"]))),
    )
    for r in (r1, r2, r3, r4):
        assert r.passed and r.rel_error < 1e-9
    assert [b.name for b in r1.blocks] == ["param"]
    assert [b.name for b in r2.blocks] == ["[0]", "[1]"]


def test_gradient_forms_dict_with_d_prefix_and_cache_entries_flat_vector_values() -> None:
    params = {"W1": RNG.standard_normal(4), "b1": np.array(0.1)}
    loss = lambda p: mse(p["W1"], p["b1"])  # noqa: E731
    gw, gb = mse_grad(params["W1"], params["b1"])
    forms = [
        lambda p: {
            "dW1": mse_grad(p["W1"], p["b1"])[0],
            "db1": mse_grad(p["W1"], p["b1"])[1],
            "dZ1": np.ones(7),
            "dA2": 3.0,
        },
        {"W1": gw, "b1": gb},
        np.concatenate([gw, [gb]]),
        np.concatenate([gw, [gb]])[:, None],  # a column vector, as tutorials build it
    ]
    for form in forms:
        report = gc.check(loss, params, form)
        assert report.passed, str(report)
    wrong = np.concatenate([gw, [gb * 3]])
    assert gc.check(loss, params, wrong).failed_blocks == ["b1"]


def test_zero_argument_loss_reads_arrays_in_place_and_restores_them() -> None:
    w = RNG.standard_normal(4)
    keep = w.copy()
    report = gc.check(lambda: mse(w, 0.0), [w], lambda: [mse_grad(w, 0.0)[0]])
    assert report.passed
    assert np.array_equal(w, keep)


def test_user_arrays_are_never_modified() -> None:
    params = {"w": RNG.standard_normal(4).astype(np.float32), "b": np.array(0.5)}
    before = {k: v.copy() for k, v in params.items()}
    gc.check(lambda p: mse(p["w"], p["b"]), params, lambda p: dict(zip("wb", mse_grad(p["w"], p["b"]))))
    for k in params:
        assert params[k].dtype == before[k].dtype
        assert params[k].tobytes() == before[k].tobytes()


def test_float32_params_are_checked_in_float64() -> None:
    w = RNG.standard_normal(4).astype(np.float32)
    seen = []

    def loss(w_):
        seen.append(w_.dtype)
        return mse(w_, 0.0)

    report = gc.check(loss, w, lambda w_: mse_grad(w_, 0.0)[0])
    assert set(seen) == {np.dtype(np.float64)}
    assert report.passed and report.rel_error < 1e-9
    assert report.blocks[0].dtype == "float32"


@pytest.mark.parametrize(
    "method,bound", [("central", 1e-8), ("forward", 1e-6), ("richardson", 1e-10), ("complex", 1e-14)]
)
def test_methods(method: str, bound: float) -> None:
    w = RNG.standard_normal(4)

    def loss(w_):  # no float(): keeps complex values for the complex step
        return 0.5 * np.mean((X @ w_ + 0.3 - Y) ** 2)

    report = gc.check(loss, w, lambda w_: mse_grad(w_, 0.3)[0], method=method)
    assert report.passed and report.method == method
    assert report.rel_error < bound


def test_nfev_counts_every_evaluation_and_full_sweep_costs_2n_plus_a_few() -> None:
    calls = []
    w = RNG.standard_normal(30)

    def loss(w_):
        calls.append(1)
        return float(np.sum(np.sin(w_)))

    report = gc.check(loss, w, lambda w_: np.cos(w_), mode="full")
    assert report.nfev == len(calls)
    assert report.nfev <= 2 * 30 + 12


def test_sample_checks_k_coordinates_per_parameter_reproducibly() -> None:
    params = {"a": RNG.standard_normal(50), "b": RNG.standard_normal(7)}
    loss = lambda p: float(np.sum(p["a"] ** 3) + np.sum(np.exp(p["b"])))  # noqa: E731
    grad = lambda p: {"a": 3 * p["a"] ** 2, "b": np.exp(p["b"])}  # noqa: E731
    r1 = gc.check(loss, params, grad, sample=5, seed=1)
    r2 = gc.check(loss, params, grad, sample=5, seed=1)
    assert [b.n_checked for b in r1.blocks] == [5, 5]
    assert np.array_equal(r1.blocks[0].indices, r2.blocks[0].indices)
    assert r1.passed


def test_report_serialises_and_raises() -> None:
    w = RNG.standard_normal(4)
    bad = gc.check(lambda w_: mse(w_, 0.0), w, lambda w_: -mse_grad(w_, 0.0)[0])
    data = json.loads(bad.to_json())
    assert data["verdict"] == "fail" and data["blocks"][0]["name"] == "param"
    assert data["findings"][0]["kind"] == "sign"
    assert json.loads(bad.to_json(arrays=True))["blocks"][0]["analytic"]
    with pytest.raises(gc.GradcheckError) as info:
        bad.raise_if_failed()
    assert isinstance(info.value, AssertionError)
    assert "param" in str(info.value) and "FAIL" in str(info.value)
    with pytest.raises(gc.GradcheckError):
        gc.assert_gradients(lambda w_: mse(w_, 0.0), w, lambda w_: -mse_grad(w_, 0.0)[0])
    good = gc.assert_gradients(lambda w_: mse(w_, 0.0), w, lambda w_: mse_grad(w_, 0.0)[0])
    assert good.passed


def test_rng_state_is_replayed_and_restored() -> None:
    # A loss that draws from numpy's global generator (a dropout mask) is checked
    # as a deterministic function, and the user's stream continues unchanged.
    w = RNG.standard_normal(10)
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)

    def loss(w_):
        mask = np.random.random(10) > 0.3
        return float(np.sum(np.tanh(w_) * mask))

    def grad(w_):
        mask = np.random.random(10) > 0.3
        return (1 - np.tanh(w_) ** 2) * mask

    report = gc.check(loss, w, grad)
    assert report.passed, str(report)
    assert np.random.random() == expected_next


def test_nondeterministic_loss_is_inconclusive_never_fail() -> None:
    w = RNG.standard_normal(6)
    gen = np.random.default_rng(5)  # captured from outside: cannot be replayed

    def loss(w_):
        return float(np.sum(w_**2 * (gen.random(6) > 0.5)))

    report = gc.check(loss, w, lambda w_: 2 * w_ * 10)  # even a wrong gradient
    assert report.verdict == "inconclusive"
    assert report.findings_of("nondeterministic")


SPAWN = multiprocessing.get_context("spawn")


def module_level_loss(p):
    return float(np.sum(np.sin(p["w"]) * np.arange(1, 9)))


def module_level_grad(p):
    return {"w": np.cos(p["w"]) * np.arange(1, 9)}


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_executor_evaluates_the_sweep_in_parallel(kind: str) -> None:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    params = {"w": RNG.standard_normal(8)}
    # "spawn": forking a process that has loaded JAX (other tests do) can deadlock.
    pool = ThreadPoolExecutor(2) if kind == "thread" else ProcessPoolExecutor(2, mp_context=SPAWN)
    with pool:
        report = gc.check(module_level_loss, params, module_level_grad, mode="full", executor=pool)
        wrong = gc.check(
            module_level_loss,
            params,
            lambda p: {"w": 2 * module_level_grad(p)["w"]},
            mode="full",
            executor=pool,
        )
    assert report.passed and report.rel_error < 1e-8
    assert wrong.verdict == "fail"


def slow_loss(p):
    time.sleep(0.008)  # a loss slow enough for the noise probe's points to go to the executor too
    return module_level_loss(p)


@pytest.mark.parametrize("loss", [module_level_loss, slow_loss], ids=["fast", "slow"])
def test_executor_gets_the_probe_of_a_slow_loss_and_the_report_is_the_serial_one(loss) -> None:
    from concurrent.futures import ThreadPoolExecutor

    class Counting(ThreadPoolExecutor):
        rows = 0

        def submit(self, fn, /, *args, **kwargs):
            Counting.rows += len(args[0])
            return super().submit(fn, *args, **kwargs)

    params = {"w": RNG.standard_normal(8)}
    serial = gc.check(loss, params, module_level_grad, mode="full", seed=3)
    with Counting(2) as pool:
        spread = gc.check(loss, params, module_level_grad, mode="full", seed=3, executor=pool)
    sweep_rows = 2 * 8
    assert Counting.rows == (sweep_rows + 8 if loss is slow_loss else sweep_rows)
    assert spread.nfev == serial.nfev
    left, right = serial.to_dict(), spread.to_dict()
    left.pop("seconds"), right.pop("seconds")
    assert left == right  # the same points, the same values: the same report


def test_process_pool_with_an_unpicklable_loss_says_why() -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool, pytest.raises(gc.GradcheckError, match="pickle"):
        gc.check(
            lambda p: module_level_loss(p),
            {"w": RNG.standard_normal(8)},
            module_level_grad,
            mode="full",
            executor=pool,
        )


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    params = {"w": RNG.standard_normal(8)}
    gc.check(module_level_loss, params, module_level_grad, mode="full")
    assert "gradcheck [" not in capsys.readouterr().err
    gc.check(module_level_loss, params, module_level_grad, mode="full", progress=True)
    err = capsys.readouterr().err
    assert "gradcheck [" in err and "8/8" in err


def test_dask_client_executor() -> None:
    distributed = pytest.importorskip("distributed")
    params = {"w": RNG.standard_normal(8)}
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        executor = client.get_executor()
        report = gc.check(module_level_loss, params, module_level_grad, mode="full", executor=executor)
        wrong = gc.check(
            module_level_loss,
            params,
            lambda p: {"w": -module_level_grad(p)["w"]},
            mode="full",
            executor=executor,
        )
    assert report.passed and report.rel_error < 1e-8
    assert wrong.verdict == "fail" and wrong.findings_of("sign")
