"""The VWN paper's model configurations (arXiv 2511.11238, paper Sec 5) as Megatron-Bridge recipes.

The paper names its models only by activated/total size; it does not publish layer counts, widths,
expert counts, learning rates or batch sizes. Each configuration below therefore takes its shape
from a well-known open MoE model of that size (sources named per field in ``PAPER_MODELS``) and,
where no open model has that size, solves depth/expert width for the paper's numbers. Parameter
counts include the embedding table and the LM head (untied), the convention under which OLMoE-1B-7B
has 1.28B activated / 6.92B total and Qwen3-30B-A3B 3.35B / 30.5B; ``nemo_vwn.bridge.params``
computes them from the fields (``tests/bridge/test_paper_recipes.py`` holds the baselines to the
names within +-15% and checks the formula against meta-device builds and published counts).

| paper name   | VWN runs in the paper                     | shape taken from                      |
|--------------|-------------------------------------------|---------------------------------------|
| MoE-0.4B/4B  | 1.5x (m,n)=(2,3), no collapse norm, +MTP  | OLMoE block, DeepSeekMoE experts      |
| MoE-2.5B/25B | 1.5x (m,n)=(2,3), no collapse norm, +MTP  | Qwen3-30B-A3B block, depth solved     |
| MoE-A0.8B    | m=8, r=2,4,8: (8,16),(8,32),(8,64), +MTP  | OLMoE-1B-7B at 3/4 width              |
| MoE-A3.3B    | 8x (8,64), next-token and next-2-token    | Qwen3-30B-A3B exactly                 |

Recipes (``nemo-vwn recipes`` lists them with sizes), one function per run, each with its twin:

    paper_<size>_vwn_r<r>[_mtp]    VWN run (DGHC, ``ghc_recompute=True``)
    paper_<size>_base_r<r>[_mtp]   its baseline twin: the same ConfigContainer with VWN off

The VWN recipe is literally ``apply_vwn(<baseline twin>, n, m, ...)``, so the twins differ only
in VWN. The three MoE-A0.8B baselines (``_base_r2/_r4/_r8``) are the same model under three names
(one twin per VWN run). ``_mtp``: multi-token prediction with depth k=1 (``mtp_num_layers=1``,
the paper's "next-2-token"), loss weight 0.1 (DeepSeek-V3's early-training value; see
docs/method.md §5).

Choices the paper leaves open (marked [choice] below):
- Embedding at r=8: ``vwn_embedding="factorized"`` (a width-D table + Linear D->D', the paper's
  option "for large r"). A wide table would be 50304 x 12288 = 618M (A0.8B) and
  151936 x 16384 = 2.49B (A3.3B) parameters; ``model.vwn_embedding=wide`` restores it. r <= 4
  uses the wide table.
- Collapse: "linear" (no group norm) for the 1.5x runs, as the paper did; "norm_linear" for
  integer r.
- Token budgets: MoE-A0.8B 500B and MoE-A3.3B ~3T tokens are the paper's; 500B (0.4B/4B) and 1T
  (2.5B/25B) are [choice] (the paper does not give them).
- Warm-up 2000 iterations, cosine decay to 10% of the peak LR (Megatron-Bridge's default
  ``min_lr = 0.1 * max_lr``), weight decay 0.1, Adam (0.9, 0.95), eps 1e-8, clip 1.0.

H100 layouts (80 GB, 8 GPUs per node; not measured here - this machine has no GPU): TP=1, PP=1,
expert parallelism over all GPUs of the job, data parallel over the rest, the distributed
optimizer, bf16 mixed precision, selective recompute (core attention) for both twins and
``ghc_recompute=True`` for VWN. Sequence parallelism needs TP > 1; set e.g.
``model.tensor_model_parallel_size=2 model.sequence_parallel=true`` to shard the r-times-wider
residual activations if a VWN run is short of memory. On machines with Transformer Engine the
recipes select TE layers and ``moe_permute_fusion``; without it (CPU) they build with local
modules for inspection only.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.bridge.models.gpt_provider import GPTModelProvider
from megatron.bridge.utils.fusions import can_enable_gradient_accumulation_fusion

from nemo_vwn.bridge.apply import apply_vwn
from nemo_vwn.layer_specs import HAVE_TE
from nemo_vwn.recipes.common import h100_pretrain_container, stock_layer_spec

SEQ_LENGTH = 4096  # OLMoE and Qwen3 (stage-1) pretraining sequence length
MTP_LOSS_SCALE = 0.1  # DeepSeek-V3's MTP loss weight for the first 10T tokens

# Settings every paper recipe shares (both families): pre-norm RMSNorm, RoPE, SwiGLU experts,
# no biases, per-head qk-norm, untied head, no dropout, std-0.02 init - as in OLMoE and Qwen3.
COMMON_MODEL = dict(
    normalization="RMSNorm",
    position_embedding_type="rope",
    gated_linear_unit=True,
    activation_func=F.silu,
    add_bias_linear=False,
    add_qkv_bias=False,
    qk_layernorm=True,
    share_embeddings_and_output_weights=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    init_method_std=0.02,
    moe_grouped_gemm=True,
    moe_token_dispatcher_type="alltoall",
    moe_router_dtype="fp32",
    moe_router_load_balancing_type="aux_loss",
    recompute_granularity="selective",
    # Fused permutation needs Transformer Engine (megatron rejects it at finalize() otherwise).
    moe_permute_fusion=bool(HAVE_TE),
    # GPTModelProvider's own default, decided once here (it logs why when it is off).
    gradient_accumulation_fusion=can_enable_gradient_accumulation_fusion(),
)

# OLMoE-1B-7B (arXiv 2409.02060; Bridge's OlMoEModelProvider): vocab 50304 (GPT-NeoX tokenizer,
# padded), RoPE base 1e4, RMSNorm eps 1e-5, softmax-then-top-k routing without renormalisation
# (moe_router_pre_softmax=True), load-balancing loss 0.01, router z-loss 0.001.
# [choice] megatron's per-head qk-norm stands in for OLMoE's full-width qk-norm (same role,
# 2 x head_dim instead of 2 x D parameters per layer).
OLMOE_FAMILY = dict(
    vocab_size=50304, rotary_base=10000.0, layernorm_epsilon=1e-5, moe_router_pre_softmax=True,
    moe_aux_loss_coeff=1e-2, moe_z_loss_coeff=1e-3,
)

# Qwen3-30B-A3B (HF config; Bridge's Qwen3-MoE bridge): vocab 151936, RoPE base 1e6, RMSNorm eps
# 1e-6, GQA with 32 query heads / 4 KV groups of width 128, top-k renormalised (norm_topk_prob ->
# moe_router_pre_softmax=False), load-balancing loss 0.001.
QWEN3_FAMILY = dict(
    vocab_size=151936, rotary_base=1000000.0, layernorm_epsilon=1e-6,
    moe_router_pre_softmax=False, moe_aux_loss_coeff=1e-3,
    num_attention_heads=32, num_query_groups=4, kv_channels=128,
)


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """One of the paper's model sizes: the baseline backbone, its training and its H100 layout."""

    key: str
    paper_name: str
    target_activated: float              # from the name, in parameters
    target_total: Optional[float]        # None where the name gives the activated size only
    model: dict                          # GPTModelProvider fields (backbone + family + layout)
    lr: float
    min_lr: float
    global_batch_size: int
    micro_batch_size: int
    tokens: float                        # training budget; train_iters = tokens / tokens per iter
    gpus: int                            # H100s (8 per node) the layout is sized for
    source: str                          # where the shape comes from (one line)

    @property
    def train_iters(self) -> int:
        return math.ceil(self.tokens / (self.global_batch_size * SEQ_LENGTH))

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // 8)


PAPER_MODELS = {
    # MoE-0.4B/4B: no open model has this size. Block of the OLMoE family at D=1024 (16 heads of
    # 64); 64 experts (OLMoE, DeepSeek-V2-Lite) of width 1408 (the fine-grained expert width of
    # DeepSeekMoE-16B, DeepSeek-V2-Lite and Qwen1.5-MoE-A2.7B), top-4 (Qwen1.5-MoE-A2.7B);
    # depth 14 solved for 0.4B activated / 4B total. LR 4e-4 and 4M-token batches (1024 x 4096)
    # are OLMoE-1B-7B's. [choice] 500B tokens.
    "moe_0p4b_4b": PaperModel(
        key="moe_0p4b_4b", paper_name="MoE-0.4B/4B", target_activated=0.4e9, target_total=4e9,
        model=dict(OLMOE_FAMILY, num_layers=14, hidden_size=1024, num_attention_heads=16,
                   ffn_hidden_size=4096, num_moe_experts=64, moe_router_topk=4,
                   moe_ffn_hidden_size=1408,
                   tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                   expert_model_parallel_size=8, expert_tensor_parallel_size=1),
        lr=4e-4, min_lr=4e-5, global_batch_size=1024, micro_batch_size=4, tokens=500e9, gpus=8,
        source="OLMoE family block at D=1024, DeepSeekMoE-width experts (64 x 1408, top-4), "
               "14 layers solved for 0.4B/4B",
    ),
    # MoE-2.5B/25B: Qwen3-30B-A3B's block (D=2048, GQA 32/4 x 128, qk-norm, 128 experts, top-8,
    # vocab 151936) with depth 24 (Qwen3: 48) and expert width 1280 (Qwen3: 768) solved for
    # 2.5B activated / 25B total. LR 3e-4 -> 3e-5 and the 16-GPU layout TP1/PP1/EP16 are
    # Megatron-Bridge's Qwen3-30B-A3B pretraining recipe; [choice] 8M-token batches (2048 x
    # 4096) and 1T tokens.
    "moe_2p5b_25b": PaperModel(
        key="moe_2p5b_25b", paper_name="MoE-2.5B/25B", target_activated=2.5e9, target_total=25e9,
        model=dict(QWEN3_FAMILY, num_layers=24, hidden_size=2048, ffn_hidden_size=6144,
                   num_moe_experts=128, moe_router_topk=8, moe_ffn_hidden_size=1280,
                   tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                   expert_model_parallel_size=16, expert_tensor_parallel_size=1),
        lr=3e-4, min_lr=3e-5, global_batch_size=2048, micro_batch_size=1, tokens=1e12, gpus=16,
        source="Qwen3-30B-A3B block, 24 layers and 128 x 1280 experts solved for 2.5B/25B",
    ),
    # MoE-A0.8B: OLMoE-1B-7B (16 layers, 64 experts, top-8, expert width D/2, head dim 128,
    # vocab 50304) at 3/4 width: D=1536 (12 heads of 128), expert width 768 = D/2. Activated
    # 0.76B (OLMoE-1B-7B: 1.28B). D=1536 is divisible by m=8 (slot width d=192). The paper's
    # 500B tokens; OLMoE's LR 4e-4 and 4M-token batches.
    "moe_a0p8b": PaperModel(
        key="moe_a0p8b", paper_name="MoE-A0.8B", target_activated=0.8e9, target_total=None,
        model=dict(OLMOE_FAMILY, num_layers=16, hidden_size=1536, num_attention_heads=12,
                   ffn_hidden_size=6144, num_moe_experts=64, moe_router_topk=8,
                   moe_ffn_hidden_size=768,
                   tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                   expert_model_parallel_size=8, expert_tensor_parallel_size=1),
        lr=4e-4, min_lr=4e-5, global_batch_size=1024, micro_batch_size=2, tokens=500e9, gpus=8,
        source="OLMoE-1B-7B at 3/4 width (D=1536, 64 x 768 experts, top-8, 16 layers)",
    ),
    # MoE-A3.3B: exactly Qwen3-30B-A3B (48 layers, D=2048, GQA 32/4 x 128, 128 experts of width
    # 768, top-8, vocab 151936): 3.35B activated, 30.5B total. The paper's ~3T tokens; LR and the
    # 16-GPU layout from Megatron-Bridge's Qwen3-30B-A3B pretraining recipe; [choice] 8M-token
    # batches.
    "moe_a3p3b": PaperModel(
        key="moe_a3p3b", paper_name="MoE-A3.3B", target_activated=3.3e9, target_total=None,
        model=dict(QWEN3_FAMILY, num_layers=48, hidden_size=2048, ffn_hidden_size=6144,
                   num_moe_experts=128, moe_router_topk=8, moe_ffn_hidden_size=768,
                   tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                   expert_model_parallel_size=16, expert_tensor_parallel_size=1),
        lr=3e-4, min_lr=3e-5, global_batch_size=2048, micro_batch_size=1, tokens=3e12, gpus=16,
        source="Qwen3-30B-A3B (48 layers, 128 x 768 experts, top-8)",
    ),
}


@dataclasses.dataclass(frozen=True)
class PaperRun:
    """One VWN setting the paper trains a size with."""

    model: str                 # PAPER_MODELS key
    label: str                 # r label used in recipe names: "1p5", "2", "4", "8"
    m: int
    n: int
    vwn_fields: dict

    @property
    def r(self) -> float:
        return self.n / self.m


PAPER_RUNS = (
    # 1.5x, (m,n)=(2,3); the paper drops the collapse group norm for these runs.
    PaperRun("moe_0p4b_4b", "1p5", 2, 3, dict(vwn_collapse="linear")),
    PaperRun("moe_2p5b_25b", "1p5", 2, 3, dict(vwn_collapse="linear")),
    # m = 8, r = 2, 4, 8; [choice] factorized embedding at r = 8.
    PaperRun("moe_a0p8b", "2", 8, 16, dict(vwn_embedding="wide")),
    PaperRun("moe_a0p8b", "4", 8, 32, dict(vwn_embedding="wide")),
    PaperRun("moe_a0p8b", "8", 8, 64, dict(vwn_embedding="factorized")),
    # 8x, (8,64); [choice] factorized embedding.
    PaperRun("moe_a3p3b", "8", 8, 64, dict(vwn_embedding="factorized")),
)


def recipe_name(run: PaperRun, vwn: bool, mtp: bool) -> str:
    return f"paper_{run.model}_{'vwn' if vwn else 'base'}_r{run.label}" + ("_mtp" if mtp else "")


def baseline_provider(size: PaperModel, mtp: bool) -> GPTModelProvider:
    """The baseline backbone (no VWN) of ``size``, with MTP depth 1 when ``mtp``."""
    fields = dict(COMMON_MODEL, **size.model, transformer_layer_spec=stock_layer_spec)
    if fields["pipeline_model_parallel_size"] > 1:
        fields["pipeline_dtype"] = torch.bfloat16
    if mtp:
        fields.update(mtp_num_layers=1, mtp_loss_scaling_factor=MTP_LOSS_SCALE)
    return GPTModelProvider(**fields)


def build_paper_recipe(run: PaperRun, vwn: bool, mtp: bool, output_dir: Optional[str] = None):
    """The ConfigContainer of one paper recipe (see the module docstring)."""
    size = PAPER_MODELS[run.model]
    name = recipe_name(run, vwn, mtp)
    cfg = h100_pretrain_container(
        baseline_provider(size, mtp), name, output_dir,
        train_iters=size.train_iters, global_batch_size=size.global_batch_size,
        micro_batch_size=size.micro_batch_size, seq_length=SEQ_LENGTH, lr=size.lr,
        min_lr=size.min_lr, warmup_iters=2000, vocab_size=size.model["vocab_size"],
    )
    if vwn:
        cfg = apply_vwn(cfg, n=run.n, m=run.m, dynamic=True, ghc_recompute=True, **run.vwn_fields)
    return cfg


def _describe(run: PaperRun, vwn: bool, mtp: bool) -> str:
    size = PAPER_MODELS[run.model]
    r = f"{run.r:g}"
    what = (f"{size.paper_name} VWN r={r} (m,n)=({run.m},{run.n})" if vwn
            else f"{size.paper_name} baseline (twin of the r={r} VWN run)")
    extras = []
    if vwn and run.vwn_fields:
        extras.append(", ".join(f"{k}={v}" for k, v in run.vwn_fields.items()))
    if mtp:
        extras.append("MTP k=1")
    return what + (f", {'; '.join(extras)}" if extras else "") + "."


def _make_recipe(run: PaperRun, vwn: bool, mtp: bool):
    name = recipe_name(run, vwn, mtp)
    size = PAPER_MODELS[run.model]

    def recipe(output_dir: Optional[str] = None):
        return build_paper_recipe(run, vwn, mtp, output_dir)

    recipe.__name__ = recipe.__qualname__ = name
    recipe.__module__ = __name__
    recipe.__doc__ = (
        f"{_describe(run, vwn, mtp)}\n\n"
        f"Shape: {size.source}. {size.gpus} x H100 (TP1/PP1/EP"
        f"{size.model['expert_model_parallel_size']}), {size.train_iters} iterations of "
        f"{size.global_batch_size} x {SEQ_LENGTH} tokens, LR {size.lr:g} -> {size.min_lr:g}. "
        "See nemo_vwn.recipes.paper for every number's source."
    )
    recipe.paper_run, recipe.paper_model, recipe.vwn, recipe.mtp = run, size, vwn, mtp
    return recipe


PAIRS = []  # (VWN recipe, baseline twin), registered by nemo_vwn.recipes.all_recipes()
for _run in PAPER_RUNS:
    for _mtp in (False, True):
        _vwn_fn, _base_fn = _make_recipe(_run, True, _mtp), _make_recipe(_run, False, _mtp)
        setattr(sys.modules[__name__], _vwn_fn.__name__, _vwn_fn)
        setattr(sys.modules[__name__], _base_fn.__name__, _base_fn)
        PAIRS.append((_vwn_fn, _base_fn))
del _run, _mtp, _vwn_fn, _base_fn
