"""The package layering contract (docs/architecture.md "Layering"), checked from the source.

Every ``import`` / ``from ... import`` / literal ``importlib.import_module("...")`` in the
repository's Python files is parsed with ``ast`` -- including the lazy imports inside functions,
which are dependencies all the same -- and held to four rules:

1. ranks: a module imports only modules of lower or equal rank (``RANKS``), and no two units of
   the same rank import each other in a cycle; ``nemo_vwn.patches`` imports only upstream and
   other patches.
2. ``nemo_vwn.testing`` is imported by ``tests/`` only (not by the library, benchmarks or scripts).
3. only ``nemo_vwn.runtime`` applies patches: elsewhere a patch module may be read
   (``is_applied()``, ``REASON``, ``APPLIES_TO``, other UPPERCASE constants) but not applied or
   used as a component (a permanent component belongs in the library, not in ``patches/``).
4. no private name (one leading underscore) of a nemo_vwn module is used by another module,
   neither ``from m import _x`` nor ``m._x``.

The checker is run on the repository and, to show that it catches what it should, on small
synthetic packages with one deliberate violation each.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Unit -> rank, low to high. A module's unit is the longest entry that is a prefix of its dotted
# name (``nemo_vwn.bridge.apply`` -> ``nemo_vwn.bridge``). A module may import its own and lower
# ranks. New top-level modules must be added here (an unranked module is reported).
RANKS = {
    "nemo_vwn.config": 0,
    "nemo_vwn.runtime": 1,
    "nemo_vwn.distributed": 1,
    "nemo_vwn.patches": 1,
    "nemo_vwn.kernels": 1,
    "nemo_vwn.ghc": 2,
    "nemo_vwn.layer": 3,
    "nemo_vwn.bias_dropout": 3,
    "nemo_vwn.norms": 3,
    "nemo_vwn.embedding": 4,
    "nemo_vwn.collapse": 4,
    "nemo_vwn.mtp": 4,
    "nemo_vwn.layer_specs": 4,
    "nemo_vwn.hybrid_specs": 4,
    "nemo_vwn.model": 4,
    "nemo_vwn.hybrid_model": 4,
    "nemo_vwn.optim": 4,
    "nemo_vwn.profiling": 4,
    "nemo_vwn.diagnostics": 4,
    "nemo_vwn.builders": 4,
    "nemo_vwn.results": 4,
    "nemo_vwn": 4,  # the package __init__: re-exports the public model API
    "nemo_vwn.bridge": 5,
    "nemo_vwn.convert": 5,
    "nemo_vwn.data": 5,
    "nemo_vwn.hf": 5,
    "nemo_vwn.evaluate": 5,
    "nemo_vwn.recipes": 6,
    "nemo_vwn.cli": 7,
    "nemo_vwn.convert.cli": 7,
    "nemo_vwn.data.cli": 7,
    "nemo_vwn.data.__main__": 7,  # ``python -m nemo_vwn.data``: the data CLI's entry point
}
TESTING = "nemo_vwn.testing"  # test support: may import anything; only tests/ import it
PATCHES = "nemo_vwn.patches"
RUNTIME = "nemo_vwn.runtime"
PATCH_READ_ONLY = {"is_applied", "REASON", "APPLIES_TO"}  # and UPPERCASE constants

# Source directory -> the dotted package its files are installed as (setup.py package_dir), and
# whether the files are library code (held to ranks) or entry scripts (only rules 2-4).
LAYOUT = (
    ("nemo_vwn", "nemo_vwn", True),
    ("patches", "nemo_vwn.patches", True),
    ("recipes", "nemo_vwn.recipes", True),
    ("benchmarks", "benchmarks", False),
    ("scripts", "scripts", False),
    (".", "", False),  # top-level files such as setup.py
)
SKIP_DIRS = {"tests", ".venv", ".ruff", ".git", "build", "dist", "runs", "outputs", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


@dataclasses.dataclass
class SourceFile:
    path: Path
    module: str  # dotted name as installed (``nemo_vwn.patches.cpu_runtime``)
    library: bool
    is_package: bool  # an __init__.py


def iter_sources(root: Path) -> Iterator[SourceFile]:
    for directory, package, library in LAYOUT:
        base = root / directory
        if not base.is_dir():
            continue
        if directory == ".":
            files = sorted(base.glob("*.py"))
        else:
            files = sorted(p for p in base.rglob("*.py")
                           if not SKIP_DIRS.intersection(p.relative_to(base).parts[:-1]))
        for path in files:
            rel = path.relative_to(base).with_suffix("").parts
            is_package = rel[-1] == "__init__"
            parts = [p for p in (package, *(rel[:-1] if is_package else rel)) if p]
            yield SourceFile(path, ".".join(parts), library, is_package)


def unit_of(module: str) -> Optional[str]:
    """The longest RANKS entry that is ``module`` or a package above it."""
    parts = module.split(".")
    for k in range(len(parts), 1, -1):
        candidate = ".".join(parts[:k])
        if candidate in RANKS:
            return candidate
    return module if module in RANKS else None  # "nemo_vwn" ranks its __init__ only


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def resolve_relative(src: SourceFile, level: int, module: Optional[str]) -> str:
    package = src.module.split(".") if src.is_package else src.module.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


@dataclasses.dataclass
class ImportRecord:
    target: str  # the module imported (``from pkg import sub``: pkg.sub when that is a module)
    line: int
    names: tuple[str, ...] = ()  # names taken from the module by ``from target import ...``


def collect_imports(tree: ast.AST, src: SourceFile, known: set[str]) -> list[ImportRecord]:
    """Every import in the file, module-level or inside functions/classes/try blocks."""
    records = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                records.append(ImportRecord(alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = (resolve_relative(src, node.level, node.module) if node.level
                    else node.module or "")
            plain = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # ``from nemo_vwn.patches import cpu_runtime``: a module
                    records.append(ImportRecord(sub, node.lineno))
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                records.append(ImportRecord(base, node.lineno, tuple(plain)))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _call_name(node.func) in {"import_module", "importlib.import_module"}):
            records.append(ImportRecord(node.args[0].value, node.lineno))
    return records


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_call_name(func.value)}.{func.attr}"
    return ""


def module_aliases(tree: ast.AST, src: SourceFile, known: set[str]) -> dict[str, str]:
    """Local name -> nemo_vwn module it is bound to (``import a.b as c``, ``from a import b``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = (resolve_relative(src, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    aliases[alias.asname or alias.name] = sub
    return {name: mod for name, mod in aliases.items() if is_under(mod, "nemo_vwn")}


def dotted(node: ast.AST) -> Optional[list[str]]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def attribute_uses(tree: ast.AST, aliases: dict[str, str], known: set[str]):
    """(module, attribute, line) for every ``alias.attr...`` whose alias is a nemo_vwn module.

    ``nemo_vwn.patches.cpu_runtime.apply`` resolves to (``nemo_vwn.patches.cpu_runtime``, apply).
    """
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None), ast.Del):
            continue
        chain = dotted(node)
        if not chain or chain[0] not in aliases:
            continue
        module, rest = aliases[chain[0]], chain[1:]
        # walk down submodules: nemo_vwn.patches.cpu_runtime.apply
        while len(rest) > 1 and f"{module}.{rest[0]}" in known:
            module, rest = f"{module}.{rest[0]}", rest[1:]
        if len(rest) == 1:  # only the innermost Attribute of a chain names a module's attribute
            yield module, rest[0], node.lineno


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check(root: Path) -> list[Violation]:
    """All layering violations of the tree at ``root`` (a repository laid out like this one)."""
    sources = list(iter_sources(root))
    known = {s.module for s in sources}
    violations: list[Violation] = []
    unit_edges: dict[str, dict[str, tuple[str, int]]] = {}

    for src in sources:
        rel = str(src.path.relative_to(root))
        tree = ast.parse(src.path.read_text(encoding="utf-8"), filename=rel)

        def report(line: int, rule: str, message: str) -> None:
            violations.append(Violation(rel, line, rule, message))

        own_unit = unit_of(src.module) if src.library else None
        in_testing = is_under(src.module, TESTING)
        if src.library and not in_testing and own_unit is None:
            report(1, "rank", f"{src.module} has no rank: add it to RANKS in "
                              "tests/test_layering.py and docs/architecture.md")
        imports = collect_imports(tree, src, known)
        for rec in imports:
            if not is_under(rec.target, "nemo_vwn"):
                continue
            # Rule 2: nemo_vwn.testing only from tests/.
            if is_under(rec.target, TESTING) and not in_testing:
                report(rec.line, "testing", f"{src.module or rel} imports {rec.target}: "
                                            "nemo_vwn.testing is for tests/ only")
                continue
            # Rule 4: private names across modules (from m import _x).
            for name in rec.names:
                if is_private(name) and rec.target != src.module:
                    report(rec.line, "private", f"imports private {rec.target}.{name}; "
                                                "make it public in its module")
            if not src.library or in_testing or own_unit is None:
                continue
            # Rule 1: ranks (and patches import only patches).
            target_unit = unit_of(rec.target)
            if target_unit is None or is_under(rec.target, TESTING):
                continue
            if own_unit == PATCHES and not is_under(rec.target, PATCHES):
                report(rec.line, "rank", f"patch module {src.module} imports {rec.target}: "
                                         "patches import only upstream and other patches")
            elif RANKS[target_unit] > RANKS[own_unit]:
                report(rec.line, "rank",
                       f"{src.module} (rank {RANKS[own_unit]}, {own_unit}) imports {rec.target} "
                       f"(rank {RANKS[target_unit]}, {target_unit})")
            if target_unit != own_unit:
                unit_edges.setdefault(own_unit, {}).setdefault(target_unit, (rel, rec.line))

        # Rule 3: only the runtime applies patches.
        applies_ok = src.module == RUNTIME or is_under(src.module, PATCHES)
        aliases = module_aliases(tree, src, known)
        for rec in imports:
            if applies_ok or not is_under(rec.target, PATCHES) or rec.target == PATCHES:
                continue
            for name in rec.names:  # from nemo_vwn.patches.x import apply / SomeComponent
                if name not in PATCH_READ_ONLY and not name.isupper():
                    report(rec.line, "patches",
                           f"uses {rec.target}.{name}: only nemo_vwn.runtime applies patches, "
                           "and permanent components do not live in patches/")
        for module, attr, line in attribute_uses(tree, aliases, known):
            if is_private(attr) and module != src.module:
                report(line, "private", f"uses private {module}.{attr}; make it public")
            if (not applies_ok and is_under(module, PATCHES) and module != PATCHES
                    and module in known and attr not in PATCH_READ_ONLY and not attr.isupper()):
                report(line, "patches",
                       f"uses {module}.{attr}: only nemo_vwn.runtime applies patches, and "
                       "permanent components do not live in patches/")

    # Rule 1b: no cycles between units (possible only among equal ranks once rule 1 holds).
    for cycle in unit_cycles(unit_edges):
        rel, line = unit_edges[cycle[0]][cycle[1]]
        violations.append(Violation(rel, line, "cycle", " -> ".join([*cycle, cycle[0]])))
    return sorted(set(violations), key=lambda v: (v.path, v.line, v.rule, v.message))


def unit_cycles(edges: dict[str, dict[str, tuple[str, int]]]) -> list[list[str]]:
    """One representative cycle per strongly connected component with more than one unit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        path, seen = [start], {start}
        while True:  # follow edges inside the component until the path closes
            nxt = sorted(w for w in edges.get(path[-1], {}) if w in members)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:
                break
            path.append(fresh[0])
            seen.add(fresh[0])
        cycles.append(path)
    return cycles


def format_violations(violations: Iterable[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


# ---------------------------------------------------------------------------------- the repo
def test_repository_follows_the_layering_contract():
    violations = check(ROOT)
    assert not violations, (
        f"{len(violations)} layering violation(s) (contract: docs/architecture.md, "
        "tests/test_layering.py):\n" + format_violations(violations)
    )


def test_every_library_module_has_a_rank():
    sources = [s for s in iter_sources(ROOT) if s.library and not is_under(s.module, TESTING)]
    assert len(sources) > 40  # the walk found the package (guards against a vacuous pass)
    unranked = [s.module for s in sources if unit_of(s.module) is None]
    assert not unranked, f"modules without a rank in RANKS: {unranked}"


# ------------------------------------------------------------------- the checker catches ...
def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for package in ("nemo_vwn", "patches", "recipes"):
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


CLEAN = {
    "nemo_vwn/config.py": "X = 1\n",
    "nemo_vwn/ghc.py": "from nemo_vwn.config import X\n",
    "nemo_vwn/layer.py": "from nemo_vwn import ghc\nfrom nemo_vwn.config import X\n",
    "nemo_vwn/runtime.py": (
        "def prepare_runtime():\n"
        "    from nemo_vwn.patches import cpu_runtime\n"
        "    cpu_runtime.apply()\n"
    ),
    "nemo_vwn/model.py": (
        "from nemo_vwn.patches import pipeline_shapes\n"
        "def check():\n"
        "    return pipeline_shapes.is_applied(), pipeline_shapes.REASON\n"
    ),
    "nemo_vwn/testing/__init__.py": "from nemo_vwn.model import check\n",
    "patches/cpu_runtime.py": "from nemo_vwn.patches import other\ndef apply():\n    pass\n",
    "patches/other.py": "def _helper():\n    pass\n",
    "patches/pipeline_shapes.py": "REASON = 'x'\ndef is_applied():\n    return True\n",
    "benchmarks/bench.py": "from nemo_vwn import runtime\nruntime.prepare_runtime()\n",
    "tests/test_x.py": "from nemo_vwn.testing import check\nfrom nemo_vwn.ghc import _private\n",
}

VIOLATIONS = {
    # name: (file, its text, rule expected, text expected in the message)
    "upward import in a function": (
        "nemo_vwn/ghc.py",
        "from nemo_vwn.config import X\ndef f():\n    from nemo_vwn.layer import Y\n",
        "rank", "nemo_vwn.ghc (rank 2, nemo_vwn.ghc) imports nemo_vwn.layer (rank 3"),
    "config imports upward through a relative import": (
        "nemo_vwn/config.py", "from .model import check\n", "rank", "imports nemo_vwn.model"),
    "library imports testing": (
        "nemo_vwn/layer.py", "import nemo_vwn.testing as t\n", "testing", "nemo_vwn.testing"),
    "benchmark imports testing": (
        "benchmarks/bench.py", "from nemo_vwn.testing import check\n", "testing",
        "nemo_vwn.testing is for tests/ only"),
    "benchmark imports testing by import_module": (
        "benchmarks/bench.py", "import importlib\nimportlib.import_module('nemo_vwn.testing')\n",
        "testing", "nemo_vwn.testing"),
    "a model module applies a patch": (
        "nemo_vwn/model.py",
        "def build():\n    from nemo_vwn.patches import cpu_runtime\n    cpu_runtime.apply()\n",
        "patches", "nemo_vwn.patches.cpu_runtime.apply"),
    "a patch applied through its dotted name": (
        "nemo_vwn/layer.py", "import nemo_vwn.patches.cpu_runtime\n"
                             "nemo_vwn.patches.cpu_runtime.apply()\n",
        "patches", "nemo_vwn.patches.cpu_runtime.apply"),
    "apply imported from a patch": (
        "benchmarks/bench.py", "from nemo_vwn.patches.cpu_runtime import apply\napply()\n",
        "patches", "nemo_vwn.patches.cpu_runtime.apply"),
    "a patch imports the library": (
        "patches/other.py", "from nemo_vwn.config import X\n", "rank",
        "patches import only upstream"),
    "a private name imported": (
        "nemo_vwn/layer.py", "from nemo_vwn.patches.other import _helper\n", "private",
        "nemo_vwn.patches.other._helper"),
    "a private attribute of a module": (
        "benchmarks/bench.py", "from nemo_vwn import ghc\nghc._read(1)\n", "private",
        "nemo_vwn.ghc._read"),
    "an unranked module": ("nemo_vwn/newthing.py", "X = 2\n", "rank", "has no rank"),
    "a cycle between equal ranks": (
        "nemo_vwn/bridge/__init__.py", "from nemo_vwn.convert import Z\n", "cycle",
        "nemo_vwn.bridge -> nemo_vwn.convert -> nemo_vwn.bridge"),
}


def test_checker_passes_a_clean_tree(tmp_path):
    root = write_tree(tmp_path, CLEAN)
    assert check(root) == []


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_checker_reports_a_violation(tmp_path, name):
    path, text, rule, expected = VIOLATIONS[name]
    files = dict(CLEAN, **{path: text})
    if rule == "cycle":
        files["nemo_vwn/convert/__init__.py"] = "Z = 1\nfrom nemo_vwn.bridge import Y\n"
    violations = check(write_tree(tmp_path, files))
    assert violations, f"{name}: not reported"
    matching = [v for v in violations if v.rule == rule and expected in v.message]
    got = format_violations(violations)
    assert matching, f"{name}: expected [{rule}] '{expected}', got:\n{got}"
    # the report points at the offending file (and, for imports, the offending line)
    assert any(v.path == path for v in matching) or rule == "cycle"
    if rule != "cycle" and "\n" in text.strip() and "def " in text:
        assert any(v.line > 1 for v in matching), "a lazy import is reported at its own line"
