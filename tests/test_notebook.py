"""Reports and comparisons in Jupyter: HTML with the terminal's table, findings and colours; the progress bar."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest

import gradcheck_core as gc
from gradcheck_core import progress
from gradcheck_core.compare import Comparison, ParameterRow
from gradcheck_core.demos import three_layer
from gradcheck_core.table import VERDICT_COLOUR


def _buggy_report() -> gc.Report:
    params, X, Y = three_layer.problem()
    return gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))


def test_report_html_has_the_rows_findings_and_verdict_colour() -> None:
    report = _buggy_report()
    html = report._repr_html_()
    for b in report.blocks:
        assert f">{b.name}<" in html
    assert html.index(">b1<") < html.index(">W1<")  # failing rows first, as in the terminal
    for f in report.findings:
        assert f.message[:40] in html
    assert f"color:{VERDICT_COLOUR['fail']}" in html and "FAIL" in html
    assert f"{report.nfev} evaluations" in html


def test_passing_report_is_green() -> None:
    params, X, Y = three_layer.problem()
    html = gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y))._repr_html_()
    assert f"color:{VERDICT_COLOUR['pass']}" in html and "PASS" in html
    assert VERDICT_COLOUR["fail"] not in html


def test_names_are_escaped() -> None:
    w = np.linspace(0.1, 1.0, 3)
    report = gc.check(
        lambda p: float(np.sum(p["<b>w&</b>"] ** 2)),
        {"<b>w&</b>": w},
        lambda p: {"<b>w&</b>": 3 * p["<b>w&</b>"]},
    )
    html = report._repr_html_()
    assert "<b>w&" not in html and "&lt;b&gt;w&amp;&lt;/b&gt;" in html
    assert report.verdict == "fail"


def test_comparison_html() -> None:
    rows = [
        ParameterRow(
            "torch", "net/<kernel>", "0.weight", (4, 8), (8, 4), "transposed", 0.5, 0.1, False, (0, 1)
        ),
        ParameterRow("torch", "net/bias", "0.bias", (8,), (8,), "same", 1e-16, 1e-17, True, None),
    ]
    comparison = Comparison(
        False, "keras", {"keras": 1.0, "torch": 1.5}, {"torch": 0.33}, rows, ["loss differs"]
    )
    html = comparison._repr_html_()
    assert "DIFFER" in html and f"color:{VERDICT_COLOUR['fail']}" in html
    assert "net/&lt;kernel&gt;" in html and ">0.bias<" in html and "loss differs" in html
    assert html.index("net/&lt;kernel&gt;") < html.index("net/bias")
    assert str(comparison).splitlines()[0] == "cross-framework comparison: DIFFER (reference: keras)"


class _FakeKernelShell:
    kernel = object()


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: _FakeKernelShell()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_not_a_notebook_without_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None  # type: ignore[attr-defined]  # plain python with IPython imported
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert not progress.in_notebook()
    bar = progress.Progress(100, enabled=None, expected_seconds=60)
    assert not bar.enabled  # stderr is not a terminal under pytest


def test_notebook_gets_tqdm_bar(fake_kernel: None) -> None:
    pytest.importorskip("tqdm")
    assert progress.in_notebook()
    bar = progress.Progress(50, enabled=None, expected_seconds=60)
    try:
        assert bar.enabled and bar.bar is not None
        assert type(bar.bar).__module__.startswith("tqdm")
        bar(10)
        assert bar.bar.n == 10
    finally:
        bar.close()
    quick = progress.Progress(50, enabled=None, expected_seconds=0.1)
    assert not quick.enabled  # a short check shows no bar in a notebook either


def test_notebook_without_tqdm_writes_the_line(fake_kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = progress.Progress(4, enabled=None, expected_seconds=60)
    assert bar.enabled and bar.bar is None
    bar(4)
    bar.close()
    assert "4/4 coordinates" in stderr.getvalue()
