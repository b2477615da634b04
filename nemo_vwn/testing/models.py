"""Tiny GPT / GPT-MoE models (stock and VWN) and batches for tests and CPU runs."""

from __future__ import annotations

from typing import Optional

import torch

from nemo_vwn import builders
from nemo_vwn.builders import stock_config, tiny_kwargs, vwn_config  # noqa: F401

VOCAB = 128
SEQ = 16
TINY = builders.TINY


def build_vwn_gpt(config, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    return builders.build_vwn_gpt(config, vocab_size, seq, **kwargs)


def build_stock_gpt(config, vocab_size: int = VOCAB, seq: int = SEQ, **kwargs):
    return builders.build_stock_gpt(config, vocab_size, seq, **kwargs)


def make_batch(batch_size: int = 2, seq: int = SEQ, vocab_size: int = VOCAB, seed: int = 0):
    """(input_ids [b, s], position_ids [b, s], labels [b, s]) with a fixed generator."""
    return builders.random_batch(batch_size, seq, vocab_size, seed)


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
    return builders.causal_mask(seq)


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
