"""Config mapping between Megatron(-Bridge) VWN providers and the HF ``VWNHFConfig``.

* ``hf_config_from_provider(provider)``: a VWN provider -> ``VWNHFConfig``, refusing (with every
  offending field named, ``UnsupportedFeatureError``) Megatron features the HF ``VWNForCausalLM``
  does not implement;
* ``provider_from_hf_config(config)``: the reverse, a ``VWNModelProvider`` computing the same
  function as ``VWNForCausalLM(config)`` (vocabulary padding reproduced exactly where possible);
* ``activation_name`` / ``activation_func``: megatron's activation objects <-> HF names.

The parameter mappings are ``nemo_vwn.hf.param_mapping``; the registered bridge that uses both is
``nemo_vwn.hf.bridge``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.activations import fast_gelu, quick_gelu, squared_relu

from nemo_vwn.bridge.provider import VWNModelProvider
from nemo_vwn.hf.configuration_vwn import VWNHFConfig


class UnsupportedFeatureError(ValueError):
    """A Megatron setting the HF ``VWNForCausalLM`` does not implement (named in the message)."""


# ------------------------------------------------------------------------------ activations
def _activation_table():
    table = [(F.gelu, "gelu"), (F.silu, "silu"), (F.relu, "relu"), (squared_relu, "squared_relu"),
             (fast_gelu, "fast_gelu"), (quick_gelu, "quick_gelu")]
    try:  # Bridge's activation map uses this second quick_gelu object
        from megatron.core.fusions.fused_bias_geglu import quick_gelu as fused_quick_gelu

        table.append((fused_quick_gelu, "quick_gelu"))
    except ImportError:  # pragma: no cover
        pass
    return table


def activation_name(func) -> str:
    for candidate, name in _activation_table():
        if func is candidate:
            return name
    raise UnsupportedFeatureError(
        f"activation_func={getattr(func, '__name__', func)!r} has no HF equivalent; supported: "
        "F.gelu, F.silu, F.relu, squared_relu, fast_gelu, quick_gelu")


def activation_func(name: str):
    for candidate, known in _activation_table():
        if known == name:
            return candidate
    raise UnsupportedFeatureError(f"hidden_act={name!r} is not one of "
                                  f"{sorted({n for _, n in _activation_table()})}")


# ------------------------------------------------------------------------------ config
# Megatron fields that must hold their default for the HF class to compute the same function.
_MUST_BE_DEFAULT = (
    ("multi_latent_attention", False), ("rotary_interleaved", False), ("rope_scaling", False),
    ("seq_len_interpolation_factor", None), ("window_size", None), ("softmax_type", "vanilla"),
    ("qk_l2_norm", False), ("attention_output_gate", False), ("no_rope_freq", None),
    ("experimental_attention_variant", None), ("fp32_residual_connection", False),
    ("apply_residual_connection_post_layernorm", False), ("glu_linear_offset", 0.0),
    ("activation_func_clamp_value", None), ("use_mup", False), ("heterogeneous_block_specs", False),
    ("moe_shared_expert_intermediate_size", None), ("moe_latent_size", None),
    ("moe_router_num_groups", None), ("moe_router_group_topk", None),
    ("moe_expert_capacity_factor", None), ("moe_apply_probs_on_input", False),
    ("moe_router_force_load_balancing", False), ("moe_router_force_biased", None),
)
_ROUTING_TYPES = ("aux_loss", "seq_aux_loss", "global_aux_loss", "none")
_ROUTER_DTYPES = {None: None, "fp32": "fp32", "fp64": "fp64"}


def _unsupported(provider) -> list[str]:
    problems = []
    for name, default in _MUST_BE_DEFAULT:
        value = getattr(provider, name, default)
        if value != default and not (default is False and value is None):
            problems.append(f"{name}={value!r} (HF export supports only {default!r})")
    if provider.position_embedding_type not in ("rope", "learned_absolute", "none"):
        problems.append(f"position_embedding_type={provider.position_embedding_type!r} "
                        "(supported: rope, learned_absolute, none)")
    if provider.normalization not in ("RMSNorm", "LayerNorm"):
        problems.append(f"normalization={provider.normalization!r} (supported: RMSNorm, LayerNorm)")
    if (getattr(provider, "apply_query_key_layer_scaling", False)
            and getattr(provider, "fp16", False)):
        problems.append("apply_query_key_layer_scaling=True with fp16")
    if provider.num_moe_experts:
        if provider.add_bias_linear:
            problems.append("add_bias_linear=True with MoE (expert/router biases)")
        if getattr(provider, "moe_router_load_balancing_type", "aux_loss") not in _ROUTING_TYPES:
            problems.append(f"moe_router_load_balancing_type="
                            f"{provider.moe_router_load_balancing_type!r} (changes routing at "
                            f"inference; supported: {', '.join(_ROUTING_TYPES)})")
        if provider.moe_router_score_function not in ("softmax", "sigmoid", "sqrtsoftplus"):
            problems.append(f"moe_router_score_function={provider.moe_router_score_function!r}")
        if getattr(provider, "moe_router_dtype", None) not in _ROUTER_DTYPES:
            problems.append(f"moe_router_dtype={provider.moe_router_dtype!r}")
    return problems


def _moe_layer_pattern(provider) -> Optional[list[int]]:
    freq = getattr(provider, "moe_layer_freq", 1)
    layers = provider.num_layers
    if isinstance(freq, int):
        pattern = [1 if i % freq == 0 else 0 for i in range(layers)]
    else:
        pattern = [int(v) for v in freq]
    return None if all(pattern) else pattern


def hf_config_from_provider(provider, vocab_rows: Optional[int] = None) -> VWNHFConfig:
    """The ``VWNHFConfig`` of a VWN provider (a ``VWNModelProvider`` or any VWN config).

    ``vocab_rows``: the (padded) number of rows of the Megatron embedding table, which is the
    HF ``vocab_size``; defaults to the provider's unpadded vocabulary.
    Raises ``UnsupportedFeatureError`` naming every setting the HF class does not implement.
    """
    if getattr(provider, "virtual_width_n", None) is None:
        raise UnsupportedFeatureError(
            f"{type(provider).__name__} is not a VWN config (no virtual_width_n); export "
            "baseline GPT checkpoints with Megatron-Bridge's own bridges")
    problems = _unsupported(provider)
    act = None
    try:
        act = activation_name(provider.activation_func)
    except UnsupportedFeatureError as exc:
        problems.append(str(exc))
    if problems:
        raise UnsupportedFeatureError("the HF VWNForCausalLM does not implement: "
                                      + "; ".join(problems))
    moe = bool(provider.num_moe_experts)
    dtype = "bfloat16" if provider.bf16 else "float16" if provider.fp16 else "float32"
    return VWNHFConfig(
        vocab_size=vocab_rows or provider.vocab_size,
        hidden_size=provider.hidden_size,
        intermediate_size=provider.ffn_hidden_size,
        num_hidden_layers=provider.num_layers,
        num_attention_heads=provider.num_attention_heads,
        num_key_value_heads=provider.num_query_groups or provider.num_attention_heads,
        head_dim=provider.kv_channels,
        hidden_act=act,
        gated_linear_unit=bool(provider.gated_linear_unit),
        normalization=provider.normalization,
        norm_epsilon=provider.layernorm_epsilon,
        norm_zero_centered_gamma=bool(provider.layernorm_zero_centered_gamma),
        qkv_bias=bool(provider.add_bias_linear or provider.add_qkv_bias),
        linear_bias=bool(provider.add_bias_linear),
        qk_layernorm=bool(provider.qk_layernorm),
        position_embedding_type=provider.position_embedding_type,
        rope_theta=float(provider.rotary_base),
        partial_rotary_factor=float(provider.rotary_percent),
        max_position_embeddings=provider.seq_length,
        attention_softmax_scale=getattr(provider, "softmax_scale", None),
        attention_dropout=provider.attention_dropout,
        hidden_dropout=provider.hidden_dropout,
        num_experts=provider.num_moe_experts if moe else None,
        num_experts_per_tok=provider.moe_router_topk if moe else 2,
        moe_intermediate_size=((provider.moe_ffn_hidden_size or provider.ffn_hidden_size)
                               if moe else None),
        moe_layer_pattern=_moe_layer_pattern(provider) if moe else None,
        router_score_function=provider.moe_router_score_function if moe else "softmax",
        router_pre_softmax=bool(provider.moe_router_pre_softmax) if moe else False,
        router_topk_scaling_factor=provider.moe_router_topk_scaling_factor if moe else None,
        router_expert_bias=bool(provider.moe_router_enable_expert_bias) if moe else False,
        router_dtype=getattr(provider, "moe_router_dtype", None) if moe else None,
        virtual_width_n=provider.virtual_width_n,
        virtual_width_m=provider.virtual_width_m,
        ghc_dynamic=bool(provider.ghc_dynamic),
        ghc_fp32_coefficients=bool(provider.ghc_fp32_coefficients),
        vwn_embedding=provider.vwn_embedding,
        vwn_embedding_up_act=provider.vwn_embedding_up_act,
        vwn_collapse=provider.vwn_collapse,
        mtp_num_layers=provider.mtp_num_layers or 0,
        mtp_use_repeated_layer=bool(getattr(provider, "mtp_use_repeated_layer", False)),
        megatron_vocab_size=provider.vocab_size,
        megatron_make_vocab_size_divisible_by=provider.make_vocab_size_divisible_by,
        initializer_range=provider.init_method_std,
        tie_word_embeddings=bool(provider.share_embeddings_and_output_weights),
        architectures=["VWNForCausalLM"],
        dtype=dtype,
    )


def _vocab_for_megatron(config: VWNHFConfig) -> tuple[int, int, bool]:
    """(vocab_size, make_vocab_size_divisible_by, should_pad_vocab) of a provider whose TP=1
    embedding table has ``config.vocab_size`` rows: Megatron's own values when they give that
    table (exact round trip), else the table size itself, unpadded."""
    original, divisor = config.megatron_vocab_size, config.megatron_make_vocab_size_divisible_by
    if original == config.vocab_size:
        return original, divisor or 128, False
    if original and divisor and -(-original // divisor) * divisor == config.vocab_size:
        return original, divisor, True
    divisor = 128
    while config.vocab_size % divisor:
        divisor //= 2
    return config.vocab_size, divisor, False


def provider_from_hf_config(config: VWNHFConfig, **overrides) -> VWNModelProvider:
    """A ``VWNModelProvider`` computing the same function as ``VWNForCausalLM(config)``."""
    vocab, divisor, pad = _vocab_for_megatron(config)
    dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    moe = bool(config.num_experts)
    fields = dict(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_key_value_heads,
        kv_channels=config.head_dim,
        activation_func=activation_func(config.hidden_act),
        gated_linear_unit=config.gated_linear_unit,
        normalization=config.normalization,
        layernorm_epsilon=config.norm_epsilon,
        layernorm_zero_centered_gamma=config.norm_zero_centered_gamma,
        add_bias_linear=config.linear_bias,
        add_qkv_bias=config.qkv_bias,
        qk_layernorm=config.qk_layernorm,
        position_embedding_type=config.position_embedding_type,
        rotary_base=config.rope_theta,
        rotary_percent=config.partial_rotary_factor,
        seq_length=config.max_position_embeddings,
        softmax_scale=config.attention_softmax_scale,
        attention_dropout=config.attention_dropout,
        hidden_dropout=config.hidden_dropout,
        vocab_size=vocab,
        make_vocab_size_divisible_by=divisor,
        should_pad_vocab=pad,
        share_embeddings_and_output_weights=config.tie_word_embeddings,
        init_method_std=config.initializer_range,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        virtual_width_n=config.virtual_width_n,
        virtual_width_m=config.virtual_width_m,
        ghc_dynamic=config.ghc_dynamic,
        ghc_fp32_coefficients=config.ghc_fp32_coefficients,
        vwn_embedding=config.vwn_embedding,
        vwn_embedding_up_act=config.vwn_embedding_up_act,
        vwn_collapse=config.vwn_collapse,
        mtp_num_layers=config.mtp_num_layers or None,
        mtp_use_repeated_layer=config.mtp_use_repeated_layer,
    )
    if config.linear_bias and not config.qkv_bias:
        raise UnsupportedFeatureError("linear_bias=True with qkv_bias=False has no Megatron "
                                      "equivalent (add_bias_linear also biases QKV)")
    if moe:
        fields.update(
            num_moe_experts=config.num_experts,
            moe_router_topk=config.num_experts_per_tok,
            moe_ffn_hidden_size=config.moe_intermediate_size,
            moe_layer_freq=config.moe_layer_pattern or 1,
            moe_router_score_function=config.router_score_function,
            moe_router_pre_softmax=config.router_pre_softmax,
            moe_router_topk_scaling_factor=config.router_topk_scaling_factor,
            moe_router_enable_expert_bias=config.router_expert_bias,
            moe_router_dtype=config.router_dtype,
        )
    fields.update(overrides)
    return VWNModelProvider(**fields)


__all__ = ["UnsupportedFeatureError", "activation_func", "activation_name",
           "hf_config_from_provider", "provider_from_hf_config"]
