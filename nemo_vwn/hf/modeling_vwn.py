"""Virtual Width Network causal LM for Hugging Face ``transformers`` (``VWNForCausalLM``).

Written from the method (vwn-method.md; "Virtual Width Networks", arXiv 2511.11238) and
megatron-core's published semantics, without importing megatron or nemo_vwn: an exported model
directory carries this file and ``configuration_vwn.py`` (``auto_map``), so it loads with
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` on a machine with only
torch + transformers.

Notation: D = hidden_size, m = virtual_width_m, d = D/m, n = virtual_width_n, D' = n*d. Tensors
are batch-first here: a wide state is [b, s, D'], viewed per token as H with shape (n, d).

    ids --embedding--> h [b, s, D']     wide table (V, D'), or table (V, D) + Linear D->D'
        for each layer (two GHCs, each around one pre-norm branch):
            x, st = GHC_attn.read(h);  h = GHC_attn.write(Attention(Norm(x)), st)
            x, st = GHC_mlp.read(h);   h = GHC_mlp.write(MLP_or_MoE(Norm(x)), st)
        collapse: W_reduce · GroupNorm_r(h) [b, s, D] -> final Norm -> LM head -> logits [b, s, V]

GHC (docs/method.md §3-4), per token with H (n, d), A = [A_read | A_carry] (n, m+n), B (m, n):
    (1) X = A_readᵀ H (m, d) -> x in R^D          (2) z = Branch(x), Z (m, d)
    (3) H' = Bᵀ Z + A_carryᵀ H            compact: M = Aᵀ H (m+n, d), x = M[:m], carry = M[m:]
DGHC: Hn = RMSNorm_d(H) (one gain of size d shared by the slots);
    A(H) = S_A ∘ tanh(Hn W_A / sqrt(d)) + A_static,   W_A (d, m+n)
    B(H) = S_B ∘ tanh(Hn W_B / sqrt(d))ᵀ + B_static,  W_B (d, m)
with the coefficient math in fp32 for half-precision inputs when ``ghc_fp32_coefficients``.

Multi-token prediction (section 5; weights ``model.mtp_layers.{j}``), depth j = 1..k from the last
decoder layer's wide state H^0 (before the collapse):
    E^j = embedding(tokens shifted left by j, vacated positions filled with token 0)
    H^j = VWN layer( BlockMix( Norm_D'(H^{j-1}), Norm_D'(E^j) ) ),  BlockMix = one Linear(2d -> d)
          applied to each [hidden_slot ; embedding_slot] pair;   logits^j = head(collapse(H^j))
    (logits^j at position t predict token t + j + 1.)

Each block that mirrors a Megatron-side module says so in a ``# mirrors ...`` comment above it
(tests/hf/test_parity_blocks.py loads the same parameters into both and compares outputs).

Megatron semantics reproduced (megatron-core 0.19): fused QKV split per query group (done by the
converter; here q/k/v are separate), RoPE on the first ``partial_rotary_factor`` of each head in
"rotate half" form with inv_freq = 1 / theta^(2i/dim), softmax in fp32, GLU = act(gate) * up with
fc1 = [gate; up]; MoE router: logits = x Wᵀ (in ``router_dtype``), scores by
softmax (``router_pre_softmax``: over all experts, then top-k; else top-k logits then softmax over
the k) or sigmoid/sqrtsoftplus (top-k, optionally on score + expert_bias, then normalised to sum 1
when k > 1), times ``router_topk_scaling_factor``; an expert computes fc2(act(fc1 x) · p) and the
token's output is the sum over its k experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_vwn import VWNHFConfig


# ---------------------------------------------------------------------------------- basics
def _fast_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, megatron's default
    "silu": F.silu,
    "relu": F.relu,
    "squared_relu": lambda x: torch.pow(F.relu(x), 2),
    "fast_gelu": _fast_gelu,  # tanh approximation
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


# mirrors megatron's local RMSNorm / LayerNorm (megatron.core.transformer.torch_norm)
class VWNNorm(nn.Module):
    """RMSNorm or LayerNorm over the last ``dim`` features (``config.normalization``).

    RMSNorm: x / sqrt(mean(x²) + eps) · g;  LayerNorm: (x - mean) / sqrt(var + eps) · g + b.
    With ``norm_zero_centered_gamma`` the stored gain is g - 1.
    """

    def __init__(self, config: VWNHFConfig, dim: int):
        super().__init__()
        self.dim = dim
        self.eps = config.norm_epsilon
        self.rms = config.normalization == "RMSNorm"
        self.zero_centered = config.norm_zero_centered_gamma
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = None if self.rms else nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        weight = self.weight + 1 if self.zero_centered else self.weight
        if self.rms:
            return F.rms_norm(x, (self.dim,), weight, self.eps)
        return F.layer_norm(x, (self.dim,), weight, self.bias, self.eps)


# mirrors nemo_vwn.ghc.static_alpha_init (docs/method.md §3)
def static_alpha_init(n: int, m: int) -> torch.Tensor:
    """A_static = [A_read | A_carry] with A_read = [I_m ; 0] and A_carry = I_n: (n, m+n)."""
    alpha = torch.zeros(n, m + n)
    alpha[:m, :m] = torch.eye(m)
    alpha[:, m:] = torch.eye(n)
    return alpha


# mirrors nemo_vwn.ghc.static_beta_init (docs/method.md §3)
def static_beta_init(n: int, m: int) -> torch.Tensor:
    """B_static[i, j] = 1 if j mod m == i: (m, n)."""
    j = torch.arange(n)
    return (j[None, :] % m == torch.arange(m)[:, None]).to(torch.float32)


# ---------------------------------------------------------------------------------- GHC
# mirrors nemo_vwn.ghc.GHC: coefficients, read, write (docs/method.md §3 GHC, §4 DGHC)
class VWNGHC(nn.Module):
    """One GHC/DGHC around one branch: ``read`` (eq. 1) and ``write`` (eq. 3), see module docs."""

    def __init__(self, config: VWNHFConfig):
        super().__init__()
        self.n, self.m, self.d = config.virtual_width_n, config.virtual_width_m, config.segment_size
        self.dynamic = config.ghc_dynamic
        self.fp32 = config.ghc_fp32_coefficients
        self.eps = config.norm_epsilon
        n, m, d = self.n, self.m, self.d
        self.static_alpha = nn.Parameter(static_alpha_init(n, m))  # (n, m+n)
        self.static_beta = nn.Parameter(static_beta_init(n, m))  # (m, n)
        if self.dynamic:
            self.norm_weight = nn.Parameter(torch.ones(d))  # RMSNorm_d gain
            self.dynamic_alpha_proj = nn.Parameter(torch.zeros(d, m + n))  # W_A
            self.dynamic_beta_proj = nn.Parameter(torch.zeros(d, m))  # W_B
            self.dynamic_alpha_scale = nn.Parameter(torch.ones(n, m + n))  # S_A
            self.dynamic_beta_scale = nn.Parameter(torch.ones(m, n))  # S_B

    def coefficients(self, H):
        """H [b, s, n, d] -> A [n, m+n] | [b, s, n, m+n] and B [m, n] | [b, s, m, n]."""
        cdt = torch.float32 if self.fp32 and H.dtype in (torch.float16, torch.bfloat16) else H.dtype
        alpha, beta = self.static_alpha.to(cdt), self.static_beta.to(cdt)
        if not self.dynamic:
            return alpha, beta
        Hn = F.rms_norm(H.to(cdt), (self.d,), self.norm_weight.to(cdt), self.eps)
        inv_sqrt_d = 1.0 / math.sqrt(self.d)
        dyn_alpha = torch.tanh(torch.matmul(Hn, self.dynamic_alpha_proj.to(cdt)) * inv_sqrt_d)
        dyn_beta = torch.tanh(torch.matmul(Hn, self.dynamic_beta_proj.to(cdt)) * inv_sqrt_d)
        alpha = self.dynamic_alpha_scale.to(cdt) * dyn_alpha + alpha  # [b, s, n, m+n]
        beta = self.dynamic_beta_scale.to(cdt) * dyn_beta.transpose(-1, -2) + beta  # [b, s, m, n]
        return alpha, beta

    def read(self, h):
        """h [b, s, D'] -> (x [b, s, D], state for ``write``): M = Aᵀ H, x = M[:m]."""
        b, s, _ = h.shape
        H = h.view(b, s, self.n, self.d)
        alpha, beta = self.coefficients(H)
        M = torch.matmul(alpha.transpose(-1, -2), H.to(alpha.dtype))  # [b, s, m+n, d]
        x = M[:, :, : self.m].reshape(b, s, self.m * self.d).to(h.dtype)
        return x, (M[:, :, self.m:], beta)  # carry A_carryᵀ H [b, s, n, d], B

    def write(self, z, state):
        """z [b, s, D] -> H' = Bᵀ Z + A_carryᵀ H as [b, s, D']."""
        carry, beta = state
        b, s, _ = z.shape
        Z = z.view(b, s, self.m, self.d).to(beta.dtype)
        out = torch.matmul(beta.transpose(-1, -2), Z) + carry  # [b, s, n, d]
        return out.reshape(b, s, self.n * self.d).to(z.dtype)


# ---------------------------------------------------------------------------------- attention
# mirrors megatron.core.models.common.embeddings.rotary_pos_embedding.RotaryEmbedding
def rotary_cos_sin(config: VWNHFConfig, position_ids, dtype):
    """cos, sin [b, s, rot_dim] for integer positions [b, s] (megatron's RotaryEmbedding)."""
    dim = int(config.head_dim * config.partial_rotary_factor)
    inv_freq = 1.0 / (config.rope_theta ** (
        torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # [b, s, dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# mirrors megatron.core.models.common.embeddings.rope_utils.apply_rotary_pos_emb (not interleaved)
def apply_rotary(t, cos, sin):
    """t [b, heads, s, hd]: rotate the first rot_dim features ("rotate half"), pass the rest."""
    rot = cos.shape[-1]
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    x1, x2 = torch.chunk(t_rot, 2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    cos, sin = cos[:, None], sin[:, None]  # [b, 1, s, rot]
    return torch.cat((t_rot * cos + rotated * sin, t_pass), dim=-1)


# mirrors megatron.core.transformer.attention.SelfAttention + DotProductAttention (local spec)
class VWNAttention(nn.Module):
    """Causal self-attention at width D with GQA: [b, s, D] -> [b, s, D]."""

    def __init__(self, config: VWNHFConfig, layer_idx: Optional[int]):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.heads, self.groups = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        D = config.hidden_size
        self.q_proj = nn.Linear(D, self.heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(D, self.groups * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(D, self.groups * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, D, bias=config.linear_bias)
        if config.qk_layernorm:
            self.q_norm = VWNNorm(config, self.head_dim)
            self.k_norm = VWNNorm(config, self.head_dim)
        self.scale = config.attention_softmax_scale or 1.0 / math.sqrt(self.head_dim)

    def forward(self, x, mask, rotary, past_key_values: Optional[Cache] = None):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim)
        if self.config.qk_layernorm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, hd]
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # [b, groups, s_kv, hd]
        if self.groups != self.heads:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [b, heads, s, s_kv]
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        return self.o_proj(out)


# ---------------------------------------------------------------------------------- MLP / MoE
# mirrors megatron.core.transformer.mlp.MLP (and one local expert of the MoE)
class VWNMLP(nn.Module):
    """Dense MLP: down(act(gate x) * up x) with a GLU, else down(act(up x)); biases optional.

    ``scale`` (an MoE routing probability per token) multiplies the activation before ``down``."""

    def __init__(self, config: VWNHFConfig, ffn: int, bias: bool):
        super().__init__()
        D = config.hidden_size
        self.glu = config.gated_linear_unit
        self.act = ACTIVATIONS[config.hidden_act]
        if self.glu:
            self.gate_proj = nn.Linear(D, ffn, bias=bias)
        self.up_proj = nn.Linear(D, ffn, bias=bias)
        self.down_proj = nn.Linear(ffn, D, bias=bias)

    def forward(self, x, scale=None):
        if self.glu:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = self.act(self.up_proj(x))
        if scale is not None:
            h = (h * scale.unsqueeze(-1)).to(x.dtype)
        return self.down_proj(h)


# mirrors megatron.core.transformer.moe.router.TopKRouter
# (moe_utils.topk_routing_with_score_function)
class VWNRouter(nn.Module):
    """Top-k router with megatron's score functions: x [T, D] -> (probs [T, k], experts [T, k])."""

    def __init__(self, config: VWNHFConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        if config.router_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts), persistent=True)
        else:
            self.expert_bias = None

    def forward(self, x):
        c = self.config
        dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(c.router_dtype, x.dtype)
        logits = F.linear(x.to(dtype), self.weight.to(dtype))  # [T, E]
        k = c.num_experts_per_tok
        if c.router_score_function == "softmax":
            if c.router_pre_softmax:
                scores = torch.softmax(logits, -1, dtype=torch.float32)
                probs, experts = torch.topk(scores, k, dim=1)
            else:
                top, experts = torch.topk(logits, k, dim=1)
                probs = torch.softmax(top, -1, dtype=torch.float32)
        else:
            if c.router_score_function == "sigmoid":
                scores = torch.sigmoid(logits.float())
            else:  # sqrtsoftplus
                scores = F.softplus(logits.float()).sqrt()
            if self.expert_bias is not None:
                _, experts = torch.topk(scores + self.expert_bias.float(), k, dim=1)
                probs = torch.gather(scores, 1, experts)
            else:
                probs, experts = torch.topk(scores, k, dim=1)
            if k > 1:
                probs = probs / (probs.sum(dim=-1, keepdim=True) + 1e-20)
        if c.router_topk_scaling_factor:
            probs = probs * c.router_topk_scaling_factor
        return probs.type_as(logits), experts


# mirrors megatron.core.transformer.moe.moe_layer.MoELayer (routed experts, no shared experts)
class VWNMoE(nn.Module):
    """Routed experts: out(x) = Σ_{e in top-k(x)} expert_e(x; p_e(x)), [b, s, D] -> [b, s, D]."""

    def __init__(self, config: VWNHFConfig):
        super().__init__()
        self.router = VWNRouter(config)
        self.experts = nn.ModuleList(VWNMLP(config, config.moe_intermediate_size, bias=False)
                                     for _ in range(config.num_experts))

    def forward(self, x):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [T, D]
        probs, experts = self.router(tokens)  # [T, k]
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(experts == e)
            if rows.numel():
                out.index_add_(0, rows, expert(tokens[rows], probs[rows, slot]).to(out.dtype))
        return out.view(shape)


# ---------------------------------------------------------------------------------- layers
# mirrors nemo_vwn.layer.VWNTransformerLayer / VWNMoETransformerLayer (docs/method.md §3)
class VWNDecoderLayer(nn.Module):
    """One VWN transformer layer on the wide state: [b, s, D'] -> [b, s, D']."""

    def __init__(self, config: VWNHFConfig, layer_idx: Optional[int], moe: bool):
        super().__init__()
        self.attn_ghc = VWNGHC(config)
        self.input_layernorm = VWNNorm(config, config.hidden_size)
        self.self_attn = VWNAttention(config, layer_idx)
        self.mlp_ghc = VWNGHC(config)
        self.pre_mlp_layernorm = VWNNorm(config, config.hidden_size)
        self.mlp = VWNMoE(config) if moe else VWNMLP(config, config.intermediate_size,
                                                      bias=config.linear_bias)

    def forward(self, h, mask, rotary, past_key_values=None):
        x, state = self.attn_ghc.read(h)
        h = self.attn_ghc.write(self.self_attn(self.input_layernorm(x), mask, rotary,
                                               past_key_values), state)
        x, state = self.mlp_ghc.read(h)
        return self.mlp_ghc.write(self.mlp(self.pre_mlp_layernorm(x)), state)


# mirrors nemo_vwn.collapse.VWNCollapse (docs/method.md §2)
class VWNCollapse(nn.Module):
    """h = W_reduce · GroupNorm_r(H): [b, s, D'] -> [b, s, D] (RMS group norm, r groups of D)."""

    def __init__(self, config: VWNHFConfig):
        super().__init__()
        self.D, self.wide = config.hidden_size, config.virtual_hidden_size
        self.eps = config.norm_epsilon
        self.use_group_norm = config.vwn_collapse == "norm_linear"
        if self.use_group_norm:
            self.group_norm_weight = nn.Parameter(torch.ones(self.wide))
        self.reduce = nn.Linear(self.wide, self.D, bias=False)

    def forward(self, h):
        if self.use_group_norm:
            b, s, _ = h.shape
            groups = h.view(b, s, self.wide // self.D, self.D)
            h = F.rms_norm(groups, (self.D,), eps=self.eps).view(b, s, self.wide)
            h = h * self.group_norm_weight
        return self.reduce(h)


# mirrors nemo_vwn.mtp.VWNMultiTokenPredictionLayer; ``mix`` = its hnorm/enorm + BlockwiseMixer
# (docs/method.md §5)
class VWNMTPLayer(nn.Module):
    """One MTP depth: H^j = layer(BlockMix(Norm(H^{j-1}), Norm(E^j))), all [b, s, D']."""

    def __init__(self, config: VWNHFConfig):
        super().__init__()
        self.n, self.d = config.virtual_width_n, config.segment_size
        self.hnorm = VWNNorm(config, config.virtual_hidden_size)
        self.enorm = VWNNorm(config, config.virtual_hidden_size)
        self.block_mixer = nn.Linear(2 * self.d, self.d, bias=False)  # weight (d, 2d)
        moe = config.is_moe_layer(config.num_hidden_layers - 1)  # as the last decoder layer
        self.layer = VWNDecoderLayer(config, None, moe)

    def mix(self, hidden, embedded):
        """BlockMix(Norm(H^{j-1}), Norm(E^j)): [b, s, D'] x 2 -> [b, s, D']."""
        b, s, _ = hidden.shape
        pairs = torch.cat([self.hnorm(hidden).view(b, s, self.n, self.d),
                           self.enorm(embedded).view(b, s, self.n, self.d)], dim=-1)  # [b,s,n,2d]
        return self.block_mixer(pairs).view(b, s, self.n * self.d)

    def forward(self, hidden, embedded, mask, rotary):
        return self.layer(self.mix(hidden, embedded), mask, rotary)


# ---------------------------------------------------------------------------------- models
class VWNPreTrainedModel(PreTrainedModel):
    config_class = VWNHFConfig
    config: VWNHFConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["VWNDecoderLayer", "VWNMTPLayer"]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Random init for training from scratch; GHC gets the method's deterministic init."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, VWNNorm):
            (init.zeros_ if module.zero_centered else init.ones_)(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VWNGHC):
            init.copy_(module.static_alpha, static_alpha_init(module.n, module.m))
            init.copy_(module.static_beta, static_beta_init(module.n, module.m))
            if module.dynamic:
                init.ones_(module.norm_weight)
                init.zeros_(module.dynamic_alpha_proj)
                init.zeros_(module.dynamic_beta_proj)
                init.ones_(module.dynamic_alpha_scale)
                init.ones_(module.dynamic_beta_scale)
        elif isinstance(module, VWNCollapse) and module.use_group_norm:
            init.ones_(module.group_norm_weight)
        elif isinstance(module, VWNRouter):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.expert_bias is not None:
                init.zeros_(module.expert_bias)
        elif isinstance(module, VWNModel) and module.embed_up_proj is not None:
            init.normal_(module.embed_up_proj, mean=0.0, std=std)


@dataclass
class VWNModelOutput(BaseModelOutputWithPast):
    """``last_hidden_state``: collapsed + normed [b, s, D]; ``wide_state``: the last layer's
    wide state [b, s, D'] (the MTP input)."""

    wide_state: Optional[torch.FloatTensor] = None


@dataclass
class VWNCausalLMOutput(CausalLMOutputWithPast):
    """``mtp_logits``: one [b, s, V] tensor per MTP depth (``output_mtp_logits=True``)."""

    mtp_logits: Optional[tuple] = None


class VWNModel(VWNPreTrainedModel):
    """Embedding, VWN decoder layers, collapse and final norm: ids [b, s] -> [b, s, D]."""

    def __init__(self, config: VWNHFConfig):
        super().__init__(config)
        factorized = config.vwn_embedding == "factorized"
        table = config.hidden_size if factorized else config.virtual_hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, table)
        self.embed_up_proj = (  # Linear D -> D'
            nn.Parameter(torch.empty(config.virtual_hidden_size, config.hidden_size))
            if factorized else None)
        if config.position_embedding_type == "learned_absolute":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, table)
        self.layers = nn.ModuleList(VWNDecoderLayer(config, i, config.is_moe_layer(i))
                                    for i in range(config.num_hidden_layers))
        self.collapse = VWNCollapse(config) if config.vwn_collapse != "none" else None
        self.norm = VWNNorm(config, config.hidden_size)
        num_mtp = 1 if config.mtp_use_repeated_layer else config.mtp_num_layers
        self.mtp_layers = nn.ModuleList(
            VWNMTPLayer(config) for _ in range(num_mtp if config.mtp_num_layers else 0))
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    # mirrors nemo_vwn.embedding.VWNEmbedding (wide or factorized; docs/method.md §2)
    def embed(self, input_ids, position_ids):
        """ids [b, s] -> wide state [b, s, D'] (token (+ learned position) embedding, then the
        up-projection)."""
        e = self.embed_tokens(input_ids)
        if self.config.position_embedding_type == "learned_absolute":
            e = e + self.embed_positions(position_ids)
        if self.embed_up_proj is not None:
            e = F.linear(e, self.embed_up_proj)
            if self.config.vwn_embedding_up_act == "gelu":
                s = self.config.initializer_range  # Megatron's init_method_std
                e = s * F.gelu(e / s)
        return e

    # mirrors nemo_vwn.collapse.VWNOutputNorm (collapse, then the final norm; docs/method.md §2)
    def head_norm(self, wide):
        """[b, s, D'] -> collapse -> final norm -> [b, s, D]."""
        return self.norm(self.collapse(wide) if self.collapse is not None else wide)

    def _rotary(self, position_ids, dtype):
        if self.config.position_embedding_type != "rope":
            return None
        return rotary_cos_sin(self.config, position_ids, dtype)

    @staticmethod
    def _mask(attention_mask, b, q_len, past_len, device):
        """Boolean [b, 1, q, past+q]: True where attention is allowed (causal & not padding)."""
        kv_len = past_len + q_len
        q_pos = torch.arange(past_len, kv_len, device=device)
        allowed = torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None]  # [q, kv]
        allowed = allowed[None, None].expand(b, 1, q_len, kv_len)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -kv_len:].to(torch.bool)
        return allowed

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs) -> VWNModelOutput:
        """``inputs_embeds``, if given, is the wide embedding [b, s, D'] (after any
        up-projection)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("VWNModel: pass exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if not use_cache:
            past_key_values = None
        ref = input_ids if input_ids is not None else inputs_embeds
        b, s = ref.shape[:2]
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + s, device=ref.device)
            position_ids = position_ids[None].expand(b, s)
        h = self.embed(input_ids, position_ids) if inputs_embeds is None else inputs_embeds
        mask = self._mask(attention_mask, b, s, past_len, h.device)
        rotary = self._rotary(position_ids, h.dtype)
        for layer in self.layers:
            h = layer(h, mask, rotary, past_key_values)
        return VWNModelOutput(last_hidden_state=self.head_norm(h), past_key_values=past_key_values,
                              wide_state=h)


class VWNForCausalLM(VWNPreTrainedModel, GenerationMixin):
    """VWN causal LM: logits [b, s, V] from the collapsed, normed state; optional MTP logits."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: VWNHFConfig):
        super().__init__(config)
        self.model = VWNModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                output_mtp_logits: bool = False, **kwargs) -> VWNCausalLMOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(out.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)
        mtp_logits = None
        if output_mtp_logits:
            mtp_logits = self.mtp_logits(input_ids, out.wide_state, attention_mask, position_ids,
                                         past_key_values)
        return VWNCausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                 mtp_logits=mtp_logits)

    # mirrors nemo_vwn.mtp.VWNMultiTokenPredictionBlock.forward (docs/method.md §5)
    def mtp_logits(self, input_ids, wide, attention_mask=None, position_ids=None,
                   past_key_values=None):
        """Logits of every MTP depth (module docs) for a full sequence: tuple of [b, s, V]."""
        config, model = self.config, self.model
        if not config.mtp_num_layers:
            raise ValueError("output_mtp_logits=True but this model has no MTP layers "
                             "(config.mtp_num_layers=0)")
        if input_ids is None or (past_key_values is not None and past_key_values.get_seq_length()
                                 > input_ids.shape[1]):
            raise ValueError("MTP logits need input_ids of the whole sequence (no cached prefix)")
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device)[None].expand(b, s)
        mask = model._mask(attention_mask, b, s, 0, wide.device)
        rotary = model._rotary(position_ids, wide.dtype)  # depths keep the main sequence's RoPE
        ids, pos, hidden, logits = input_ids, position_ids, wide, []
        for j in range(config.mtp_num_layers):
            ids = F.pad(ids[:, 1:], (0, 1), value=0)  # tokens t + j + 1 at position t
            pos = F.pad(pos[:, 1:], (0, 1), value=0)
            layer = model.mtp_layers[0 if config.mtp_use_repeated_layer else j]
            hidden = layer(hidden, model.embed(ids, pos), mask, rotary)
            logits.append(self.lm_head(model.head_norm(hidden)))
        return tuple(logits)


__all__ = ["VWNForCausalLM", "VWNModel", "VWNPreTrainedModel"]
