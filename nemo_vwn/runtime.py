"""Prepare this process for megatron-core / Megatron-Bridge: GPU as is, CPU through the patches.

Nothing here runs on import; entry points (CLI, benchmarks) call ``prepare_runtime()`` explicitly.
"""

from __future__ import annotations

import os

import torch


def prepare_runtime(bridge: bool = True) -> str:
    """Apply what this machine needs before megatron (and Bridge) are used; returns "cuda"/"cpu".

    GPU: nothing is patched (Bridge modules are imported normally). CPU: the CPU runtime shim and,
    with ``bridge``, the Bridge import placeholders for TE/NVRx and Bridge's CPU setup patch.
    """
    from nemo_vwn.patches import pipeline_shapes

    pipeline_shapes.apply()  # a real upstream gap on every machine (VWN models only)
    if torch.cuda.is_available():
        device = "cuda"
        if bridge:
            from nemo_vwn.patches import bridge_imports

            bridge_imports.apply()  # a plain import where TE/NVRx are installed
    else:
        device = "cpu"
        from nemo_vwn.patches import cpu_runtime

        cpu_runtime.apply()
        if bridge:
            from nemo_vwn.patches import bridge_cpu

            bridge_cpu.apply()
    if bridge:
        # Lets Bridge re-instantiate VWN providers from checkpoint run configs (allowlist).
        import nemo_vwn.bridge.provider  # noqa: F401
    return device


def ensure_process_env() -> None:
    """Make a plain `python` launch look like a 1-process torchrun launch."""
    from nemo_vwn.testing.cpu import free_port

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
