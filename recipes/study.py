"""The token-efficiency study's model (issue "Evidence"): a small GPT-MoE and its VWN variants.

One backbone, trained on the local corpus of ``nemo-vwn data`` with the same data order, tokens
and seed for every variant; the VWN variant differs only in the VWN fields (set per run by
``benchmarks/token_efficiency.py`` through overrides: (m, n), collapse, MTP).

CPU preset (2 cores, about 90 minutes for the whole study): 4 layers, D=128, 4 heads, 8 experts
top-2 (expert FFN 256), sequence 128, global batch 16, local attention/MoE modules, fp32.
GPU preset (one H100/H200): 8 layers, D=512, 8 heads, 16 experts top-2 (expert FFN 512),
sequence 512, global batch 64, Transformer Engine when importable, bf16.
[choice] m: the CPU preset defaults to (m, n) = (2, 4) — at D=128 GHC's per-token work (~n*r*D)
outweighs the backbone's (~D^2) with the paper's m=8 (an r=8 step measured 5.2 s vs the baseline's
0.4 s; with m=2 it is 1.09 s); the GPU preset keeps the paper's A0.8B choice m=8, (8, 16).
1.5x uses (2, 3) with the linear collapse (the grouped norm needs integer r).
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

CPU_BACKBONE = dict(
    num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512,
    normalization="RMSNorm", position_embedding_type="rope", hidden_dropout=0.0,
    attention_dropout=0.0, share_embeddings_and_output_weights=False,
    num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=256, moe_aux_loss_coeff=1e-2,
    **CPU_MOE_SETTINGS,
)
CPU_TRAINING = dict(train_iters=600, global_batch_size=16, micro_batch_size=8, seq_length=128,
                    lr=2e-3, min_lr=2e-4, warmup_iters=30, eval_interval=100)
STUDY_VWN_CPU = dict(virtual_width_m=2, virtual_width_n=4, ghc_dynamic=True)
STUDY_VWN_GPU = dict(virtual_width_m=8, virtual_width_n=16, ghc_dynamic=True)


def _provider(vwn: bool, **overrides):
    fields = dict(CPU_BACKBONE, **CPU_MODEL_SETTINGS)
    if vwn:
        return VWNModelProvider(**fields, **STUDY_VWN_CPU, **overrides)
    return LocalGPTModelProvider(**fields, transformer_layer_spec=stock_layer_spec, **overrides)


def study_vwn_moe_cpu(output_dir: Optional[str] = None, **train):
    """Token-efficiency study, CPU preset: VWN-MoE (r=2 by default; the study overrides (m, n))."""
    return cpu_pretrain_container(_provider(True), "study_vwn_moe_cpu", output_dir,
                                  **{**CPU_TRAINING, **train})


def study_moe_cpu(output_dir: Optional[str] = None, **train):
    """Baseline twin of study_vwn_moe_cpu (VWN off)."""
    return cpu_pretrain_container(_provider(False), "study_moe_cpu", output_dir,
                                  **{**CPU_TRAINING, **train})


GPU_BACKBONE = dict(
    num_layers=8, hidden_size=512, num_attention_heads=8, ffn_hidden_size=2048,
    normalization="RMSNorm", position_embedding_type="rope", hidden_dropout=0.0,
    attention_dropout=0.0, share_embeddings_and_output_weights=False,
    num_moe_experts=16, moe_router_topk=2, moe_ffn_hidden_size=512, moe_aux_loss_coeff=1e-2,
    moe_token_dispatcher_type="alltoall", moe_grouped_gemm=True, add_bias_linear=False,
    transformer_impl="transformer_engine",
)
GPU_TRAINING = dict(train_iters=4000, global_batch_size=64, micro_batch_size=16, seq_length=512,
                    lr=1e-3, min_lr=1e-4, warmup_iters=200, vocab_size=8192, eval_interval=250,
                    save_interval=4000)


def _gpu_provider(vwn: bool):
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    if vwn:
        return VWNModelProvider(**GPU_BACKBONE, **STUDY_VWN_GPU, ghc_recompute=True)
    return GPTModelProvider(**GPU_BACKBONE)


def study_vwn_moe_gpu(output_dir: Optional[str] = None, **train):
    """Token-efficiency study, GPU preset (one H100/H200): VWN-MoE, r=2 by default."""
    from nemo_vwn.recipes.common import h100_pretrain_container

    return h100_pretrain_container(_gpu_provider(True), "study_vwn_moe_gpu", output_dir,
                                   **{**GPU_TRAINING, **train})


def study_moe_gpu(output_dir: Optional[str] = None, **train):
    """Baseline twin of study_vwn_moe_gpu (VWN off)."""
    from nemo_vwn.recipes.common import h100_pretrain_container

    return h100_pretrain_container(_gpu_provider(False), "study_moe_gpu", output_dir,
                                   **{**GPU_TRAINING, **train})
