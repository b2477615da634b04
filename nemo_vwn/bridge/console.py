"""What a CLI run prints: progress, checkpoint saves, validation and results on the console;
megatron's config dump, INFO logs and upstream warnings in a log file.

``route_output(log_path)`` sends everything the process (and the processes it starts) writes to
file descriptors 1 and 2 into ``log_path`` -- Python prints, logging handlers, C++ messages,
warnings -- and keeps the terminal for:

* ``echo(text)``: this package's own lines (the progress line of ``progress.ProgressRecorder``,
  the CLI's messages and tables);
* upstream lines that report on the run (``successfully saved checkpoint``, ``validation loss
  at``), copied to the console as well as written to the log;
* one-line errors ``nemo-vwn ...: error: ...`` printed by any of our modules.

``summary()`` condenses the upstream warnings that went into the log into one line (counts of
messages about running without CUDA / Transformer Engine / Apex, deprecation and experimental-API
notices, others). ``--verbose``
does not route (everything on the console, as before). Without routing ``echo`` is ``print``.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Optional

# Upstream stdout lines that say something about the run: copied to the console.
ECHO_PATTERNS = (re.compile(r"successfully saved checkpoint"), re.compile(r"validation loss at"))
OWN_PREFIX = "[nemo-vwn] "  # lines nemo-vwn prints itself while routed: always on the console too
# Our own one-line errors, wherever they are printed: always on the console (stderr).
ERROR_PATTERN = re.compile(r"nemo-vwn( [\w-]+)?: error: ")
# Upstream ERROR log records (e.g. a checkpoint writer's "[Errno 28] No space left on device").
UPSTREAM_ERROR = re.compile(r"^ERROR:[\w.]+:")
_WARNING_LINE = re.compile(r"(\b\w*Warning: )|(^W\d{4} )|(^WARNING[: ])")
# Expected on a machine without CUDA / Transformer Engine / Apex (torch fallbacks, the CPU shim).
_CPU_FALLBACK = re.compile(r"Transformer ?Engine|transformer-engine|[Aa]pex|APEX|No CUDA|CUDA_HOME|"
                           r"no accelerator|GPU RNG context")
_DEPRECATION = re.compile(r"[Dd]eprecat|FutureWarning|experimental")

_state: dict = {"console_out": None, "console_err": None, "log_path": None, "saved_fds": None,
                "label": "nemo-vwn"}


def echo(text: str = "", err: bool = False) -> None:
    """Print ``text`` on the terminal (also when the process's output is routed to a log)."""
    stream = _state["console_err" if err else "console_out"]
    if stream is None:
        stream = sys.stderr if err else sys.stdout
    print(text, file=stream, flush=True)


def log_path() -> Optional[str]:
    """The log file output is routed to, or None."""
    return _state["log_path"]


def last_upstream_error() -> Optional[str]:
    """The last upstream ERROR log record in this run's log (loggers write to fd 2 directly, so
    they bypass the line router): shown with an error whose own message is generic."""
    path = _state["log_path"]
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - (1 << 20)))
        lines = handle.read().decode("utf-8", "replace").splitlines()
    found = [line for line in lines if UPSTREAM_ERROR.match(line)]
    errno = [line for line in found if "[Errno " in line]  # the OS's own words, when there
    return (errno or found or [None])[-1]


def is_routed() -> bool:
    return _state["saved_fds"] is not None


class _LineRouter(io.TextIOBase):
    """``sys.stdout`` while routed: every line to the log, run-report lines also to the console."""

    def __init__(self, log):
        self._log = log
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.startswith(OWN_PREFIX):  # nemo-vwn's own messages (resume, stop, ...)
                echo(line.rstrip())
            elif any(p.search(line) for p in ECHO_PATTERNS):
                echo(f"[{_state['label']}] {line.strip()}")
            elif ERROR_PATTERN.match(line) or UPSTREAM_ERROR.match(line):
                echo(line, err=True)
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def fileno(self) -> int:
        return self._log.fileno()

    def isatty(self) -> bool:
        return False


def route_output(path: str, label: str = "nemo-vwn", python_stdout: bool = True) -> None:
    """Route fd 1/2 (and ``sys.stdout``/``sys.stderr``) into ``path`` (appended); idempotent.
    ``python_stdout=False``: this process's ``print()`` stays on the console (a command that
    prints its result), while the processes it starts and ``sys.stderr`` go to the log."""
    if is_routed():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    _state["console_out"] = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    _state["console_err"] = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log = open(path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    _state.update(saved_fds=saved, log_path=path, label=label, log=log,
                  streams=(sys.stdout, sys.stderr))
    if python_stdout:
        sys.stdout = _LineRouter(log)
    elif _is_fd(_state["streams"][0], 1):  # else a capture (pytest's capsys): keep it
        sys.stdout = _state["console_out"]
    sys.stderr = _LineRouter(log)


def _is_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def restore_output() -> None:
    """Undo ``route_output`` (the log file stays)."""
    if not is_routed():
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    sys.stdout, sys.stderr = _state["streams"]
    out, err = _state["saved_fds"]
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    _state["log"].close()
    for key in ("console_out", "console_err"):
        _state[key].close()
    _state.update(saved_fds=None, console_out=None, console_err=None, log=None)


def warning_counts(text: str) -> dict[str, int]:
    """Upstream warnings in a log's text, by kind: cpu_fallback / deprecation / other."""
    counts = {"cpu_fallback": 0, "deprecation": 0, "other": 0}
    for line in text.splitlines():
        if not _WARNING_LINE.search(line):
            continue
        kind = ("cpu_fallback" if _CPU_FALLBACK.search(line) else
                "deprecation" if _DEPRECATION.search(line) else "other")
        counts[kind] += 1
    return counts


def summary(path: Optional[str] = None) -> Optional[str]:
    """One line on the upstream warnings in the log (None without a log)."""
    path = path or log_path()
    if not path or not os.path.exists(path):
        return None
    with open(path, errors="replace") as handle:
        counts = warning_counts(handle.read())
    parts = []
    if counts["cpu_fallback"]:
        parts.append(f"{counts['cpu_fallback']} about running without CUDA/Transformer Engine/"
                     "Apex (torch fallbacks)")
    if counts["deprecation"]:
        parts.append(f"{counts['deprecation']} deprecation/experimental-API notices")
    if counts["other"]:
        parts.append(f"{counts['other']} other")
    hidden = ("upstream warnings: " + ", ".join(parts)) if parts else "no upstream warnings"
    return f"[nemo-vwn] {hidden}; megatron's full output: {path} (--verbose shows it here)"
