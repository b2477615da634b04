"""Workarounds for what upstream (megatron-core / Megatron-Bridge) lacks, one module per gap.

Installed as ``nemo_vwn.patches`` (see setup.py ``package_dir``). Nothing here is applied on import:
every patch is applied explicitly by the entry point that needs it (tests, the CPU path of the CLI).

Each module defines REASON (one line: why it exists) and APPLIES_TO (the upstream versions it was
written and tested against). Runtime patches also define ``apply()`` (idempotent; raises where it
must not be applied) and ``is_applied()``; drop-in modules are selected by the VWN layer specs.

Registry:
    cpu_runtime     runtime: megatron-core/Bridge assume CUDA; run them on CPU with gloo
    sp_torch_norm   drop-in: the local spec's torch norm refuses sequence parallelism
    pipeline_shapes runtime: p2p buffers sized from hidden_size; VWN boundaries are D' wide
    bridge_imports  runtime: Bridge imports TE/NVRx unguarded (CPU machines)
    bridge_cpu      runtime: Bridge setup asserts CUDA / compiles helpers / warms CUDA JIT
    bridge_provider runtime: GPTModelProvider.provide() hard-codes megatron's GPTModel
    hybrid_local_norm drop-in: HybridStack hard-codes TENorm as its final norm
"""

from importlib import import_module

PATCHES = ("cpu_runtime", "sp_torch_norm", "pipeline_shapes", "bridge_imports", "bridge_cpu",
           "bridge_provider", "hybrid_local_norm")


def describe() -> list[tuple[str, str, str]]:
    """(name, reason, versions) for every patch, for docs and `nemo-vwn patches`."""
    rows = []
    for name in PATCHES:
        mod = import_module(f"{__name__}.{name}")
        rows.append((name, mod.REASON, mod.APPLIES_TO))
    return rows
