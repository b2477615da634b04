"""The repository passes ``ruff check`` with the configuration in pyproject.toml.

ruff is part of the development stack (requirements/cpu-dev.txt pins it), so a missing ruff is a
failure here, not a skip: a check that silently does not run would pass a dirty tree.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_ruff() -> list[str]:
    """The command running ruff: the one next to this interpreter (the test venv's), else the
    ruff package importable by it (``python -m ruff``), else the first ruff on PATH."""
    beside = shutil.which("ruff", path=os.path.dirname(sys.executable))
    if beside:
        return [beside]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    on_path = shutil.which("ruff")
    if on_path:
        return [on_path]
    raise AssertionError(
        f"ruff is not installed: not next to {sys.executable}, not importable by it, not on "
        "PATH. Install the pinned version from requirements/cpu-dev.txt (scripts/setup_env.sh "
        "does), e.g. `.venv/bin/python -m pip install -c requirements/constraints.txt ruff`."
    )


def test_pyproject_configures_ruff():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "[tool.ruff]" in text and "line-length = 100" in text
    for rule in ('"E"', '"F"', '"I"', '"W"'):
        assert rule in text, f"pyproject.toml's ruff selection lacks {rule}"


def test_ruff_check_passes():
    ruff = find_ruff()
    result = subprocess.run(
        [*ruff, "check", "--no-cache", "--output-format", "concise", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"`ruff check` found problems (fix the automatic ones with `{' '.join(ruff)} check "
        "--fix .`):\n"
        + result.stdout[-8000:] + result.stderr[-2000:]
    )
