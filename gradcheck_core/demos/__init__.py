"""Built-in examples for ``gradcheck demo``: the situations people ask about.

Each demo re-creates a situation from the questions and tutorials that
people write about gradient checking, shows what a plain central-difference
loop says about it, and what :func:`gradcheck_core.check` says.  Every demo
states the outcome it expects and reports whether it got it, so
``gradcheck demo`` doubles as a smoke test (exit status 1 when a demo did not
turn out as expected).

Demos that need a framework import it only when they run, and are skipped
with a one-line note when it (or its gradcheck-core adapter) is missing.

The models the demos check (also used by the tests and the benchmarks) are
modules of this package: :mod:`.three_layer`, :mod:`.digits_l2`,
:mod:`.dropout`, :mod:`.iris` and :mod:`.tiny`.
"""

from __future__ import annotations

from .catalogue import DEMOS
from .demo import Case, Demo, Outcome
from .output import Output
from .runner import list_demos, run
from .textbook import plain_loop

__all__ = ["DEMOS", "Case", "Demo", "Outcome", "Output", "list_demos", "plain_loop", "run"]
