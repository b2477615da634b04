"""Parameter counts of a GPT / GPT-MoE / VWN provider, computed from its fields (no allocation).

``count_parameters(provider)`` returns total and activated parameters, with the embedding, output
layer and VWN-specific parts broken out. It is exact for the modules megatron-core's standard GPT
layer specs build (local and Transformer Engine specs give the same counts: TE fuses the pre-norms
into the following linear but keeps their parameters) and for the VWN modules of this package;
``tests/bridge/test_paper_recipes.py`` checks it against meta-device builds.

Conventions:
    total       every parameter of the model on all pipeline stages, once (TP/EP shards summed),
                embedding table and output layer included (the output layer once if untied).
    activated   what one token uses: total minus, in every MoE layer (MTP layers included), the
                routed experts it is not sent to ((num_experts - topk) x one expert's size).
                Embedding table and LM head count as activated (the usual convention, e.g. OLMoE's
                1.3B / Qwen3-30B-A3B's 3.3B activated include them).
    vocab       ``provider.vocab_size`` (Bridge uses it unpadded when set), else the
                ``vocab_size`` argument, padded like Bridge pads a tokenizer vocab
                (``make_vocab_size_divisible_by`` x TP) unless ``pad_vocab=False``.

Not covered (raises ``NotImplementedError`` naming the field): multi-latent attention,
heterogeneous / hybrid layer patterns, MoE latent projections, custom attention modules whose
parameter shapes differ from megatron's ``SelfAttention`` (e.g. OLMoE's full-width qk-norm).
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    total: int
    activated: int
    embedding: int      # input embedding table(s) (+ learned positions, + VWN up-projection)
    output_layer: int   # LM head (0 when tied)
    vwn: int            # every VWN-specific parameter (GHC, collapse, extra table width, MTP mixer)
    mtp: int            # the MTP depths (their layers, norms and projections)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.output_layer

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), non_embedding=self.non_embedding)


def _norm(config, width: int) -> int:
    return width * (2 if config.normalization == "LayerNorm" else 1)


def _pad_vocab(vocab: int, config) -> int:
    multiple = (getattr(config, "make_vocab_size_divisible_by", 128) or 1) * (
        config.tensor_model_parallel_size or 1)
    return -(-vocab // multiple) * multiple


def _kv_channels(config) -> int:
    return config.kv_channels or config.hidden_size // config.num_attention_heads


def _attention(config) -> int:
    D = config.hidden_size
    kv = _kv_channels(config)
    q_width = kv * config.num_attention_heads
    kv_width = kv * (config.num_query_groups or config.num_attention_heads)
    qkv_bias = bool(config.add_bias_linear or getattr(config, "add_qkv_bias", False))
    count = _norm(config, D)  # input_layernorm
    count += D * (q_width + 2 * kv_width) + (q_width + 2 * kv_width) * qkv_bias  # linear_qkv
    count += q_width * D + D * bool(config.add_bias_linear)  # linear_proj
    if config.qk_layernorm:
        count += 2 * _norm(config, kv)
    return count


def _mlp(config, ffn: int, D: Optional[int] = None) -> int:
    D = config.hidden_size if D is None else D
    gated = 2 if config.gated_linear_unit else 1
    bias = bool(config.add_bias_linear)
    return D * ffn * gated + ffn * gated * bias + ffn * D + D * bias


def _expert(config) -> int:
    return _mlp(config, config.moe_ffn_hidden_size or config.ffn_hidden_size)


def _moe(config) -> tuple[int, int]:
    """(params, params a token does not use) of one MoE MLP (router, experts, shared experts)."""
    D, E = config.hidden_size, config.num_moe_experts
    count = E * D  # router (its expert_bias, when enabled, is a buffer)
    count += E * _expert(config)
    shared = getattr(config, "moe_shared_expert_intermediate_size", None)
    if shared:
        count += _mlp(config, shared)
        if getattr(config, "moe_shared_expert_gate", False):
            count += D
    inactive = (E - config.moe_router_topk) * _expert(config)
    return count, inactive


def moe_layer_pattern(config) -> list[bool]:
    """True for each decoder layer that is MoE (``moe_layer_freq`` as megatron reads it)."""
    L = config.num_layers
    if not config.num_moe_experts:
        return [False] * L
    freq = getattr(config, "moe_layer_freq", 1)
    if isinstance(freq, int):
        return [i % freq == 0 for i in range(L)]
    if isinstance(freq, str):  # e.g. "([0]*1+[1]*26)" as megatron's CLI accepts
        freq = eval(freq, {"__builtins__": {}}, {})  # noqa: S307 - megatron's own format
    if len(freq) != L:
        raise ValueError(f"moe_layer_freq has {len(freq)} entries for num_layers={L}")
    return [bool(x) for x in freq]


def _ghc(config) -> int:
    n, m, d = config.virtual_width_n, config.virtual_width_m, config.ghc_segment_size
    count = n * (m + n) + m * n  # static A, B
    if config.ghc_dynamic:
        count += d + d * (m + n) + d * m + n * (m + n) + m * n  # norm gain, W_A, W_B, S_A, S_B
    return count


def _check_supported(config) -> None:
    for name in ("multi_latent_attention", "heterogeneous_block_specs"):
        if getattr(config, name, False):
            raise NotImplementedError(f"count_parameters does not cover {name}=True")
    if getattr(config, "moe_latent_size", None):
        raise NotImplementedError("count_parameters does not cover moe_latent_size")
    if type(config).__name__.endswith("OlMoEModelProvider"):
        raise NotImplementedError("count_parameters does not cover OLMoE's full-width qk-norm "
                                  "attention (OLMoESelfAttention)")


def count_parameters(config, vocab_size: Optional[int] = None, pad_vocab: bool = True
                     ) -> ParameterCount:
    """Total / activated parameters of the model a provider (or TransformerConfig) builds.

    Works on an unfinalised provider (``ffn_hidden_size`` / ``kv_channels`` defaults are applied
    as megatron's ``__post_init__`` would). Nothing is allocated.
    """
    _check_supported(config)
    D = config.hidden_size
    if vocab_size is None and getattr(config, "vocab_size", None) is None:
        raise ValueError("count_parameters needs a vocab size: set provider.vocab_size or pass "
                         "vocab_size=")
    if getattr(config, "vocab_size", None) is not None:
        vocab = config.vocab_size
        if getattr(config, "should_pad_vocab", False):
            vocab = _pad_vocab(vocab, config)
    else:
        vocab = _pad_vocab(vocab_size, config) if pad_vocab else vocab_size
    ffn = config.ffn_hidden_size or 4 * D  # megatron's default when unset
    is_vwn = getattr(config, "virtual_width_n", None) is not None
    wide = config.virtual_hidden_size if is_vwn else D

    # ---- one decoder layer of each kind
    attention = _attention(config)
    dense_layer = attention + _norm(config, D) + _mlp(config, ffn)  # + pre_mlp_layernorm
    moe_params, moe_inactive = _moe(config) if config.num_moe_experts else (0, 0)
    moe_layer = attention + _norm(config, D) + moe_params
    ghc_per_layer = 2 * _ghc(config) if is_vwn else 0

    pattern = moe_layer_pattern(config)
    decoder = sum(moe_layer if is_moe else dense_layer for is_moe in pattern)
    decoder += ghc_per_layer * len(pattern)
    inactive = moe_inactive * sum(pattern)

    # ---- final norm (+ collapse)
    final = _norm(config, D)
    vwn = ghc_per_layer * len(pattern)
    if is_vwn and config.vwn_collapse != "none":
        collapse = D * wide + (wide if config.vwn_collapse == "norm_linear" else 0)
        final += collapse
        vwn += collapse

    # ---- embedding and head
    positions = config.seq_length if config.position_embedding_type == "learned_absolute" else 0
    if is_vwn and config.vwn_embedding == "factorized":
        embedding = vocab * D + positions * D + wide * D
        vwn += wide * D
    else:
        embedding = (vocab + positions) * wide
        vwn += (vocab + positions) * (wide - D)
    tied = bool(config.share_embeddings_and_output_weights)
    output_layer = 0 if tied else vocab * D

    # ---- multi-token prediction (depths share the embedding and the head)
    mtp = 0
    depths = config.mtp_num_layers or 0
    if depths:
        built = 1 if getattr(config, "mtp_use_repeated_layer", False) else depths
        last_is_moe = pattern[-1]
        layer = (moe_layer if last_is_moe else dense_layer) + ghc_per_layer
        if is_vwn:  # hnorm, enorm over D', block-wise mixer Linear(2d -> d)
            d = config.ghc_segment_size
            per_depth = 2 * _norm(config, wide) + 2 * d * d + layer
            vwn += built * (2 * _norm(config, wide) + 2 * d * d + ghc_per_layer)
        else:  # enorm, hnorm, eh_proj (2D -> D, no bias), final_layernorm
            per_depth = 2 * _norm(config, D) + 2 * D * D + layer + _norm(config, D)
        mtp = built * per_depth
        if last_is_moe:
            inactive += built * moe_inactive

    total = embedding + decoder + final + output_layer + mtp
    return ParameterCount(total=total, activated=total - inactive, embedding=embedding,
                          output_layer=output_layer, vwn=vwn, mtp=mtp)


def format_count(value: int) -> str:
    """1234567890 -> '1.23B', 456789 -> '0.46M'."""
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    return f"{value / 1e6:.2f}M"
