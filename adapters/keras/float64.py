"""Keras in float64: the global settings for a check, and float64 copies of models.

Keras computes in ``keras.backend.floatx()``, float32 by default, and a loss,
layer or model fixes its dtype when it is created.  So:

* for the whole check, floatx and the global dtype policy are float64, JAX's
  ``jax_enable_x64`` flag is on (jax backend), and Keras's type promotion does
  not demote float64 to float32 (jax, torch and numpy backends); all four are
  put back afterwards, also after an exception or Ctrl-C
  (:func:`float64_settings`);
* a model or layer checked with ``loss(model)`` is evaluated on a float64 copy
  (built from its config, weights copied), so the user's model is never
  touched (:func:`float64_clone`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from .values import _FULL, _NARROW, _assign, backend

_FLOAT_POLICIES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


# -- global settings -----------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The user's Keras settings, as they were before a check changed them."""

    backend: str
    floatx: str
    policy: str
    x64: bool | None  # JAX's jax_enable_x64 flag; None on other backends
    float64: bool  # whether the check runs with float64 settings

    def describe(self) -> str:
        """``backend jax, floatx float32, JAX x64 off``."""
        text = f"backend {self.backend}, floatx {self.floatx}"
        if self.policy != self.floatx:
            text += f", dtype policy {self.policy}"
        if self.x64 is not None:
            text += f", JAX x64 {'on' if self.x64 else 'off'}"
        return text


def _promotion_table() -> dict[str, str] | None:
    """Keras's table that turns 64-bit result dtypes into 32-bit ones off TensorFlow."""
    try:
        from keras.src.backend.common import dtypes
    except ImportError:  # pragma: no cover - internal layout changed
        return None
    table = getattr(dtypes, "BIT64_TO_BIT32_DTYPE", None)
    return table if isinstance(table, dict) else None


def _raw_policy() -> Any:
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("dtype_policy", None)


def _set_raw_policy(policy: Any) -> None:
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("dtype_policy", policy)


def current_settings(float64: bool = False) -> Settings:
    """Read the Keras settings without changing any of them.

    Parameters
    ----------
    float64 : bool
        Recorded as :attr:`Settings.float64`: whether the check runs with
        float64 settings.

    Returns
    -------
    Settings
        The backend, floatx, global dtype policy and (jax) x64 flag now.
    """
    b = backend()
    policy = _raw_policy()
    x64 = None
    if b == "jax":
        import jax

        x64 = bool(jax.config.jax_enable_x64)
    return Settings(
        backend=b,
        floatx=keras.backend.floatx(),
        policy=getattr(policy, "name", None) or keras.backend.floatx(),
        x64=x64,
        float64=float64,
    )


@contextlib.contextmanager
def float64_settings(enabled: bool = True) -> Iterator[Settings]:
    """Run a block with Keras in float64; put every setting back afterwards.

    Sets floatx and the global dtype policy to float64, turns on JAX's x64
    flag on the jax backend, and stops Keras's type promotion from turning
    float64 results into float32 on the jax, torch and numpy backends (it
    does so in ``tanh``, ``sin``, ``cos``, ... to mimic JAX's default).  The
    previous values are restored on exit, whatever happened inside.

    Yields
    ------
    Settings
        The user's settings from before the block.
    """
    settings = current_settings(enabled)
    floatx = keras.backend.floatx()
    policy = _raw_policy()
    table = _promotion_table() if settings.backend != "tensorflow" else None
    table_entry = table.get("float64") if table is not None else None
    try:
        if enabled:
            keras.backend.set_floatx("float64")
            keras.config.set_dtype_policy("float64")
            if settings.backend == "jax":
                import jax

                jax.config.update("jax_enable_x64", True)
            if table is not None:
                table["float64"] = "float64"
        yield settings
    finally:
        try:
            if table is not None:
                if table_entry is None:
                    table.pop("float64", None)
                else:
                    table["float64"] = table_entry
        finally:
            try:
                if settings.x64 is not None:
                    import jax

                    jax.config.update("jax_enable_x64", settings.x64)
            finally:
                try:
                    keras.backend.set_floatx(floatx)
                finally:
                    _set_raw_policy(policy)


# -- float64 copies of models ------------------------------------------------------------
def _float64_config(config: Any) -> Any:
    """A layer config with every floating dtype (policy) replaced by float64."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and _is_float_policy(value):
                out[key] = "float64"
            else:
                out[key] = _float64_config(value)
        return out
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    return config


def _is_float_policy(value: Any) -> bool:
    if isinstance(value, str):
        return value in _FLOAT_POLICIES
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        name = (value.get("config") or {}).get("name")
        return name in _FLOAT_POLICIES
    return False


def _clone_layer(layer: Any) -> Any:
    return type(layer).from_config(_float64_config(layer.get_config()))


def float64_clone(layer: Any) -> tuple[Any, str]:
    """A float64 copy of a built Keras layer or model with the same weight values.

    The copy is rebuilt with ``from_config`` from the layer's config with every
    floating dtype (policy) set to float64, the ``Input`` layers of Sequential
    and functional models included (``keras.models.clone_model`` would keep a
    float32 ``Input``, which rounds the data to float32 on its way in).  Call
    this inside :func:`float64_settings`, so that sublayers created in
    ``__init__`` are float64 too.  All variables, seed generator states
    included, are copied.

    Returns
    -------
    clone, reason
        The copy, or None and a sentence saying why it could not be made.
    """
    try:
        clone = _clone_layer(layer)
        if not clone.built:
            build = layer.get_build_config()
            if not build:
                return None, "its build config is unknown"
            clone.build_from_config(build)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"rebuilding it from its config failed ({type(exc).__name__}: {first[:200]})"
    narrow_inputs = [
        str(t.dtype)
        for t in (getattr(clone, "inputs", None) or [])
        if str(getattr(t, "dtype", "")) in _NARROW
    ]
    if narrow_inputs:
        return None, f"its copy still takes {'/'.join(sorted(set(narrow_inputs)))} inputs"
    mine, theirs = layer.variables, clone.variables
    shapes = [tuple(v.shape) for v in mine]
    if [tuple(v.shape) for v in theirs] != shapes or [tuple(v.shape) for v in clone.trainable_weights] != [
        tuple(v.shape) for v in layer.trainable_weights
    ]:
        return None, "the copy rebuilt from its config has different weights"
    for new, old in zip(theirs, mine):
        value = np.asarray(ops.convert_to_numpy(old.value))
        if new.dtype == "float64" and value.dtype.kind == "f":
            value = value.astype(np.float64)
        _assign(new, value)
    if any(v.dtype not in _FULL for v in clone.trainable_weights):
        return None, "its copy still has weights that are not float64"
    return clone, ""
