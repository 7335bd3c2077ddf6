"""Built-in examples for ``gradcheck demo``."""

from __future__ import annotations

import numpy as np

import gradcheck_core as gc


def three_layer_net() -> None:
    """A LINEAR-RELU-LINEAR-RELU-LINEAR-SIGMOID net with the bugs dW2 * 2 and db1 * 4."""
    from gradcheck_core.examples import three_layer

    params, X, Y = three_layer.problem()
    report = gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))
    print(report)


def run(args: list[str]) -> int:
    three_layer_net()
    return 0
