"""A VWN GPT model and its stock Megatron twin from one config, plus synthetic batches.

For scripts, notebooks, benchmarks and tests that build models with Megatron-core directly (no
Megatron-Bridge): after ``nemo_vwn.runtime.initialize()``::

    model = build_vwn_gpt(vwn_config, vocab_size=32000, seq=2048)   # VWNGPTModel
    twin = build_stock_gpt(stock_config, vocab_size=32000, seq=2048)  # megatron's GPTModel
    tiny = vwn_config(n=4, m=2, hidden_size=128)   # a small CPU-safe config to try things on
    input_ids, position_ids, labels = random_batch(2, 2048, 32000)
    loss = model(input_ids, position_ids, causal_mask(2048), labels=labels)

Both use megatron's local (torch) modules unless ``use_transformer_engine`` is given.
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_vwn.runtime import CPU_MOE_SETTINGS, CPU_SAFE_SETTINGS

# A tiny CPU-safe backbone: the defaults of vwn_config / stock_config (any field can be overridden).
TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, normalization="RMSNorm",
            hidden_dropout=0.0, attention_dropout=0.0)


def tiny_kwargs(moe: bool = False, **overrides) -> dict:
    """TransformerConfig kwargs of a tiny CPU-safe model (MoE: 4 experts, top-2)."""
    kwargs = dict(CPU_SAFE_SETTINGS, **TINY)
    if moe:
        kwargs.update(CPU_MOE_SETTINGS, num_moe_experts=4, moe_router_topk=2,
                      moe_aux_loss_coeff=0.0, moe_ffn_hidden_size=64)
    kwargs.update(overrides)
    return kwargs


def vwn_config(n: int, m: int, moe: bool = False, **overrides):
    """A ``VWNConfig`` of the tiny backbone with r = n/m (fields overridable)."""
    from nemo_vwn.config import VWNConfig

    return VWNConfig(**tiny_kwargs(moe, virtual_width_n=n, virtual_width_m=m, **overrides))


def stock_config(moe: bool = False, **overrides):
    """The same backbone as megatron's ``TransformerConfig`` (no VWN): the baseline twin."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(**tiny_kwargs(moe, **overrides))


def build_vwn_gpt(config, vocab_size: int, seq: int, use_transformer_engine: Optional[bool] = False,
                  **kwargs):
    """``VWNGPTModel`` with the VWN decoder block spec (rope unless ``position_embedding_type``)."""
    from nemo_vwn.layer_specs import get_vwn_decoder_block_spec
    from nemo_vwn.model import VWNGPTModel

    kwargs.setdefault("position_embedding_type", "rope")
    spec = get_vwn_decoder_block_spec(config, use_transformer_engine=use_transformer_engine,
                                      vp_stage=kwargs.get("vp_stage"))
    return VWNGPTModel(config, spec, vocab_size=vocab_size, max_sequence_length=seq, **kwargs)


def build_stock_gpt(config, vocab_size: int, seq: int, use_transformer_engine: bool = False,
                    **kwargs):
    """megatron's ``GPTModel`` with upstream's decoder block spec: the baseline twin."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    kwargs.setdefault("position_embedding_type", "rope")
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_transformer_engine,
                                      normalization=config.normalization,
                                      vp_stage=kwargs.get("vp_stage"))
    return GPTModel(config, spec, vocab_size=vocab_size, max_sequence_length=seq, **kwargs)


def random_batch(batch_size: int, seq: int, vocab_size: int, seed: int = 0):
    """(input_ids [b, s], position_ids [b, s], labels [b, s]) from a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq + 1), generator=gen)
    position_ids = torch.arange(seq).unsqueeze(0).expand(batch_size, -1)
    return tokens[:, :-1].contiguous(), position_ids, tokens[:, 1:].contiguous()


def causal_mask(seq: int) -> torch.Tensor:
    """Megatron's boolean attention mask [1, 1, s, s]: True = masked out."""
    return torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
