"""Set up megatron-core on CPU with gloo, in one process: tests, CPU benchmarks, the tiny recipes."""

from __future__ import annotations

import os
import socket
from typing import Optional

import torch

# TransformerConfig settings needed on CPU (no TE/apex kernels, no fused CUDA ops).
CPU_SAFE_SETTINGS = dict(
    use_cpu_initialization=True,
    gradient_accumulation_fusion=False,
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    masked_softmax_fusion=False,
    persist_layer_norm=False,
    apply_rope_fusion=False,
)

# MoE settings that work on CPU: the alltoall dispatcher creates CUDA streams; expert biases trip
# an in-place autograd error in the local experts (megatron-notes.md).
CPU_MOE_SETTINGS = dict(moe_token_dispatcher_type="allgather", add_bias_linear=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    from nemo_vwn.patches import cpu_runtime

    cpu_runtime.apply()
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port or os.environ.get("MASTER_PORT") or free_port())
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    set_parallel_layout(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        context_parallel_size=context_parallel_size,
        seed=seed,
    )


def set_parallel_layout(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
    virtual_pipeline_model_parallel_size: Optional[int] = None,
) -> None:
    """(Re)initialise megatron's process groups for a layout and reseed every RNG."""
    from megatron.core import parallel_state, tensor_parallel

    destroy_parallel_layout()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        context_parallel_size=context_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_parallel_layout() -> None:
    """Undo ``initialize_model_parallel``, releasing its process groups.

    megatron's ``destroy_model_parallel`` only forgets its ~20 groups; torch keeps every one alive
    (with two gloo threads each) until the process ends. A pytest process that re-initialises for
    every test accumulated ~5000 threads and slowed the whole machine, so the groups are destroyed
    here; the default (world) group stays.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        world = dist.GroupMember.WORLD
        for group in list(dist.distributed_c10d._world.pg_map):
            if group is not world:
                dist.destroy_process_group(group)
