"""The ``gradcheck`` command line, driven the way a user drives it, and the report rendering."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gradcheck_core as gc
from gradcheck_core import demos, render
from gradcheck_core.demos import three_layer

PNG = b"\x89PNG\r\n\x1a\n"


def gradcheck(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="120")
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "gradcheck_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gradcheck"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


FACTORIES = """
import numpy as np
from gradcheck_core.demos import three_layer


def _problem(buggy):
    params, X, Y = three_layer.problem()
    return {"loss": three_layer.cost(X, Y), "params": params, "grad": three_layer.backward(X, Y, buggy=buggy)}


def passing():
    return _problem(False)


def failing():
    return _problem(True)


def with_options():
    return {**_problem(True), "options": {"mode": "full", "sample": 3}}


def chatty():
    print("building the problem")
    return _problem(True)


def noisy():
    w = np.array([0.3, -0.2, 0.5])
    gen = np.random.default_rng()
    return {
        "loss": lambda p: float(np.sum(p ** 2) + 1e-3 * gen.standard_normal()),
        "params": w,
        "grad": lambda p: 2 * p,
    }


def raising():
    raise RuntimeError("the data file is missing")


def not_a_dict():
    return 42


def no_params():
    return {"loss": lambda p: 0.0}


def unknown_key():
    return {**_problem(False), "tolerance": 1e-3}


def loss_raises():
    def loss(p):
        raise ValueError("shapes do not match")
    return {"loss": loss, "params": np.ones(3), "grad": lambda p: p}


def no_grad():
    return {"loss": lambda p: float(np.sum(p ** 2)), "params": np.ones(3)}
"""


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("factories") / "problems.py"
    path.write_text(FACTORIES)
    return path


# ----------------------------------------------------------------------------- demo


def test_demo_list_names_every_demo() -> None:
    proc = gradcheck("demo", "--list")
    assert proc.returncode == 0, proc.stderr
    for name in ("keras-iris", "three-layer", "digits", "dropout", "tiny"):
        assert name in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == len(demos.DEMOS)


def test_numpy_demos_run_and_turn_out_as_expected(tmp_path: Path) -> None:
    proc = gradcheck("demo", "three-layer", "tiny", "digits", "--plot", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    # three-layer: the two wrong parameters and their factors
    assert "dW2 * 2 and db1 * 4: FAIL as expected" in out
    assert "gradient of W2 is 2 times" in out and "gradient of b1 is 4 times" in out
    # tiny: correct passes, 15% off fails with the factor named
    assert "correct, entries ~1e-11: PASS as expected" in out
    assert "1.15 times the numerical gradient" in out
    # digits: the missing regularisation term on theta2
    assert "missing_term: [theta2]" in out
    assert "summary: three-layer: as expected; tiny: as expected; digits: as expected" in out
    assert "UNEXPECTED" not in out
    for name in ("three-layer", "tiny", "digits"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG


def test_demo_plain_text_when_not_a_terminal() -> None:
    proc = gradcheck("demo", "three-layer")
    assert proc.returncode == 0
    assert "\x1b[" not in proc.stdout
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("gradient check: FAIL"))
    assert lines[header + 2].startswith("FAIL  b1") and lines[header + 3].startswith("FAIL  W2")


def test_demo_colour_on_request() -> None:
    proc = gradcheck("demo", "three-layer", "--color", "always")
    assert proc.returncode == 0
    assert "\x1b[" in proc.stdout
    assert "worst index" in proc.stdout and "FAIL" in proc.stdout


@pytest.mark.keras
def test_keras_iris_demo_contrasts_plain_loop_and_verdict(tmp_path: Path) -> None:
    proc = gradcheck("demo", "keras-iris", "--plot", str(tmp_path), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    line = next(line for line in out.splitlines() if "plain central-difference loop with step 1e-7" in line)
    difference = float(line.split("difference = ")[1].split()[0])
    assert difference > 0.05  # the textbook loop calls the correct float32 gradient wrong
    assert "correct gradient, float32 loss: PASS as expected" in out
    assert "gradient 2% too large, float32 loss: FAIL as expected" in out
    assert (tmp_path / "keras-iris-steps.png").read_bytes()[:8] == PNG


@pytest.mark.torch
def test_dropout_demo_runs_or_says_why_not() -> None:
    proc = gradcheck("demo", "dropout", timeout=180)
    assert "Traceback" not in proc.stderr
    if proc.stdout.startswith("skipped dropout:"):
        assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 1
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nn.Dropout, train mode: PASS as expected" in proc.stdout
    assert "backward forgets 1/(1-p): FAIL as expected" in proc.stdout


def test_demo_unknown_name_is_a_usage_error() -> None:
    assert_usage_error(gradcheck("demo", "no-such-demo"), "no-such-demo", "three-layer")


def test_missing_framework_or_adapter_skips_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(out: demos.Output) -> demos.Outcome:  # pragma: no cover - must not run
        raise AssertionError("a demo without its framework ran")

    monkeypatch.setitem(
        demos.DEMOS, "needs-x", demos.Demo("needs-x", "t", "s", ("no_such_framework_xyz",), never)
    )
    monkeypatch.setitem(
        demos.DEMOS,
        "needs-adapter",
        demos.Demo("needs-adapter", "t", "s", (), never, adapter="no_such_adapter"),
    )
    stream = io.StringIO()
    # Asked for by name, a demo that cannot run fails the run (status 2) and says why.
    assert demos.run(["needs-x", "needs-adapter"], stream=stream, color=False) == 2
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("cannot run")]
    assert lines[0] == (
        "cannot run needs-x: needs no_such_framework_xyz, which is not installed "
        "(pip install 'gradcheck-core[no_such_framework_xyz]')"
    )
    assert lines[1].startswith("cannot run needs-adapter: the no_such_adapter adapter")


def test_a_demo_with_the_wrong_outcome_sets_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def body(out: demos.Output) -> demos.Outcome:
        params, X, Y = three_layer.problem()
        report = gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))
        return demos.Outcome([demos.Case("claims to pass", report, "pass")])

    monkeypatch.setitem(demos.DEMOS, "wrong", demos.Demo("wrong", "t", "s", (), body))
    stream = io.StringIO()
    assert demos.run(["wrong"], stream=stream, color=False) == 1
    assert "[UNEXPECTED] claims to pass: expected PASS, got FAIL" in stream.getvalue()


def test_plain_loop_reproduces_the_textbook_number() -> None:
    params, X, Y = three_layer.problem()
    grads = three_layer.backward(X, Y, buggy=False)(params)
    vec = np.concatenate([grads["d" + k].ravel() for k in params])
    difference, approx = demos.plain_loop(three_layer.cost(X, Y), params, vec)
    assert difference < 1e-7
    assert approx.shape == vec.shape


# ----------------------------------------------------------------------------- run


def test_run_passing_factory_exits_0(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:passing")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gradient check: PASS")
    assert "Traceback" not in proc.stderr


def test_run_failing_factory_exits_1_with_the_table(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:failing")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gradient check: FAIL")
    assert lines[1].split() == [
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
    assert lines[2].startswith("FAIL  b1") and lines[3].startswith("FAIL  W2")
    assert "scale: [W2]" in proc.stdout


def test_run_inconclusive_exits_3(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:noisy")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "INCONCLUSIVE" in proc.stdout and "nondeterministic" in proc.stdout


def test_run_json_is_the_only_stdout(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:chatty", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["verdict"] == "fail"
    assert sorted(b["name"] for b in data["blocks"] if b["verdict"] == "fail") == ["W2", "b1"]
    assert "building the problem" in proc.stderr  # the factory's print went to stderr


def test_run_json_arrays(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:passing", "--json", "--arrays")
    data = json.loads(proc.stdout)
    w1 = data["blocks"][0]
    assert w1["name"] == "W1" and len(w1["analytic"]) == len(w1["numeric"]) == 20


def test_run_options_from_factory_and_command_line(factories: Path) -> None:
    data = json.loads(gradcheck("run", f"{factories}:with_options", "--json").stdout)
    assert data["mode"] == "full"
    assert all(b["n_checked"] == min(3, int(np.prod(b["shape"]))) for b in data["blocks"])
    data = json.loads(
        gradcheck(
            "run", f"{factories}:with_options", "--json", "--sample", "1", "--method", "richardson"
        ).stdout
    )
    assert data["method"] == "richardson"
    assert all(b["n_checked"] == 1 for b in data["blocks"])


def test_run_plot_writes_a_png(factories: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.png"
    proc = gradcheck("run", f"{factories}:failing", "--plot", str(target))
    assert proc.returncode == 1
    assert target.read_bytes()[:8] == PNG
    assert f"figure written to {target}" in proc.stdout


def test_run_colour_table(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:failing", "--color", "always")
    assert proc.returncode == 1
    assert "\x1b[" in proc.stdout
    text = _strip_ansi(proc.stdout)
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["FAIL"], ["ok"])]
    assert [r[1] for r in rows[:2]] == ["b1", "W2"]
    assert "findings" in text and "remove the factor" in text.lower()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "{dir}/nowhere.py:make"], ["no such file", "nowhere.py"]),
        (["run", "{file}"], ["expected FILE.py:FACTORY"]),
        (["run", "{file}:nothing_here"], ["has no 'nothing_here'", "passing", "failing"]),
        (
            ["run", "{file}:raising"],
            ["raising() raised RuntimeError: the data file is missing", "problems.py:"],
        ),
        (["run", "{file}:not_a_dict"], ["returned an int, not a dict", "keyword arguments of gc.check"]),
        (["run", "{file}:no_params"], ["no 'params'"]),
        (["run", "{file}:unknown_key"], ["unknown key 'tolerance'"]),
        (["run", "{file}:loss_raises"], ["ValueError: shapes do not match"]),
        (["run", "{file}:no_grad"], ["grad="]),
        (["run", "{file}:passing", "--mode", "sideways"], ["--mode", "sideways"]),
        (["run", "{file}:passing", "--sample", "0"], ["--sample", "positive"]),
        (["run", "{file}:passing", "--sample", "abc"], ["--sample", "abc"]),
        (["run", "{file}:passing", "--mode", "fast", "--sample", "3"], ["sample="]),
        (["run", "{file}:passing", "--rtol", "2"], ["rtol=2"]),
        (["run", "{file}:passing", "--plot", "{dir}/no/such/folder/x.png"], ["does not exist"]),
        (["run", "{file}:passing", "--arrays"], ["--arrays goes with --json"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_bad_usage_exits_2_with_one_line(factories: Path, args: list[str], needles: list[str]) -> None:
    args = [a.format(file=factories, dir=factories.parent) for a in args]
    assert_usage_error(gradcheck(*args), *needles)


def test_traceback_on_request(factories: Path) -> None:
    proc = gradcheck("run", f"{factories}:raising", "--traceback")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "RuntimeError" in proc.stderr


def test_no_arguments_prints_help_and_exits_2() -> None:
    proc = gradcheck()
    assert proc.returncode == 2
    assert "demo" in proc.stderr and "run" in proc.stderr


@pytest.mark.skipif(shutil.which("gradcheck") is None, reason="the gradcheck script is not on PATH")
def test_installed_script() -> None:
    proc = subprocess.run(["gradcheck", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("gradcheck-core ")


# ----------------------------------------------------------------------------- rendering


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(scope="module")
def failing_report() -> gc.Report:
    params, X, Y = three_layer.problem()
    return gc.check(three_layer.cost(X, Y), params, three_layer.backward(X, Y, buggy=True))


def test_report_text_is_fixed_width_with_failures_first(failing_report: gc.Report) -> None:
    text = str(failing_report)
    lines = text.splitlines()
    assert lines[0].startswith("gradient check: FAIL")
    table = lines[1:8]
    column = table[0].index("parameter")
    names = [line[column:].split()[0] for line in table[1:]]
    assert names[:2] == ["b1", "W2"] and set(names[2:]) == {"W1", "b2", "W3", "b3"}
    shape_column = table[0].index("shape")
    assert all(line[shape_column] == "(" for line in table[1:])
    assert lines[8] == "findings:"


def test_print_report_plain_when_not_a_terminal(failing_report: gc.Report) -> None:
    stream = io.StringIO()
    render.print_report(failing_report, stream)
    assert stream.getvalue() == str(failing_report) + "\n"


def test_print_report_rich_table(failing_report: gc.Report) -> None:
    stream = io.StringIO()
    render.print_report(failing_report, stream, color=True)
    raw = stream.getvalue()
    assert "\x1b[" in raw
    text = _strip_ansi(raw)
    assert "verdict" in text and "worst index" in text
    names = [line.split()[1] for line in text.splitlines() if line.split()[:1] in (["FAIL"], ["ok"])]
    assert names[:2] == ["b1", "W2"] and set(names[2:]) == {"W1", "b2", "W3", "b3"}
    flowing = " ".join(text.split())
    assert "scale b1: the gradient of b1 is 4 times" in flowing and "Remove the factor" in flowing


def test_print_report_falls_back_without_rich(
    failing_report: gc.Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "rich_available", lambda: False)
    stream = io.StringIO()
    render.print_report(failing_report, stream, color=True)
    assert stream.getvalue() == str(failing_report) + "\n"


def test_no_color_environment_means_plain(failing_report: gc.Report, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    render.print_report(failing_report, stream)
    assert "\x1b[" in stream.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    render.print_report(failing_report, stream)
    assert "\x1b[" not in stream.getvalue()


def test_factory_file_sees_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "helper_module_for_cli.py").write_text("SCALE = 3.0\n")
    (tmp_path / "prob.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from helper_module_for_cli import SCALE

            def make():
                return {"loss": lambda p: float(SCALE * np.sum(p ** 2)), "params": np.ones(4),
                        "grad": lambda p: 2 * SCALE * p}
            """
        )
    )
    proc = gradcheck("run", "prob.py:make", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- demos that cannot run


def _keras_without_backend(tmp_path: Path) -> dict[str, str]:
    """An environment where `import keras` fails as it does when its backend is missing."""
    fake = tmp_path / "fake" / "keras"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}


def test_a_named_demo_that_cannot_run_says_why_and_fails(tmp_path: Path) -> None:
    env = dict(os.environ, **_keras_without_backend(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "gradcheck_core.cli", "demo", "keras-iris"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cannot run keras-iris: needs keras" in proc.stdout
    assert "No module named 'tensorflow'" in proc.stdout and "KERAS_BACKEND" in proc.stdout


def test_without_names_a_demo_that_cannot_run_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcheck_core.demos import runner
    from gradcheck_core.demos.demo import Demo

    (tmp_path / "broken_dependency").mkdir()
    (tmp_path / "broken_dependency" / "__init__.py").write_text(
        "raise ImportError('its own dependency is missing')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = Demo("broken", "a demo", "a demo", ("broken_dependency",), lambda out: pytest.fail("ran"))
    monkeypatch.setattr(runner, "DEMOS", {"broken": broken, "three-layer": runner.DEMOS["three-layer"]})
    out = io.StringIO()
    assert runner.run(None, stream=out, color=False) == 0
    assert (
        "skipped broken: needs broken_dependency, which is installed but cannot be imported" in out.getvalue()
    )
    assert "three-layer: as expected" in out.getvalue()
    out = io.StringIO()
    assert runner.run(["broken", "three-layer"], stream=out, color=False) == 2
    assert "cannot run broken" in out.getvalue()


def test_demo_list_says_what_each_demo_needs() -> None:
    proc = gradcheck("demo", "--list")
    lines = dict(line.split(None, 1) for line in proc.stdout.strip().splitlines())
    assert lines["keras-iris"].startswith("needs keras, scikit-learn")
    assert lines["dropout"].startswith("needs torch")
    assert lines["three-layer"].startswith("needs numpy only")
