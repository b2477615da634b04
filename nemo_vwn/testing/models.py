"""Tiny GPT / GPT-MoE models (stock and VWN) and batches for tests and CPU runs."""

from __future__ import annotations

from typing import Optional

import torch

from nemo_vwn.testing.cpu import CPU_MOE_SETTINGS, CPU_SAFE_SETTINGS

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, normalization="RMSNorm",
            hidden_dropout=0.0, attention_dropout=0.0)
VOCAB = 128
SEQ = 16


def tiny_kwargs(moe: bool = False, **overrides) -> dict:
    """TransformerConfig kwargs of a tiny CPU-safe model (MoE: 4 experts, top-2)."""
    kwargs = dict(CPU_SAFE_SETTINGS, **TINY)
    if moe:
        kwargs.update(CPU_MOE_SETTINGS, num_moe_experts=4, moe_router_topk=2,
                      moe_aux_loss_coeff=0.0, moe_ffn_hidden_size=64)
    kwargs.update(overrides)
    return kwargs


def vwn_config(n: int, m: int, moe: bool = False, **overrides):
    from nemo_vwn import VWNConfig

    return VWNConfig(**tiny_kwargs(moe, virtual_width_n=n, virtual_width_m=m, **overrides))


def stock_config(moe: bool = False, **overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(**tiny_kwargs(moe, **overrides))


def build_vwn_gpt(config, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    from nemo_vwn import VWNGPTModel, get_vwn_decoder_block_spec

    kwargs.setdefault("position_embedding_type", "rope")
    spec = get_vwn_decoder_block_spec(config, use_transformer_engine=False,
                                      vp_stage=kwargs.get("vp_stage"))
    return VWNGPTModel(config, spec, vocab_size=vocab_size, max_sequence_length=seq, **kwargs)


def build_stock_gpt(config, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    kwargs.setdefault("position_embedding_type", "rope")
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False,
                                      normalization=config.normalization,
                                      vp_stage=kwargs.get("vp_stage"))
    return GPTModel(config, spec, vocab_size=vocab_size, max_sequence_length=seq, **kwargs)


def make_batch(batch_size: int = 2, seq: int = SEQ, vocab_size: int = VOCAB, seed: int = 0):
    """(input_ids [b, s], position_ids [b, s], labels [b, s]) with a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq + 1), generator=gen)
    position_ids = torch.arange(seq).unsqueeze(0).expand(batch_size, -1)
    return tokens[:, :-1].contiguous(), position_ids, tokens[:, 1:].contiguous()


def pattern_batch(batch_size: int, seq: int = SEQ, vocab_size: int = VOCAB,
                  generator: Optional[torch.Generator] = None):
    """A learnable stream: next token = (3 * token + 1) mod vocab, random start per row."""
    start = torch.randint(0, vocab_size, (batch_size, 1), generator=generator)
    tokens = [start]
    for _ in range(seq):
        tokens.append((3 * tokens[-1] + 1) % vocab_size)
    tokens = torch.cat(tokens, dim=1)
    position_ids = torch.arange(seq).unsqueeze(0).expand(batch_size, -1)
    return tokens[:, :-1].contiguous(), position_ids, tokens[:, 1:].contiguous()


def causal_mask(seq: int = SEQ) -> torch.Tensor:
    """Megatron's boolean mask [1, 1, s, s]: True = masked out."""
    return torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_vwn_hybrid(config, pattern: str, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    """A VWNHybridModel from the local VWN hybrid stack (``pattern`` like "*-*E")."""
    from nemo_vwn import VWNHybridModel, get_vwn_hybrid_stack_spec

    kwargs.setdefault("position_embedding_type", "rope")
    return VWNHybridModel(config, get_vwn_hybrid_stack_spec(use_transformer_engine=False),
                          vocab_size=vocab_size, max_sequence_length=seq,
                          hybrid_layer_pattern=pattern, **kwargs)


def build_stock_hybrid(config, pattern: str, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    """megatron's HybridModel from local modules (the TE-free stack of nemo_vwn.hybrid_specs)."""
    from megatron.core.models.hybrid.hybrid_model import HybridModel

    from nemo_vwn.hybrid_specs import local_hybrid_stack_spec

    kwargs.setdefault("position_embedding_type", "rope")
    return HybridModel(config, local_hybrid_stack_spec(normalization=config.normalization),
                       vocab_size=vocab_size, max_sequence_length=seq,
                       hybrid_layer_pattern=pattern, **kwargs)
