"""Process set-up for megatron-core / Megatron-Bridge.

Shared by the library, CLI, benchmarks and tests.

Nothing here runs on import. The pieces, from the smallest up:

* ``CPU_SAFE_SETTINGS`` / ``CPU_MOE_SETTINGS`` / ``CPU_MODEL_SETTINGS``: the model settings a CPU
  run needs (no TE/apex kernels, fusions off, the allgather MoE dispatcher) -- the one copy.
* ``free_port()``, ``ensure_process_env()``: a rendezvous for a process not started by torchrun.
* ``prepare_runtime()``: the only place that applies ``nemo_vwn.patches`` (GPU: nothing but the
  pipeline shapes; CPU: the CPU shim and Bridge's CPU set-up); ``apply_pipeline_shapes()``,
  ``bridge_provides()`` and ``bridge_local_mtp_spec()`` for the patches applied where needed.
* ``init_process_group()``, ``set_parallel_layout()``, ``destroy_parallel_layout()``:
  torch.distributed (gloo on CPU, NCCL on GPU) and megatron's parallel state.
* ``initialize()`` / ``single_process()``: all of the above in one call, for a script or a
  notebook::

      from nemo_vwn import runtime
      runtime.initialize()          # 1 process; CPU or GPU; safe to call twice
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator, Optional

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

# Model-provider (Bridge) settings of every CPU run: the above plus megatron's local modules.
CPU_MODEL_SETTINGS = dict(
    CPU_SAFE_SETTINGS,
    transformer_impl="local",
    attention_backend="local",
    cross_entropy_loss_fusion=False,
)


def cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_runtime(bridge: bool = True) -> str:
    """Apply what this machine needs before megatron (and Bridge) are used; returns "cuda"/"cpu".

    GPU: nothing is patched but the pipeline shapes (Bridge modules are imported normally). CPU: the
    CPU runtime shim and, with ``bridge``, the Bridge import placeholders for TE/NVRx and Bridge's
    CPU setup patch, in that order (each needs the one before). Idempotent. Each patch checks the
    installed upstream versions against its APPLIES_TO when applied.
    """
    from nemo_vwn.patches import bridge_cpu, bridge_imports, cpu_runtime

    apply_pipeline_shapes()  # a real upstream gap on every machine (VWN models only)
    device = "cuda" if cuda_usable() else "cpu"
    if device == "cpu":
        cpu_runtime.apply()  # first: everything after it may touch torch.cuda
    if bridge:
        bridge_imports.apply()  # a plain import where TE/NVRx are installed
        if device == "cpu":
            bridge_cpu.apply()  # needs cpu_runtime and the imported Bridge modules
        allow_vwn_checkpoint_targets()
    return device


def apply_pipeline_shapes() -> None:
    """Pipeline stage boundaries sized for the wide state [s, b, D'] (``patches.pipeline_shapes``).

    Idempotent; needed by any VWN model with pipeline_model_parallel_size > 1 on any machine, so
    VWNGPTModel / VWNHybridModel call it themselves when built with PP > 1.
    """
    from nemo_vwn.patches import pipeline_shapes

    pipeline_shapes.apply()


def bridge_provides(model_class):
    """Context manager: Bridge's ``GPTModelProvider.provide()`` builds ``model_class`` instead of
    its hard-coded ``GPTModel`` while the block runs (``patches.bridge_provider``; scoped)."""
    from nemo_vwn.patches.bridge_provider import gpt_model_class

    return gpt_model_class(model_class)


def bridge_local_mtp_spec():
    """Context manager: Bridge builds its upstream MTP block from local modules while the block
    runs (its default MTP spec needs TE; ``patches.bridge_provider``; scoped)."""
    from nemo_vwn.patches.bridge_provider import local_mtp_block_spec

    return local_mtp_block_spec()


def allow_vwn_checkpoint_targets() -> None:
    """Let Bridge re-instantiate ``nemo_vwn.*`` classes (VWN and baseline-twin providers, the
    optimizer override) from a checkpoint's run config (it instantiates allowed prefixes only)."""
    try:
        from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix
    except ImportError:  # pragma: no cover - older Bridge without an allowlist
        return
    register_allowed_target_prefix("nemo_vwn.")


_PLAIN_LAUNCH = False  # set by ensure_process_env(): this process was not started by torchrun


def ensure_process_env() -> None:
    """Make a plain `python` launch look like a 1-process torchrun launch. Without RANK (not
    started by torchrun) an inherited MASTER_PORT belongs to another job -- e.g. the parent
    process's own rendezvous, still listening -- so this process gets a free port of its own.

    Such a launch is one process, so its process group is started here on an in-memory store
    (``init_process_group``): nothing binds that port, which no other process can then take first
    (EADDRINUSE); Bridge's initialisation finds the group started and uses it."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        global _PLAIN_LAUNCH
        _PLAIN_LAUNCH = True  # RANK etc. are ours now, not torchrun's: no rendezvous to keep
        init_process_group(rank=0, world_size=1)
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_process_group(rank: int = 0, world_size: int = 1, port: Optional[int] = None) -> bool:
    """Start torch.distributed (gloo on CPU, NCCL on GPU) unless it runs; True if started here.

    Processes meet at MASTER_ADDR:MASTER_PORT (TCPStore) when there is more than one, or a port is
    given or inherited from torchrun; a lone process uses an in-memory store and no port."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if cuda_usable() else "gloo"
    launched = "RANK" in os.environ and not _PLAIN_LAUNCH  # by torchrun (see ensure_process_env)
    inherited = os.environ.get("MASTER_PORT") if launched else None
    if world_size == 1 and not (port or inherited):
        # One process needs no rendezvous: an in-memory store, so no port is picked (a port from
        # free_port() can be taken by another process before TCPStore binds it: EADDRINUSE).
        dist.init_process_group(backend, rank=rank, world_size=1, store=dist.HashStore())
        return True
    os.environ["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port or inherited or free_port())
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return True


def set_parallel_layout(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
    virtual_pipeline_model_parallel_size: Optional[int] = None,
) -> None:
    """(Re)initialise megatron's process groups for a layout and reseed every RNG."""
    import torch
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
    (with two gloo threads each) until the process ends. A process that re-initialises often (a
    test session) accumulated thousands of threads, so the groups are destroyed here; the default
    (world) group stays.
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


def initialize(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    bridge: bool = False,
    port: Optional[int] = None,
) -> str:
    """Everything megatron-core needs before a model is built, in one call; returns "cuda"/"cpu".

    Applies the machine's patches, starts torch.distributed (1 process unless RANK/WORLD_SIZE say
    otherwise, as under torchrun) and sets the parallel layout and RNG seeds. Calling it again
    re-lays the parallel groups (the process group stays).
    """
    device = prepare_runtime(bridge=bridge)
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    init_process_group(rank=rank, world_size=world_size, port=port)
    set_parallel_layout(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        context_parallel_size=context_parallel_size,
        seed=seed,
    )
    return device


def shutdown() -> None:
    """Undo ``initialize()``: megatron's groups, then the default process group."""
    import torch.distributed as dist

    destroy_parallel_layout()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def single_process(seed: int = 1234) -> Iterator[None]:
    """torch.distributed + megatron's parallel state for one rank, torn down on exit unless they
    were already set up by the caller (then reused as they are). Used by the conversions."""
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    created_group = created_mpu = False
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError(f"expected one process, got world size {dist.get_world_size()}")
    else:
        created_group = init_process_group(rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
        created_mpu = True
    if created_group or created_mpu:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    try:
        yield
    finally:
        if created_mpu:
            destroy_parallel_layout()
        if created_group:
            dist.destroy_process_group()
