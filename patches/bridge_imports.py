"""Import Megatron-Bridge on a machine without Transformer Engine / nvidia-resiliency-ext.

megatron-bridge 0.6 imports ``transformer_engine`` at module level in modules every training run
pulls in (``peft/lora_layers.py`` via the conversion package, several model providers) and
``nvidia_resiliency_ext.inprocess.CallWrapper`` in ``training/pretrain.py`` (only used as a type
and for in-process restart). Neither installs on a CPU machine. This patch imports Bridge with
placeholder modules standing in for the missing packages *only during that import*, then removes
them again so ``import transformer_engine`` keeps failing elsewhere: megatron-core's own feature
checks (``HAVE_TE``) stay False, and any attempt to *use* a placeholder raises an ImportError that
names the missing package.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import types

from nemo_vwn.patches import versions

REASON = (
    "megatron-bridge imports transformer_engine and nvidia_resiliency_ext unguarded; "
    "import it with "
    "placeholders when they are absent (CPU machines), without making megatron-core think TE exists"
)
APPLIES_TO = {"megatron-bridge": ">=0.6,<0.7", "megatron-core": ">=0.19,<0.20"}

OPTIONAL_PACKAGES = ("transformer_engine", "nvidia_resiliency_ext")

# Bridge modules a VWN training run imports; importing them is what apply() does.
BRIDGE_MODULES = (
    "megatron.bridge",
    "megatron.bridge.models.gpt_provider",
    "megatron.bridge.training.config",
    "megatron.bridge.training.gpt_step",
    "megatron.bridge.training.pretrain",
    "megatron.bridge.training.utils.omegaconf_utils",
)

_state = {"applied": False, "placeholders_used": ()}


class _MissingMeta(type):
    """Attribute access on a placeholder class yields another placeholder.

    E.g. ``te.ops.Sequential``.
    """

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _MissingMeta(attr, (_Missing,), {"_package": cls._package})
        setattr(cls, attr, value)
        return value


class _Missing(metaclass=_MissingMeta):
    """A stand-in for any attribute of a missing package: usable as a base class or annotation,
    failing loudly when instantiated or called."""

    _package = "?"

    def __init__(self, *args, **kwargs):
        raise ImportError(f"{self._package} is not installed; this code path needs it")


class _PlaceholderModule(types.ModuleType):
    def __init__(self, name: str, package: str):
        super().__init__(name)
        self.__path__ = []  # behaves as a package so submodules import
        self.__placeholder_for__ = package

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _MissingMeta(attr, (_Missing,), {"_package": self.__placeholder_for__})
        setattr(self, attr, value)
        return value


def _importer_name() -> str:
    """The module whose code runs the current import statement (import machinery skipped)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith(("importlib", "_frozen_importlib")) or name == __name__):
            return name
        frame = frame.f_back
    return ""


class _PlaceholderFinder:
    """Meta-path finder serving placeholder modules for the missing packages, to Bridge only."""

    def __init__(self, packages, importer_prefix: str = "megatron.bridge"):
        self.packages = tuple(packages)
        self.importer_prefix = importer_prefix

    def find_spec(self, fullname, path=None, target=None):
        root = fullname.split(".")[0]
        if root in self.packages and (
            root in sys.modules or _importer_name().startswith(self.importer_prefix)
        ):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return _PlaceholderModule(spec.name, spec.name.split(".")[0])

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def _drop_te_probe_records(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (record.levelno <= logging.INFO and message.startswith("Import of")
                and "transformer_engine" in message)


def _missing_packages() -> list[str]:
    return [p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is None]


@contextlib.contextmanager
def placeholders_for(packages):
    """Serve placeholder modules for ``packages`` inside the block; remove them afterwards."""
    finder = _PlaceholderFinder(packages)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in list(sys.modules):
            if name.split(".")[0] in finder.packages and isinstance(sys.modules[name],
                                                                     _PlaceholderModule):
                del sys.modules[name]


def _import_with_placeholders(name: str, missing) -> None:
    # First without placeholders: every module that imports cleanly (megatron-core's included,
    # which decide HAVE_TE at import) is imported for real and stays imported. Only what fails on a
    # missing optional package is retried with placeholders, served to megatron.bridge importers.
    try:
        importlib.import_module(name)
        return
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in missing:
            raise
    with placeholders_for(missing):
        importlib.import_module(name)


def apply() -> None:
    """Import the Bridge modules VWN training uses (idempotent)."""
    if _state["applied"]:
        return
    versions.check_installed("bridge_imports", APPLIES_TO)
    missing = _missing_packages()
    if missing:
        # Bridge logs each probe of an absent TE symbol with a full traceback at INFO level (and
        # later resets logger levels), so drop exactly those records with a filter.
        logging.getLogger("megatron.bridge.utils.import_utils").addFilter(_drop_te_probe_records)
    _apply(missing)
    _state["applied"] = True


def _apply(missing) -> None:
    if missing:
        before = set(sys.modules)
        for name in BRIDGE_MODULES:
            _import_with_placeholders(name, missing)
        fooled = [
            name for name in set(sys.modules) - before
            if name.startswith("megatron.core") and getattr(sys.modules[name], "HAVE_TE", False)
        ]
        if fooled:
            raise RuntimeError(
                f"placeholder transformer_engine leaked into megatron-core: {fooled}")
    else:
        for name in BRIDGE_MODULES:
            importlib.import_module(name)
    _state["placeholders_used"] = tuple(missing)


def is_applied() -> bool:
    return bool(_state["applied"])
