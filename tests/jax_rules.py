"""JAX derivative rules shared by the second-order and compat tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def sin_right_to_first_order_only() -> Callable[[Any], Any]:
    """``sin`` as a ``jax.custom_jvp`` whose rule is right, but not differentiable to second order.

    The rule's ``cos(x)`` is behind ``stop_gradient``, so the JVP's own
    derivative with respect to ``x`` is 0 where it should be ``-sin(x) t``.
    """
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def f(x):  # type: ignore[no-untyped-def]
        return jnp.sin(x)

    @f.defjvp
    def f_jvp(primals, tangents):  # type: ignore[no-untyped-def]
        (x,), (t,) = primals, tangents
        return jnp.sin(x), jax.lax.stop_gradient(jnp.cos(x)) * t

    return f  # type: ignore[no-any-return]
