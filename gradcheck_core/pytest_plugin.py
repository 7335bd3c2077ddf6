"""pytest plugin: a ``gradcheck`` fixture and readable failures."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def gradcheck() -> Any:
    """``gradcheck(loss, params, grad=None, **options)`` asserts that the gradient is right."""
    from gradcheck_core import assert_gradients

    return assert_gradients
