"""Move parameters and gradients between a TP/EP-sharded model and its unsharded twin (tests).

Megatron marks tensor-parallel parameters with ``tensor_model_parallel``, ``partition_dim`` and
``partition_stride``; a shard is the ``rank::tp_size`` selection of blocks of size
``(full / tp_size) / stride`` along ``partition_dim`` (as ``_initialize_affine_weight_cpu`` does).
Local experts ``local_experts.{i}`` on expert-parallel rank e are global experts
``e * num_local_experts + i``.
"""

from __future__ import annotations

import re
from typing import Optional

import torch
import torch.distributed as dist

_LOCAL_EXPERT = re.compile(r"local_experts\.(\d+)\.")


def global_expert_name(name: str, ep_rank: int, num_local_experts: Optional[int]) -> str:
    if not num_local_experts:
        return name
    return _LOCAL_EXPERT.sub(
        lambda m: f"local_experts.{ep_rank * num_local_experts + int(m.group(1))}.", name
    )


def _split_blocks(full: torch.Tensor, param, tp_size: int):
    dim = param.partition_dim
    stride = getattr(param, "partition_stride", 1)
    block = full.shape[dim] // tp_size // stride
    return torch.split(full, block, dim=dim), dim


def shard_of(full: torch.Tensor, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    """The slice of an unsharded tensor that ``param`` holds on ``tp_rank``."""
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    blocks, dim = _split_blocks(full, param, tp_size)
    return torch.cat(blocks[tp_rank::tp_size], dim=dim)


def unshard(local: torch.Tensor, param, group) -> torch.Tensor:
    """All-gather a TP-sharded tensor (a parameter or its gradient) into the unsharded tensor."""
    tp_size = dist.get_world_size(group) if group is not None else 1
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return local
    pieces = [torch.empty_like(local) for _ in range(tp_size)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    stride = getattr(param, "partition_stride", 1)
    dim = param.partition_dim
    per_rank = [torch.chunk(p, stride, dim=dim) for p in pieces]
    ordered = [per_rank[r][i] for i in range(stride) for r in range(tp_size)]
    return torch.cat(ordered, dim=dim)


def load_unsharded(model: torch.nn.Module, full_state: dict, tp_rank: int = 0, tp_size: int = 1,
                   ep_rank: int = 0, num_local_experts: Optional[int] = None,
                   names: Optional[dict] = None) -> None:
    """Copy an unsharded model's parameters into this rank's shard of ``model`` (strict).

    ``names`` maps local to unsharded names (pipeline stages: ``global_layer_names``)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = global_expert_name((names or {}).get(name, name), ep_rank, num_local_experts)
            if key not in full_state:
                raise KeyError(f"{key} missing from the unsharded state")
            param.copy_(shard_of(full_state[key], param, tp_rank, tp_size))


def unsharded_grads(model: torch.nn.Module, tp_group=None, ep_rank: int = 0,
                    num_local_experts: Optional[int] = None, names: Optional[dict] = None) -> dict:
    """{global name: unsharded grad} of this rank (experts: only the local ones)."""
    grads = {}
    for name, param in model.named_parameters():
        key = global_expert_name((names or {}).get(name, name), ep_rank, num_local_experts)
        grads[key] = unshard(param.grad.detach(), param, tp_group).clone()
    return grads


def allreduce_sequence_parallel_grads(model: torch.nn.Module, tp_group) -> int:
    """What Megatron's finalize_model_grads does for replicated params under SP.

    Returns the count.
    """
    count = 0
    for param in model.parameters():
        if getattr(param, "sequence_parallel", False) and param.grad is not None:
            dist.all_reduce(param.grad, group=tp_group)
            count += 1
    return count


_LOCAL_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def global_layer_names(model: torch.nn.Module) -> dict:
    """{stage-local parameter name: name in the unsharded model} for a pipeline stage/chunk.

    A stage's ``decoder.layers.{i}`` is global layer ``layers[i].layer_number - 1``.
    """
    numbers = [layer.layer_number - 1 for layer in model.decoder.layers]
    mapping = {}
    for name, _ in model.named_parameters():
        mapping[name] = _LOCAL_LAYER.sub(lambda m: f"decoder.layers.{numbers[int(m.group(1))]}.",
                                         name)
    return mapping
