"""The random state a Keras loss may consume, saved and replayed around each evaluation.

The seed generators of the checked layers (dropout, noise), Keras's global
seed generator, and the backend's own generator (torch's, or TensorFlow's
global ``tf.random.Generator``), so that every evaluation of the loss draws
the same random numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from ..base import RngState
from .values import backend


def _seed_generators(layers: list[Any]) -> list[Any]:
    found, seen = [], set()
    for layer in layers:
        try:
            sublayers = list(layer._flatten_layers())
        except Exception:
            sublayers = [layer]
        for sub in sublayers:
            for gen in getattr(sub, "_seed_generators", []) or []:
                if id(gen) not in seen:
                    seen.add(id(gen))
                    found.append(gen)
    return found


def _seed_state(name: str, gen: Any) -> RngState:
    def get() -> np.ndarray:
        return np.array(ops.convert_to_numpy(gen.state.value))

    def put(state: np.ndarray) -> None:
        gen.state.assign(state)

    return RngState(name, get, put)


def keras_rng_states(layers: list[Any]) -> list[RngState]:
    """The seed generators of ``layers`` (dropout, noise), Keras's global one, and the backend's.

    Parameters
    ----------
    layers : list of keras.layers.Layer
        The layers whose seed generators (sublayers' included) may be drawn from.

    Returns
    -------
    list of RngState
        One state per generator, in that order, then torch's or TensorFlow's.
    """
    out = [_seed_state(f"seed generator {gen.name}", gen) for gen in _seed_generators(layers)]
    try:
        from keras.src.backend.common import global_state

        gen = global_state.get_global_attribute("global_seed_generator")
    except Exception:  # pragma: no cover
        gen = None
    if gen is not None:
        out.append(_seed_state("keras global seed generator", gen))
    b = backend()
    if b == "torch":
        import torch

        out.append(RngState("torch", torch.random.get_rng_state, torch.random.set_rng_state))
    elif b == "tensorflow":
        from ..tensorflow import global_generator_state

        out.extend(global_generator_state())
    return out


def _replay(rngs: list[RngState], saved: list[Any]) -> None:
    """Put every random state back to the one saved before the first evaluation."""
    for r, s in zip(rngs, saved):
        r.set(s)
