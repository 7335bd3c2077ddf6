"""Every code block of README.md and docs/*.md runs, and the output shown next to it is real.

How the documents are read:

* `` ```python `` blocks of one file run in order in one namespace, so a
  later block uses the names of earlier ones.  A block with an import
  statement needs the frameworks it imports (torch, tensorflow, keras, jax);
  a block without one continues the block before it and needs what that one
  needed.  A test runs the blocks that one set of frameworks allows, carries
  their pytest markers (``-m keras`` picks the Keras ones, once per backend)
  and is skipped when a framework cannot be imported.
* A python block whose first line is ``# NAME.py`` is a file: it is written
  into the working folder of the file's tests (not run in the namespace),
  for the commands below to use.
* A `` ```text `` block right after a python block is that block's output:
  it is compared with what the block printed.
* A `` ```text `` block right after ``<!-- output-of: COMMAND -->`` is the
  output of ``gradcheck ...`` or ``pytest ...``, run in that folder.
* ``<!-- no-run: reason -->`` right before a block keeps it from running.

Output is compared line by line: runs of blanks count as one; a line that is
only ``...`` stands for any number of lines, and a line ending in ``...``
for any text after what it shows; integers (evaluation counts, entries)
must be equal, decimals agree within 5% (or are both below 1e-6, round-off
level), and durations (``0.02 s``) are not compared.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import itertools
import os
import re
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")

_FENCE = re.compile(r"^\s*```(\S*)\s*$")
_COMMENT = re.compile(r"^<!--\s*(no-run|output-of):\s*(.*?)\s*-->\s*$")
_FILE = re.compile(r"^#\s*([\w.-]+\.py)\s*$")


@dataclass
class Block:
    """One fenced block of a document."""

    path: Path
    line: int
    lang: str
    code: str
    directive: tuple[str, str] | None = None
    output: Block | None = None
    needs: frozenset[str] = field(default_factory=frozenset)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        match = _FILE.match(first)
        return match.group(1) if match else None


def parse(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with their directives and outputs attached."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    directive: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        text = lines[i]
        comment = _COMMENT.match(text)
        fence = _FENCE.match(text)
        if comment:
            directive = (comment.group(1), comment.group(2))
        elif fence:
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            blocks.append(Block(path, i + 1, fence.group(1), code, directive))
            directive = None
            i = end
        elif text.strip():
            directive = None
        i += 1
    # A text block right after a python block (blank lines between) is its output.
    for prev, block in itertools.pairwise(blocks):
        between = lines[prev.line + prev.code.count("\n") + 2 : block.line - 1]
        if prev.lang == "python" and block.lang == "text" and not any(s.strip() for s in between):
            prev.output = block
    needs: frozenset[str] = frozenset()
    for block in blocks:
        if block.lang != "python":
            continue
        imported = _imports(block.code)
        if imported:
            needs = frozenset(imported & set(FRAMEWORKS))
        block.needs = needs
    return blocks


def _imports(code: str) -> set[str]:
    """The top-level modules a block imports (``import a, b``, ``from a.b import c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _sets(path: Path) -> list[frozenset[str]]:
    runnable = [b for b in parse(path) if b.lang == "python" and not _skipped(b)]
    return list(dict.fromkeys(b.needs for b in runnable))


def _skipped(block: Block) -> bool:
    return block.directive is not None and block.directive[0] == "no-run"


def _cases() -> list[object]:
    cases: list[object] = []
    for path in DOCUMENTS:
        for needs in _sets(path):
            marks = [getattr(pytest.mark, fw) for fw in sorted(needs)]
            label = "+".join(sorted(needs)) or "numpy"
            cases.append(pytest.param(path, needs, marks=marks, id=f"{path.name}[{label}]"))
        if any(b.directive and b.directive[0] == "output-of" for b in parse(path)):
            cases.append(pytest.param(path, None, id=f"{path.name}[commands]"))
    return cases


# ----------------------------------------------------------------------------- comparing output

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*s\b)?")


def _tokens(line: str) -> list[str]:
    """Text and number pieces of a line, blanks collapsed."""
    line = re.sub(r"\s+", " ", line.strip())
    pieces: list[str] = []
    pos = 0
    for m in _NUMBER.finditer(line):
        pieces += [line[pos : m.start()], m.group(0)]
        pos = m.end()
    pieces.append(line[pos:])
    return pieces


def _same_number(shown: str, real: str) -> bool:
    if shown.endswith("s") and real.endswith("s"):
        return True  # a duration
    a, b = (float(x.rstrip("s").replace(",", "")) for x in (shown, real))
    if not re.search(r"[.eE]", shown):
        return a == b
    return abs(a - b) <= 0.05 * max(abs(a), abs(b)) or max(abs(a), abs(b)) < 1e-6


def line_matches(shown: str, real: str) -> bool:
    """Does the documented line ``shown`` match the real ``real`` (see the module docstring)?"""
    prefix = shown.rstrip().endswith("...") and shown.strip() != "..."
    a = _tokens(shown.rstrip()[:-3] if prefix else shown)
    b = _tokens(real)
    if prefix:
        if len(a) > len(b):
            return False
        *head, last = a
        return all(_piece(x, y) for x, y in zip(head, b)) and (
            b[len(head)].startswith(last) if len(head) % 2 == 0 else _piece(last, b[len(head)])
        )
    return len(a) == len(b) and all(_piece(x, y) for x, y in zip(a, b))


def _piece(shown: str, real: str) -> bool:
    if _NUMBER.fullmatch(shown) and _NUMBER.fullmatch(real):
        return _same_number(shown, real)
    return shown == real


def output_matches(shown: list[str], real: list[str]) -> bool:
    """The documented lines against the real ones, ``...`` lines matching any run of lines."""
    shown = [s for s in shown if s.strip()]
    real = [r for r in real if r.strip()]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(shown):
                result = j == len(real)
            elif shown[i].strip() == "...":
                result = any(match(i + 1, k) for k in range(j, len(real) + 1))
            else:
                result = j < len(real) and line_matches(shown[i], real[j]) and match(i + 1, j + 1)
            memo[i, j] = result
        return memo[i, j]

    return match(0, 0)


def _compare(block: Block, expected: Block, printed: str) -> None:
    if not output_matches(expected.code.splitlines(), printed.splitlines()):
        pytest.fail(
            f"the output shown at {expected.where} is not what {block.where} prints now:\n"
            f"--- shown\n{expected.code}\n--- printed\n{printed}",
            pytrace=False,
        )


# ----------------------------------------------------------------------------- running


def _write_files(path: Path, folder: Path) -> None:
    for block in parse(path):
        if block.lang == "python" and block.file_name:
            (folder / block.file_name).write_text(block.code + "\n")


def _import_or_skip(needs: frozenset[str]) -> None:
    for fw in sorted(needs):
        try:
            module = importlib.import_module(fw)
        except ImportError as exc:
            pytest.skip(f"needs {fw}: {exc}")
        if fw == "keras" and module.backend.backend() == "numpy":
            pytest.skip("the examples differentiate with Keras's backend; its numpy backend has no autodiff")


def _command(text: str) -> list[str]:
    words = text.split()
    if words[0] == "gradcheck":
        return [sys.executable, "-m", "gradcheck_core.cli", *words[1:]]
    if words[0] == "pytest":
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *words[1:]]
    raise AssertionError(f"output-of runs gradcheck or pytest commands, not {text!r}")


@pytest.mark.parametrize(("path", "needs"), _cases())
def test_document(
    path: Path, needs: frozenset[str] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document's blocks that ``needs`` allows run, and print what it shows."""
    _write_files(path, tmp_path)
    monkeypatch.chdir(tmp_path)
    if needs is None:
        for block in parse(path):
            if block.directive and block.directive[0] == "output-of":
                env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
                proc = subprocess.run(
                    _command(block.directive[1]), capture_output=True, text=True, timeout=600, env=env
                )
                _compare(block, block, proc.stdout + proc.stderr)
        return
    _import_or_skip(needs)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in parse(path):
        if block.lang != "python" or _skipped(block) or not block.needs <= needs:
            continue
        code = compile(block.code, block.where, "exec")
        if block.file_name:
            continue  # a file for the commands: compiled, not run here
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(code, namespace)
        except Exception:
            pytest.fail(f"the block at {block.where} raised:\n{traceback.format_exc()}", pytrace=False)
        if block.output is not None:
            _compare(block, block.output, buffer.getvalue())


# ----------------------------------------------------------------------------- the comparison itself


def test_output_comparison_is_strict_where_it_matters() -> None:
    real = ["gradient check: FAIL  rel_error=1.48e-01  (numpy, 229 evaluations, 0.02 s)", "ok  W1  (5, 4)"]
    assert output_matches(
        ["gradient check: FAIL rel_error=1.49e-01 (numpy, 229 evaluations, 0.31 s)", "..."], real
    )
    assert not output_matches(
        ["gradient check: FAIL  rel_error=1.48e-01  (numpy, 157 evaluations, 0.02 s)", "..."], real
    )
    assert not output_matches(
        ["gradient check: FAIL  rel_error=1.90e-01  (numpy, 229 evaluations, 0.02 s)", "..."], real
    )
    assert not output_matches([real[0]], real)  # a line left out without "..."
    assert output_matches(["gradient check: FAIL ...", "ok  W1  (5, 4)"], real)
    assert not output_matches(["gradient check: PASS ...", "..."], real)


def test_blocks_are_found_with_their_outputs_and_frameworks(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\nimport numpy as np\nprint(1)\n```\n\n```text\n1\n```\n\n"
        "```python\nimport numpy as np, torch\n```\n\n```python\nx = torch.ones(1)\n```\n\n"
        "<!-- no-run: shown only -->\n```python\nimport keras\n```\n"
    )
    blocks = [b for b in parse(doc) if b.lang == "python"]
    assert [b.needs for b in blocks] == [frozenset(), {"torch"}, {"torch"}, {"keras"}]
    assert blocks[0].output is not None and blocks[0].output.code == "1"
    assert blocks[1].output is None and _skipped(blocks[3]) and not _skipped(blocks[2])


def test_every_document_has_running_blocks() -> None:
    for path in DOCUMENTS:
        blocks = [b for b in parse(path) if b.lang == "python"]
        skipped = [b for b in blocks if _skipped(b)]
        assert len(skipped) <= max(1, len(blocks) // 4), f"{path.name}: too many no-run blocks"
