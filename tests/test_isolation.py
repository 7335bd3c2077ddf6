"""Checking a numpy function imports no framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_numpy_check_imports_no_framework() -> None:
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gradcheck_core as gc
        w = np.linspace(-1, 1, 6)
        report = gc.check(lambda p: float(np.sum(np.sin(p))), w, lambda p: np.cos(p))
        assert report.passed, report
        gc.check_function(lambda x: np.sin(x), w, vjp=lambda u, x: u * np.cos(x))
        loaded = sorted(m for m in ("torch", "tensorflow", "keras", "jax", "jaxlib") if m in sys.modules)
        print("LOADED", loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr
