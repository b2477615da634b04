"""A context-parallel core attention for CPU tests (test scaffold, not a training kernel).

megatron-core's local ``DotProductAttention`` refuses ``context_parallel_size > 1`` (on GPUs
Transformer Engine's attention does CP). To test everything *around* attention under CP on a CPU
(the VWN wide state sharded along the sequence like the residual, RoPE slices, the loss, MTP's
roll across CP ranks), this module implements CP attention the simplest correct way:

* each CP rank holds the zig-zag chunks megatron assigns it (rank r: chunks r and 2*cp-1-r of
  2*cp equal chunks, ``get_batch_on_this_cp_rank``);
* keys and values are all-gathered over the CP group (backward: reduce-scatter of their grads);
* scores use the *global* positions of queries and keys for the causal mask.

Same constructor and forward signature as ``DotProductAttention`` ([sq, b, np, hn] in,
[sq, b, np*hn] out). Dropout is not supported (tests run without it).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core.transformer.module import MegatronModule
from torch import Tensor


def zigzag_positions(local_len: int, cp_rank: int, cp_size: int) -> Tensor:
    """Global positions of the tokens a CP rank holds (two chunks of local_len/2)."""
    chunk = local_len // 2
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    second = torch.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk)
    return torch.cat([first, second])


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 over a group; backward: reduce-scatter (sum) of the gradient."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        world = torch.distributed.get_world_size(group)
        pieces = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(pieces, tensor.contiguous(), group=group)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad):
        world = torch.distributed.get_world_size(ctx.group)
        rank = torch.distributed.get_rank(ctx.group)
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad.chunk(world, dim=0)[rank].contiguous(), None


class CPUContextParallelAttention(MegatronModule):
    """Causal self-attention over the full sequence with K/V all-gathered across CP ranks."""

    def __init__(self, config, layer_number: int, attn_mask_type=None, attention_type=None,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        if (attention_dropout if attention_dropout is not None else config.attention_dropout):
            raise ValueError("CPUContextParallelAttention is a test scaffold without dropout")
        from megatron.core import parallel_state

        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads = config.num_attention_heads // tp
        self.groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.cp_group = parallel_state.get_context_parallel_group()

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask=None,
                attn_mask_type=None, attention_bias=None, packed_seq_params=None) -> Tensor:
        # query [sq, b, np, hn]; key/value [sk, b, ng, hn] (this rank's zig-zag chunks)
        cp_size = torch.distributed.get_world_size(self.cp_group)
        cp_rank = torch.distributed.get_rank(self.cp_group)
        local = query.shape[0]
        q_pos = zigzag_positions(local, cp_rank, cp_size)
        k_pos = torch.cat([zigzag_positions(local, r, cp_size) for r in range(cp_size)])
        key = _GatherSequence.apply(key, self.cp_group)  # [cp*sk, b, ng, hn]
        value = _GatherSequence.apply(value, self.cp_group)
        if self.heads // self.groups > 1:
            key = key.repeat_interleave(self.heads // self.groups, dim=2)
            value = value.repeat_interleave(self.heads // self.groups, dim=2)
        scores = torch.einsum("qbnh,kbnh->bnqk", query.float(), key.float()) * self.scale
        allowed = k_pos[None, :] <= q_pos[:, None]  # causal by global position
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        context = torch.einsum("bnqk,kbnh->qbnh", probs, value)  # [sq, b, np, hn]
        return context.reshape(local, query.shape[1], -1)
