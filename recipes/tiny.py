"""Tiny CPU recipes (dense and MoE), each with its baseline twin. They train in minutes on 2 cores.

Backbone: 2 layers, D=64, 4 heads, RoPE, RMSNorm, SwiGLU-free GELU MLP; MoE: 4 experts, top-2.
VWN: (m, n) = (2, 4) (r = 2), DGHC, wide embedding, norm_linear collapse.
The twin is the same provider fields without VWN (GPTModelProvider, untied embeddings).
"""

from __future__ import annotations

from typing import Optional

from nemo_vwn.bridge.provider import VWNModelProvider
from nemo_vwn.recipes.common import (
    LocalGPTModelProvider,
    cpu_pretrain_container,
    stock_layer_spec,
)
from nemo_vwn.runtime import CPU_MODEL_SETTINGS, CPU_MOE_SETTINGS

TINY_BACKBONE = dict(
    num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
    normalization="RMSNorm", position_embedding_type="rope", hidden_dropout=0.0,
    attention_dropout=0.0, share_embeddings_and_output_weights=False,
)
TINY_MOE = dict(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64,
                moe_aux_loss_coeff=1e-2, **CPU_MOE_SETTINGS)
TINY_VWN = dict(virtual_width_m=2, virtual_width_n=4, ghc_dynamic=True)


def _provider(vwn: bool, moe: bool, **overrides):
    fields = dict(TINY_BACKBONE, **CPU_MODEL_SETTINGS, **(TINY_MOE if moe else {}))
    if vwn:
        return VWNModelProvider(**fields, **TINY_VWN, **overrides)
    return LocalGPTModelProvider(**fields, transformer_layer_spec=stock_layer_spec, **overrides)


def tiny_vwn_moe_cpu(output_dir: Optional[str] = None, train_iters: int = 100, **train):
    """Tiny VWN-MoE (r=2) for CPU."""
    return cpu_pretrain_container(_provider(True, True), "tiny_vwn_moe_cpu", output_dir,
                                  train_iters, **train)


def tiny_moe_cpu(output_dir: Optional[str] = None, train_iters: int = 100, **train):
    """Baseline twin of tiny_vwn_moe_cpu (VWN off)."""
    return cpu_pretrain_container(_provider(False, True), "tiny_moe_cpu", output_dir,
                                  train_iters, **train)


def tiny_vwn_dense_cpu(output_dir: Optional[str] = None, train_iters: int = 100, **train):
    """Tiny dense VWN GPT (r=2) for CPU."""
    return cpu_pretrain_container(_provider(True, False), "tiny_vwn_dense_cpu", output_dir,
                                  train_iters, **train)


def tiny_dense_cpu(output_dir: Optional[str] = None, train_iters: int = 100, **train):
    """Baseline twin of tiny_vwn_dense_cpu (VWN off)."""
    return cpu_pretrain_container(_provider(False, False), "tiny_dense_cpu", output_dir,
                                  train_iters, **train)
