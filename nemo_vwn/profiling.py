"""Deterministic cost measurements: parameter counts and activation bytes saved for backward.

``saved_activation_bytes`` counts the distinct storages autograd keeps for the backward pass of one
forward (parameters excluded): the activation memory a training step holds at its peak, minus
transient buffers. It needs no GPU and gives the same number every run, so VWN vs baseline and
recompute on vs off can be compared exactly (wall-clock and peak-allocator numbers come from the
benchmarks on real hardware).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def count_saved_tensors(model: torch.nn.Module):
    """Within the block, record {storage pointer: bytes} of every tensor saved for backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen[key] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield seen


def saved_activation_bytes(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of activations saved for backward by ``forward()`` (run once, then backward)."""
    with count_saved_tensors(model) as seen:
        loss = forward()
    total = sum(seen.values())
    loss.float().sum().backward()
    return total


# ---------------------------------------------------------------------------------- FLOPs
def ghc_flops_per_token(hidden_size: int, n: int, m: int, dynamic: bool = True) -> dict:
    """Forward FLOPs per token of one GHC (read + write), docs/method.md §6 (paper Sec 3.5).

    With r = n/m and D = hidden_size: norm 4rD (dynamic only; not a matmul), dynamic coefficients
    2(2m+n)rD (RMSNorm_d(H) @ [W_alpha | W_beta]), width connection 2(m+n)rD (Aᵀ H) and depth
    connection 2nD (Bᵀ Z). A GHC-wrapped layer has two GHCs (attention and MLP).
    """
    r = n / m
    parts = {
        "norm": 4 * r * hidden_size if dynamic else 0.0,
        "dynamic_coefficients": 2 * (2 * m + n) * r * hidden_size if dynamic else 0.0,
        "width_connection": 2 * (m + n) * r * hidden_size,
        "depth_connection": 2 * n * hidden_size,
    }
    parts["total"] = sum(parts.values())
    return parts


def backbone_flops_per_token(config, seq_length: int) -> float:
    """Forward FLOPs per token of one stock transformer layer's matmuls (attention + MLP/MoE).

    Linear layers: 2 x (their weights a token meets); attention scores and values: 4 x seq x
    (heads x head_dim) as an unfused kernel computes them (a causal flash kernel does about half).
    MoE: the router (2 D E) plus top-k experts per token (shared experts included).
    """
    D = config.hidden_size
    head_dim = config.kv_channels or D // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = (config.num_query_groups or config.num_attention_heads) * head_dim
    attention = 2 * D * (q_width + 2 * kv_width) + 2 * q_width * D + 4 * seq_length * q_width
    gate = 2 if config.gated_linear_unit else 1

    def ffn(width):
        return 2 * D * width * gate + 2 * width * D

    if config.num_moe_experts:
        mlp = 2 * D * config.num_moe_experts + config.moe_router_topk * ffn(
            config.moe_ffn_hidden_size)
        if config.moe_shared_expert_intermediate_size:
            mlp += ffn(config.moe_shared_expert_intermediate_size)
    else:
        mlp = ffn(config.ffn_hidden_size)
    return float(attention + mlp)
