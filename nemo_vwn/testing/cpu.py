"""CPU/gloo set-up for tests: one call that applies the CPU shim and lays megatron's parallel state.

Everything here is a thin wrapper over the public ``nemo_vwn.runtime`` (the library never imports
``nemo_vwn.testing``); the names are kept for the test suite."""

from __future__ import annotations

from typing import Optional

from nemo_vwn.runtime import (  # noqa: F401  (re-exported for the tests)
    CPU_MOE_SETTINGS,
    CPU_SAFE_SETTINGS,
    destroy_parallel_layout,
    free_port,
    init_process_group,
    initialize,
    prepare_runtime,
    set_parallel_layout,
)


def init_cpu_distributed(
    rank: int = 0,
    world_size: int = 1,
    port: Optional[int] = None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
) -> None:
    """Apply the CPU shim, start gloo (if needed) and initialise megatron's parallel state + RNG."""
    initialize(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        context_parallel_size=context_parallel_size,
        seed=seed, rank=rank, world_size=world_size, port=port,
    )
