"""Workarounds for what upstream (megatron-core / Megatron-Bridge) lacks, one module per gap.

Installed as ``nemo_vwn.patches`` (see setup.py ``package_dir``). Nothing here is applied on import,
and only ``nemo_vwn.runtime`` applies runtime patches (``prepare_runtime``, which also orders them).
Permanent components that VWN needs are library modules instead (e.g. ``nemo_vwn.norms``).

Each module defines REASON (one line: why it exists) and APPLIES_TO (``{distribution: specifier}``,
the upstream versions it was written and tested against, inside setup.py's ranges). Runtime patches
define ``apply()`` (idempotent; raises where it must not be applied) and ``is_applied()``; each
patch checks the installed versions when applied (``versions.check_installed``: a warning outside
the range, an error where a hook it replaces is gone).

Registry:
    cpu_runtime     runtime: megatron-core/Bridge assume CUDA; run them on CPU with gloo
    pipeline_shapes runtime: p2p buffers sized from hidden_size; VWN boundaries are D' wide
    bridge_imports  runtime: Bridge imports TE/NVRx unguarded (CPU machines)
    bridge_cpu      runtime: Bridge setup asserts CUDA / compiles helpers / warms CUDA JIT
    bridge_provider per call: GPTModelProvider.provide() hard-codes megatron's GPTModel
"""

from importlib import import_module

from nemo_vwn.patches.versions import format_applies_to

PATCHES = ("cpu_runtime", "pipeline_shapes", "bridge_imports", "bridge_cpu", "bridge_provider")


def describe() -> list[tuple[str, str, str]]:
    """(name, reason, versions) for every patch, for docs and `nemo-vwn patches`."""
    rows = []
    for name in PATCHES:
        mod = import_module(f"{__name__}.{name}")
        rows.append((name, mod.REASON, format_applies_to(mod.APPLIES_TO)))
    return rows


def read_table() -> list[tuple[str, str, str]]:
    """(name, reason, versions) of every patch, read from the patch modules' source: unlike
    ``describe``, it imports none of them (several import torch or megatron), for `nemo-vwn
    patches`."""
    import ast
    import importlib.util

    def literals(module: str) -> dict:
        with open(importlib.util.find_spec(module).origin) as handle:
            tree = ast.parse(handle.read())
        values = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                try:
                    values[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        return values

    rows = []
    for name in PATCHES:
        values = literals(f"{__name__}.{name}")
        versions = values.get("APPLIES_TO", "?")
        if isinstance(versions, dict):
            versions = format_applies_to(versions)
        rows.append((name, values.get("REASON", "?"), versions))
    return rows
