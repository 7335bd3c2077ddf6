"""check()'s keyword-only parameters are exactly the options of Options, with the same defaults."""

from __future__ import annotations

import importlib
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradcheck_core as gc
from gradcheck_core.options import CHECK_OPTIONS, Options, generator


def _keyword_only(fn: Any) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def test_check_signature_matches_options() -> None:
    ours = _keyword_only(gc.check)
    theirs = _keyword_only(Options)
    assert tuple(ours) == CHECK_OPTIONS
    assert set(theirs) - set(ours) == {"max_refine"}  # internal, not an option of check
    for name in CHECK_OPTIONS:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].annotation == theirs[name].annotation, name


def test_every_option_of_check_reaches_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Options] = []
    check_module = importlib.import_module("gradcheck_core.check")  # the attribute gc.check is the function
    monkeypatch.setattr(check_module, "run_check", lambda loss, params, grad, opts: seen.append(opts))
    with ThreadPoolExecutor(1) as pool:
        values = {
            "mode": "full",
            "method": "richardson",
            "step": 1e-4,
            "rtol": 1e-3,
            "atol": 0.5,
            "sample": 2,
            "seed": 7,
            "float64": False,
            "progress": True,
            "executor": pool,
            "directions": 5,
            "order": 2,
            "hessian": None,
            "hvp": lambda p, w: w,
        }
        assert set(values) == set(CHECK_OPTIONS)
        gc.check(lambda p: 0.0, np.ones(3), np.zeros(3), **values)
    (opts,) = seen
    for name, value in values.items():
        assert getattr(opts, name) is value or getattr(opts, name) == value, name


def test_cli_knows_the_options_of_check() -> None:
    from gradcheck_core.cli import _check_options

    assert _check_options() == list(CHECK_OPTIONS)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**64), st.integers(1, 40))
def test_a_seeded_generator_draws_what_default_rng_draws(seed: int, size: int) -> None:
    """Each generator of a seed starts the stream ``default_rng(seed)`` starts, however many were made before."""
    want = np.random.default_rng(seed).standard_normal(size)
    for _ in range(3):
        assert np.array_equal(generator(seed).standard_normal(size), want)
    assert np.array_equal(
        generator(seed).integers(0, 2**31, size), np.random.default_rng(seed).integers(0, 2**31, size)
    )


def test_generators_of_one_seed_in_threads_draw_the_same_streams() -> None:
    want = np.random.default_rng(3).standard_normal(1000)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: generator(3).standard_normal(1000), range(16)))
    assert all(np.array_equal(g, want) for g in got)
    assert not np.array_equal(generator(None).standard_normal(8), generator(None).standard_normal(8))
