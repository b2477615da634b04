"""Where the documents come from: the running interpreter's standard library, or user paths.

A *document* is one string that ends up as one record of the indexed dataset (EOD appended later).

* Default corpus: the ``.py`` sources of the running interpreter's standard library (code with its
  docstrings and comments), found through ``sysconfig``. Test directories and installed packages
  are skipped; files are taken in sorted relative-path order, so the selection is deterministic for
  a given Python build. It exists on every machine that runs Python, nothing is downloaded.
* User corpora: text files (one file = one document), JSONL files (one line = one document, the
  string in its ``"text"`` field), and directories searched recursively for those files.

Caps (``max_docs``, ``max_chars``) are applied in corpus order, so a capped corpus is a prefix of
the uncapped one.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from nemo_vwn.data.errors import CorpusError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
"""Suffixes of the files taken from a directory as plain-text documents."""

JSONL_SUFFIXES = (".jsonl",)
"""Suffixes read as JSONL (also when a file is named directly)."""

STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                              "__pycache__"})
"""Directory names whose contents never enter the default corpus."""

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Source:
    """One input file and how it is read: ``"text"`` (whole file) or ``"jsonl"`` (one per line)."""

    path: Path
    kind: str


def stdlib_dir() -> Path:
    """The standard-library directory of the running interpreter (``sysconfig`` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Optional[PathLike] = None) -> list[Path]:
    """The ``.py`` files of the standard library in sorted relative-path order, tests skipped.

    Raises:
        CorpusError: the directory does not exist or holds no ``.py`` sources (e.g. a Python
            build that ships only bytecode); pass a corpus path instead.
    """
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise CorpusError(f"the standard-library directory {str(root)!r} does not exist; "
                          "give corpus paths instead of the default corpus")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if hidden or STDLIB_SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        if path.is_file():
            files.append(path)
    if not files:
        raise CorpusError(f"no .py sources under the standard-library directory {str(root)!r} "
                          "(bytecode-only Python?); give corpus paths instead")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _kind_of(path: Path) -> str:
    return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"


def resolve_sources(paths: Sequence[PathLike]) -> list[Source]:
    """Expand user paths into sources: files as given, directories searched recursively.

    Files named directly are read whatever their suffix (``.jsonl`` as JSONL, anything else as
    text); inside directories only ``TEXT_SUFFIXES`` and ``JSONL_SUFFIXES`` are taken, in sorted
    relative-path order, hidden files and directories skipped.

    Raises:
        CorpusError: a path does not exist, or a directory holds no usable file.
    """
    sources: list[Source] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise CorpusError(f"corpus path {str(given)!r} does not exist "
                              "(expected a text file, a .jsonl file or a directory of them)")
        if path.is_dir():
            found = []
            for child in path.rglob("*"):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not child.is_file():
                    continue
                if child.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES:
                    found.append(child)
            if not found:
                allowed = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
                raise CorpusError(f"corpus directory {str(given)!r} holds no usable file "
                                  f"(looked for {allowed})")
            found.sort(key=lambda p: p.relative_to(path).as_posix())
            sources.extend(Source(p, _kind_of(p)) for p in found)
        elif path.is_file():
            sources.append(Source(path, _kind_of(path)))
        else:
            raise CorpusError(f"corpus path {str(given)!r} is neither a regular file nor a "
                              "directory")
    return sources


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "convert it to UTF-8 or leave it out") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc.strerror}") from exc


def iter_jsonl(path: Path, text_key: str = "text") -> Iterator[str]:
    """The ``text_key`` strings of a JSONL file, one per non-blank line.

    Raises:
        CorpusError: naming ``file:line`` for invalid JSON, a non-object line, a missing key or a
            non-string value.
    """
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc.strerror}") from exc
    with handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{where}: not valid JSON ({exc.msg}); each line of a "
                                      f"JSONL corpus must be an object with a {text_key!r} field"
                                      ) from exc
                if not isinstance(record, dict):
                    raise CorpusError(f"{where}: expected a JSON object with a {text_key!r} "
                                      f"field, got {type(record).__name__}")
                if text_key not in record:
                    keys = ", ".join(sorted(map(str, record))) or "none"
                    raise CorpusError(f"{where}: no {text_key!r} field (fields: {keys})")
                text = record[text_key]
                if not isinstance(text, str):
                    raise CorpusError(f"{where}: field {text_key!r} must be a string, got "
                                      f"{type(text).__name__}")
                yield text
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason}); convert the "
                              "file to UTF-8") from exc


class Corpus:
    """A deterministic, re-iterable sequence of documents (iterate it as often as needed).

    Args:
        paths: user corpus paths (files, JSONL, directories); ``None`` or empty means the default
            standard-library corpus.
        max_docs: keep at most this many documents (``None``: all).
        max_chars: keep at most this many characters in total; the document that crosses the cap
            is cut to fit and iteration stops (``None``: no cap).
        text_key: the JSONL field that holds the text.
        stdlib_root: override the standard-library directory (tests, other interpreters).

    Whitespace-only documents are skipped. Standard-library files that are not UTF-8 are skipped
    (counted in ``skipped``); in user corpora they are an error.

    Raises:
        CorpusError: at construction for missing paths, empty directories and bad caps; during
            iteration for unreadable or malformed files.
    """

    def __init__(self, paths: Optional[Sequence[PathLike]] = None, *,
                 max_docs: Optional[int] = None, max_chars: Optional[int] = None,
                 text_key: str = "text", stdlib_root: Optional[PathLike] = None) -> None:
        for name, value in (("max_docs", max_docs), ("max_chars", max_chars)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise CorpusError(f"{name} must be a positive integer or None, got {value!r}")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.max_docs = max_docs
        self.max_chars = max_chars
        self.text_key = text_key
        self.is_default = not paths
        if self.is_default:
            self.root: Optional[Path] = Path(stdlib_root) if stdlib_root else stdlib_dir()
            self.sources = [Source(p, "stdlib") for p in stdlib_files(self.root)]
        else:
            self.root = None
            self.sources = resolve_sources(paths)
        self.paths = [str(p) for p in (paths or [])]
        self.skipped = {"empty": 0, "not_utf8": 0}

    def _raw_documents(self) -> Iterator[str]:
        for source in self.sources:
            if source.kind == "jsonl":
                yield from iter_jsonl(source.path, self.text_key)
            elif source.kind == "stdlib":
                try:
                    yield source.path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    self.skipped["not_utf8"] += 1
            else:
                yield _read_text(source.path)

    def __iter__(self) -> Iterator[str]:
        """Yield the documents in corpus order with the caps applied."""
        self.skipped = {"empty": 0, "not_utf8": 0}
        docs = chars = 0
        for text in self._raw_documents():
            if not text.strip():
                self.skipped["empty"] += 1
                continue
            if self.max_docs is not None and docs >= self.max_docs:
                return
            if self.max_chars is not None and chars + len(text) >= self.max_chars:
                text = text[: self.max_chars - chars]
                if text.strip():
                    yield text
                return
            docs += 1
            chars += len(text)
            yield text

    def describe(self) -> dict:
        """A JSON-able description of what this corpus is (not what it yielded)."""
        caps = {"max_docs": self.max_docs, "max_chars": self.max_chars}
        if self.is_default:
            return {"kind": "python-stdlib", "root": str(self.root),
                    "python": sys.version.split()[0], "implementation": sys.implementation.name,
                    "files": len(self.sources), **caps}
        return {"kind": "paths", "paths": self.paths, "files": len(self.sources),
                "text_key": self.text_key, **caps}
