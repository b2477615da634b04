"""Every README code example runs as written.

Each fenced ``python`` / ``bash`` block in README.md carries a marker on the line(s) before it:

    <!-- runnable -->                      run by this test, as written
    <!-- runnable expect="TEXT" -->        ... and its output must contain TEXT
    <!-- not run by tests/test_readme.py: WHY (and which test covers it) -->

A block without a marker fails the test, so a new example cannot silently go untested. Runnable
python blocks run in a fresh interpreter (this test's), bash blocks under ``bash -euo pipefail``
with this interpreter's bin directory first on PATH (the ``nemo-vwn`` CLI of the same venv); both
in an empty temporary directory, so an example cannot depend on files of the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MARKER = re.compile(r"<!--\s*(runnable(?:\s+expect=\"(?P<expect>[^\"]*)\")?|not run by[^>]*)\s*-->",
                    re.DOTALL)
TIMEOUT_S = 900  # generous: the shared CPU test machine is slow to import megatron and Bridge


@dataclass
class Example:
    line: int  # 1-based line of the opening fence
    language: str  # "python" | "bash"
    code: str
    marker: Optional[str]  # "runnable", "not run ...", or None
    expect: Optional[str]

    @property
    def runnable(self) -> bool:
        return bool(self.marker and self.marker.startswith("runnable"))

    @property
    def name(self) -> str:
        return f"README.md:{self.line}:{self.language}"


def parse_examples(text: str) -> list[Example]:
    """The python/bash fenced blocks of a Markdown text, each with the marker just above it."""
    lines = text.splitlines()
    examples, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        ticks, language = fence.group(1), fence.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(ticks):
            end += 1
        if language in LANGUAGES:
            # the marker: the HTML comment ending on the last non-blank line before the fence
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = expect = None
            if j >= 0 and lines[j].rstrip().endswith("-->"):
                k = j
                while k > 0 and "<!--" not in lines[k]:
                    k -= 1
                found = MARKER.search("\n".join(lines[k : j + 1]))
                if found:
                    marker = " ".join(found.group(1).split())
                    expect = found.group("expect")
            examples.append(Example(i + 1, LANGUAGES[language], "\n".join(lines[i + 1 : end]),
                                    marker, expect))
        i = end + 1
    return examples


EXAMPLES = parse_examples(README.read_text(encoding="utf-8"))
RUNNABLE = [e for e in EXAMPLES if e.runnable]


def test_parser_reads_markers_and_blocks():
    text = (
        "<!-- runnable -->\n```python\nprint(1)\n```\n\n"
        "<!-- not run by tests/test_readme.py: too slow,\n     covered by tests/x.py -->\n"
        "```bash\nsleep 1000\n```\n"
        "```\nlayout, not code\n```\n"
        '<!-- runnable expect="hi" -->\n\n```sh\necho hi\n```\n'
        "```python\nunmarked()\n```\n"
    )
    got = [(e.line, e.language, e.code, e.marker, e.expect) for e in parse_examples(text)]
    assert got == [
        (2, "python", "print(1)", "runnable", None),
        (8, "bash", "sleep 1000",
         "not run by tests/test_readme.py: too slow, covered by tests/x.py", None),
        (16, "bash", "echo hi", 'runnable expect="hi"', "hi"),
        (19, "python", "unmarked()", None, None),
    ]


def test_every_example_is_marked():
    assert len(EXAMPLES) >= 8, "the README's examples were not found"
    unmarked = [e.name for e in EXAMPLES if e.marker is None]
    assert not unmarked, (
        "README code blocks without a marker (<!-- runnable --> or <!-- not run by "
        f"tests/test_readme.py: why, and which test covers it -->): {unmarked}"
    )
    for e in EXAMPLES:
        if not e.runnable:
            assert "test" in e.marker.split(":", 1)[-1], f"{e.name}: say which test covers it"


def test_the_megatron_core_and_apply_vwn_examples_are_runnable():
    runnable_code = "\n".join(e.code for e in RUNNABLE)
    assert "VWNGPTModel(" in runnable_code and "runtime.initialize()" in runnable_code
    assert "apply_vwn(" in runnable_code
    assert any(e.language == "bash" and "nemo-vwn recipes" in e.code for e in RUNNABLE)


def run_example(example: Example, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    if example.language == "python":
        command = [sys.executable, "-c", example.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", example.code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_readme_example_runs(example, tmp_path):
    result = run_example(example, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{example.name} failed (exit {result.returncode}):\n{example.code}\n--- output ---\n"
        + output[-6000:]
    )
    if example.expect is not None:
        assert example.expect in result.stdout, (
            f"{example.name}: expected {example.expect!r} in its output, got:\n"
            + result.stdout[-3000:]
        )
