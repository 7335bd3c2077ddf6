"""Shared test helpers: skip framework tests where the framework is missing."""

from __future__ import annotations

import importlib.util

import pytest

FRAMEWORK_MARKS = ("torch", "tensorflow", "jax", "keras")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in FRAMEWORK_MARKS:
            if item.get_closest_marker(mark) and importlib.util.find_spec(mark) is None:
                item.add_marker(pytest.mark.skip(reason=f"{mark} is not installed"))
