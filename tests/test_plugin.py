"""The pytest plugin, run the way users run it: pytest on a test file of theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradcheck_core.pytest_plugin import GradcheckFixture


def run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(source))
    env = dict(os.environ)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_user.py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


FAILING = """
    import gradcheck_core as gc
    from gradcheck_core.demos import three_layer


    def test_backward_pass():
        params, X, Y = three_layer.problem()
        gc.assert_gradients(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))


    def test_with_fixture(gradcheck):
        params, X, Y = three_layer.problem()
        gradcheck(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))
"""


def test_failed_check_shows_the_parameter_table(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, FAILING)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "2 failed" in out
    for test in ("test_backward_pass", "test_with_fixture"):
        section = out.split(f"_ {test} _")[1].split("\n____")[0].split("\n=====")[0]
        lines = [line[1:].strip() for line in section.splitlines() if line.startswith("E ")]
        assert lines[0].startswith("gradcheck_core.errors.CheckFailed: gradient check: FAIL  rel_error=")
        header = next(line for line in lines if "rel error" in line)
        assert header.split() == [
            "parameter",
            "shape",
            "rel",
            "error",
            "max",
            "abs",
            "err",
            "worst",
            "index",
            "checked",
            "bad",
        ]
        rows = lines[lines.index(header) + 1 :]
        assert rows[0].startswith("FAIL  b1") and rows[1].startswith("FAIL  W2")
        assert any("scale: [W2] the gradient of W2 is 2 times" in line for line in lines)
        # the library's own frames are left out: the failure points at the test's line
        assert "report.py" not in section and "check.py" not in section and "pytest_plugin.py" not in section
        assert "test_user.py:" in section


def test_fulltrace_keeps_library_frames(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, FAILING, "--fulltrace", "-k", "test_backward_pass")
    assert proc.returncode == 1
    assert "report.py" in proc.stdout


def test_tb_short_still_shows_the_table(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, FAILING, "--tb=short", "-k", "test_backward_pass")
    assert proc.returncode == 1
    assert "FAIL  b1" in proc.stdout and "FAIL  W2" in proc.stdout


def test_other_errors_keep_their_traceback(tmp_path: Path) -> None:
    proc = run_pytest(
        tmp_path,
        """
        import numpy as np
        import gradcheck_core as gc


        def test_vector_loss():
            gc.check(lambda p: p * 2.0, np.ones(3), lambda p: np.full(3, 2.0))
        """,
    )
    assert proc.returncode == 1
    assert "InputError" in proc.stdout and "not a scalar" in proc.stdout
    assert "check.py" in proc.stdout  # only failed checks are shortened


OPTIONS = """
    import numpy as np
    import pytest

    pytestmark = pytest.mark.gradcheck(rtol=1e-5)


    def loss(p):
        return float(np.sum(np.sin(p)))


    def grad(p):
        return np.cos(p)


    def test_module_marker_and_command_line(gradcheck, request):
        expected = {"rtol": 1e-5}
        if request.config.getoption("gradcheck_mode"):
            expected["mode"] = request.config.getoption("gradcheck_mode")
            expected["seed"] = 7
        assert gradcheck.options == expected


    @pytest.mark.gradcheck(mode="full", sample=2)
    def test_marker_beats_command_line(gradcheck):
        assert gradcheck.options["mode"] == "full"
        assert gradcheck.options["rtol"] == 1e-5
        report = gradcheck(loss, np.linspace(-1, 1, 6), grad)
        assert report.passed and report.mode == "full"
        assert report.blocks[0].n_checked == 2


    @pytest.mark.gradcheck(sample=2)
    def test_call_beats_marker(gradcheck):
        report = gradcheck(loss, np.linspace(-1, 1, 6), grad, sample=4)
        assert report.blocks[0].n_checked == 4


    def test_check_does_not_raise(gradcheck):
        report = gradcheck.check(loss, np.linspace(-1, 1, 6), lambda p: 2 * np.cos(p))
        assert report.verdict == "fail"


    def test_check_loss_through_the_fixture(gradcheck):
        def mse(y_true, y_pred):
            return float(np.mean((y_pred - y_true) ** 2))

        y_true, y_pred = np.zeros(4), np.array([0.5, -1.0, 2.0, 0.1])
        gradcheck.check_loss(mse, y_true, y_pred, grad=lambda yp: 2 * (yp - y_true) / yp.size)
"""


def test_fixture_options_from_markers(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, OPTIONS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


def test_fixture_options_from_the_command_line(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, OPTIONS, "--gradcheck-mode=full", "--gradcheck-seed=7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


def test_bad_mode_on_the_command_line(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, OPTIONS, "--gradcheck-mode=sideways")
    assert proc.returncode == 4
    assert "--gradcheck-mode" in proc.stderr and "sideways" in proc.stderr


def test_positional_marker_arguments_are_refused(tmp_path: Path) -> None:
    proc = run_pytest(
        tmp_path,
        """
        import pytest

        @pytest.mark.gradcheck("fast")
        def test_it(gradcheck):
            pass
        """,
    )
    assert proc.returncode != 0
    assert "keyword options only" in proc.stdout + proc.stderr


def test_help_and_markers_list_the_plugin(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "def test_nothing():\n    pass\n", "--markers")
    assert "@pytest.mark.gradcheck(**options)" in proc.stdout
    proc = run_pytest(tmp_path, "def test_nothing():\n    pass\n", "--help")
    assert "--gradcheck-mode" in proc.stdout


def test_fixture_object_in_process() -> None:
    fixture = GradcheckFixture({"mode": "full"})
    assert "mode" in repr(fixture)
    import numpy as np

    from gradcheck_core import CheckFailed

    with pytest.raises(CheckFailed) as info:
        fixture(lambda p: float(np.sum(p**2)), np.ones(3), lambda p: 3 * p)
    assert info.value.report.verdict == "fail"
    assert info.value.report.mode == "full"
