"""The upstream versions each patch was written for, checked against what is installed.

Every patch module declares ``APPLIES_TO``: ``{distribution name: PEP 440 specifier}``, e.g.
``{"megatron-core": ">=0.19,<0.20"}`` (the ranges lie inside setup.py's install_requires/extras;
tests/patches/test_versions.py checks that). ``check_installed`` runs when a patch is applied:
outside the range it warns once per patch (the patch may still fit, but nobody checked), or raises
where the caller knows the patch would break. A package that is not installed is not checked (the
patch's own import then fails with its own message).
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Mapping, Optional

from packaging.specifiers import SpecifierSet
from packaging.version import Version

_warned: set[str] = set()


class UpstreamVersionWarning(UserWarning):
    """An installed upstream package is outside the range a patch was written for."""


class UpstreamVersionError(RuntimeError):
    """A patch cannot work with the installed upstream package (it would break)."""


def installed_version(package: str) -> Optional[str]:
    """The installed version of distribution ``package``, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def format_applies_to(applies_to: Mapping[str, str]) -> str:
    """``{"megatron-core": ">=0.19,<0.20"}`` -> ``"megatron-core>=0.19,<0.20"`` (for listings)."""
    return ", ".join(f"{package}{spec}" for package, spec in applies_to.items())


def mismatches(applies_to: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(package, installed version, range) for every installed package outside its range."""
    found = []
    for package, spec in applies_to.items():
        version = installed_version(package)
        if version is not None and Version(version) not in SpecifierSet(spec):
            found.append((package, version, spec))
    return found


def check_installed(patch: str, applies_to: Mapping[str, str], strict: bool = False) -> None:
    """Warn (once per patch) or, with ``strict``, raise when installed versions are out of range."""
    found = mismatches(applies_to)
    if not found:
        return
    listing = "; ".join(f"{pkg} {version} is installed, the patch covers {pkg}{spec}"
                        for pkg, version, spec in found)
    message = (f"nemo_vwn.patches.{patch}: {listing}. Check whether upstream still has the gap "
               f"this patch works around (see its REASON), then update its APPLIES_TO.")
    if strict:
        raise UpstreamVersionError(message)
    if patch not in _warned:
        _warned.add(patch)
        warnings.warn(message, UpstreamVersionWarning, stacklevel=3)


def require_attributes(patch: str, module, names: tuple[str, ...]) -> None:
    """Raise when ``module`` lacks a name the patch replaces (upstream changed: it would break)."""
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        package = "megatron-bridge" if module.__name__.startswith("megatron.bridge") else (
            "megatron-core")
        raise UpstreamVersionError(
            f"nemo_vwn.patches.{patch}: {module.__name__} has no {', '.join(missing)}; the "
            f"installed {package} {installed_version(package)} changed where this patch hooks in "
            "(update the patch, or install a version inside its APPLIES_TO)"
        )
