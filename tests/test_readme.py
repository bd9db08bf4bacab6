"""The README's Python and shell snippets run as written.

The rules:

- Every ```python block and every ```sh / ```bash / ```console block is collected (a block
  indented under a list item too). ```js blocks are the JS SDK's side and are not run here.
- A block preceded by an HTML comment ``<!-- not run: why -->`` (blank lines between are
  allowed) does not claim to run: a fragment with names the reader supplies, a command that
  needs your own app, a long-running server, a second terminal or a password prompt. Such a
  Python block must still compile (top-level ``await`` allowed, as in a notebook or
  ``python -m asyncio``) and such a shell block must pass ``bash -n``.
- Every other block runs: a Python block as a file, ``python FILE`` in a subprocess, a shell
  block with ``bash -euo pipefail``; both from the repository root, with this interpreter's
  ``bin`` first on ``PATH`` (so ``python`` and ``minapp-async`` are the ones under test), with
  warnings as errors, and must exit 0 within a deadline. They start their own local engine
  (``Engine`` / ``running_engine`` / the examples), so nothing reaches past 127.0.0.1.
- Set-up steps in a shell command chain are skipped, because they need the internet and the
  test already runs inside that set-up: ``python3 -m venv``, ``. .venv/bin/activate``,
  ``pip install`` and ``npm ci``/``npm install``. The rest of the chain runs (the demo
  command runs ``python examples/demo.py``). The README's test command is marked not run:
  it is this very suite, and CI runs it verbatim.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = README.parent
RUN_DEADLINE = 90.0  # seconds per snippet; each starts an engine and a worker or two

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run\b.*-->\s*$")
_PYTHON = frozenset({"python", "py"})
_SHELL = frozenset({"sh", "bash", "console", "shell"})
_SETUP_STEPS = re.compile(
    r"^(python3? -m venv\b|\. \.venv/bin/activate$|source \.venv/bin/activate$|pip3? install\b"
    r"|npm (ci|install)\b)"
)


@attrs.frozen
class Snippet:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    runs: bool

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang}{'' if self.runs else ':not-run'}"


def readme_snippets() -> list[Snippet]:
    """Every Python and shell block in the README, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None or not opening["lang"]:
            i += 1
            continue
        start, indent, lang = i, opening["indent"], opening["lang"].lower()
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        i += 1  # the closing fence
        if lang not in _PYTHON | _SHELL:
            continue
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        runs = before < 0 or _NOT_RUN.match(lines[before]) is None
        code = textwrap.dedent("\n".join(body)) + "\n"
        snippets.append(Snippet(start + 1, "python" if lang in _PYTHON else "shell", code, runs))
    return snippets


SNIPPETS = readme_snippets()


def without_setup(command: str) -> str:
    """The shell *command* with its set-up steps (venv, activate, installs) left out."""
    kept = []
    for line in command.splitlines():
        steps = [step.strip() for step in line.split(" && ")]
        rest = [step for step in steps if not _SETUP_STEPS.match(step)]
        if rest:
            kept.append(" && ".join(rest))
    return "\n".join(kept) + "\n"


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONWARNINGS"] = "error"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in ("MINAPP_BASE_URL", "MINAPP_CLIENT_ID", "MINAPP_TOKEN", "MINAPP_CLIENT_SECRET"):
        env.pop(name, None)  # the snippets start their own engine; nothing leaks in
    return env


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = _environment()
    env["MINAPP_ASYNC_HOME"] = str(tmp_path / "home")  # a CLI login lands here, not in ~
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
        check=False,
    )


def test_the_readme_has_snippets_that_run() -> None:
    """A guard against marking everything not-run (or the extraction finding nothing)."""
    running = [s for s in SNIPPETS if s.runs]
    assert {s.lang for s in running} == {"python", "shell"}
    assert len(running) >= 4


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_readme_snippet(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.lang == "python":
        if not snippet.runs:
            compile(snippet.code, snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            return
        script = tmp_path / "snippet.py"
        script.write_text(snippet.code, encoding="utf-8")
        proc = _run([sys.executable, str(script)], tmp_path)
    elif not snippet.runs:
        proc = _run(["bash", "-n", "-c", snippet.code], tmp_path)
    else:
        command = without_setup(snippet.code)
        assert command.strip(), f"{snippet.id} is all set-up: mark it not run"
        proc = _run(["bash", "-euo", "pipefail", "-c", command], tmp_path)
    assert proc.returncode == 0, (
        f"{snippet.id} exited {proc.returncode}\n"
        f"--- code\n{snippet.code}--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )


def test_without_setup_keeps_only_the_commands_after_the_set_up() -> None:
    demo = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . "
        "&& python examples/demo.py\n"
    )
    assert without_setup(demo) == "python examples/demo.py\n"
    assert without_setup("npm ci --prefix tests/js\n").strip() == ""
