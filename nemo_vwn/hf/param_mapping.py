"""Parameter mappings between ``VWNGPTModel`` and the HF ``VWNForCausalLM`` (Megatron-Bridge).

``mapping_registry_for(config)``: Bridge's parameter mappings for one ``VWNHFConfig``:
``QKVMapping`` (megatron's fused, per query-group interleaved QKV <-> q/k/v), ``GatedMLPMapping``
(fc1 = [gate; up]), ``AutoMapping`` (embedding, norms, projections, router, experts: TP layout
detected from the module), and ``ReplicatedMapping`` for the VWN tensors (GHC static/dynamic
parameters, collapse, factorized up-projection, MTP norms and block mixer), which are replicated
over tensor-parallel ranks. Both the local-spec names (``input_layernorm``,
``experts.local_experts.E``) and the Transformer Engine names (``linear_qkv.layer_norm_weight``,
grouped ``experts.linear_fc1.weightE``) map.
"""

from __future__ import annotations

from megatron.bridge.models.conversion.mapping_registry import MegatronMappingRegistry
from megatron.bridge.models.conversion.param_mapping import (
    AutoMapping,
    GatedMLPMapping,
    QKVMapping,
    ReplicatedMapping,
)

from nemo_vwn.hf.configuration_vwn import VWNHFConfig

GHC_PARAMS = ("static_alpha", "static_beta", "norm_weight", "dynamic_alpha_proj",
              "dynamic_beta_proj", "dynamic_alpha_scale", "dynamic_beta_scale")


def _layer_mappings(mg: str, hf: str, config: VWNHFConfig, moe: bool) -> list:
    """Mappings of one VWN layer: megatron prefix ``mg`` (ends with '.'), HF prefix ``hf``."""
    maps = []
    auto = [  # (megatron suffix, HF suffix)
        ("input_layernorm.weight", "input_layernorm.weight"),
        ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
        ("pre_mlp_layernorm.weight", "pre_mlp_layernorm.weight"),
        ("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"),
        ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
        ("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
        ("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"),
    ]
    if config.normalization == "LayerNorm":
        auto += [("input_layernorm.bias", "input_layernorm.bias"),
                 ("self_attention.linear_qkv.layer_norm_bias", "input_layernorm.bias"),
                 ("pre_mlp_layernorm.bias", "pre_mlp_layernorm.bias"),
                 ("mlp.linear_fc1.layer_norm_bias", "pre_mlp_layernorm.bias"),
                 ("self_attention.q_layernorm.bias", "self_attn.q_norm.bias"),
                 ("self_attention.k_layernorm.bias", "self_attn.k_norm.bias")]
    if config.linear_bias:
        auto.append(("self_attention.linear_proj.bias", "self_attn.o_proj.bias"))
    maps += [AutoMapping(mg + m, hf + h) for m, h in auto]
    qkv = {k: f"{hf}self_attn.{k}_proj" for k in "qkv"}
    maps.append(QKVMapping(mg + "self_attention.linear_qkv.weight",
                           **{k: v + ".weight" for k, v in qkv.items()}))
    if config.qkv_bias:
        maps.append(QKVMapping(mg + "self_attention.linear_qkv.bias",
                               **{k: v + ".bias" for k, v in qkv.items()}))
    for ghc_mg, ghc_hf in (("self_attention_ghc", "attn_ghc"), ("mlp_ghc", "mlp_ghc")):
        maps += [ReplicatedMapping(f"{mg}{ghc_mg}.{p}", f"{hf}{ghc_hf}.{p}") for p in GHC_PARAMS]
    if moe:
        maps.append(AutoMapping(mg + "mlp.router.weight", hf + "mlp.router.weight"))
        maps.append(AutoMapping(mg + "mlp.router.expert_bias", hf + "mlp.router.expert_bias"))
        for mg_fc1, mg_fc2 in (("mlp.experts.local_experts.*.linear_fc1.weight",
                                "mlp.experts.local_experts.*.linear_fc2.weight"),
                               ("mlp.experts.linear_fc1.weight*",
                                "mlp.experts.linear_fc2.weight*")):
            maps += _mlp_mappings(mg + mg_fc1, mg + mg_fc2, hf + "mlp.experts.*.", config, "weight")
    else:
        maps += _mlp_mappings(mg + "mlp.linear_fc1.weight", mg + "mlp.linear_fc2.weight",
                              hf + "mlp.", config, "weight")
        if config.linear_bias:
            maps += _mlp_mappings(mg + "mlp.linear_fc1.bias", mg + "mlp.linear_fc2.bias",
                                  hf + "mlp.", config, "bias")
    return maps


def _mlp_mappings(fc1: str, fc2: str, hf: str, config: VWNHFConfig, kind: str) -> list:
    maps = [AutoMapping(fc2, f"{hf}down_proj.{kind}")]
    if config.gated_linear_unit:
        maps.append(GatedMLPMapping(fc1, gate=f"{hf}gate_proj.{kind}", up=f"{hf}up_proj.{kind}"))
    else:
        maps.append(AutoMapping(fc1, f"{hf}up_proj.{kind}"))
    return maps


def mapping_registry_for(config: VWNHFConfig) -> MegatronMappingRegistry:
    """Every parameter of ``VWNGPTModel`` <-> ``VWNForCausalLM`` for one config."""
    maps = [
        AutoMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        ReplicatedMapping("embedding.up_proj_weight", "model.embed_up_proj"),
        ReplicatedMapping("embedding.position_embeddings.weight", "model.embed_positions.weight"),
        ReplicatedMapping("decoder.final_layernorm.weight", "model.norm.weight"),
        ReplicatedMapping("decoder.final_layernorm.bias", "model.norm.bias"),
        ReplicatedMapping("decoder.final_layernorm.collapse.group_norm_weight",
                          "model.collapse.group_norm_weight"),
        ReplicatedMapping("decoder.final_layernorm.collapse.reduce_weight",
                          "model.collapse.reduce.weight"),
        AutoMapping("output_layer.weight", "lm_head.weight"),
    ]
    layers = config.num_hidden_layers
    moe_layers = sorted({config.is_moe_layer(i) for i in range(layers)})
    for moe in moe_layers:
        if len(moe_layers) == 1:
            maps += _layer_mappings("decoder.layers.*.", "model.layers.*.", config, moe)
        else:  # mixed dense/MoE: one set of mappings per layer index
            for i in range(layers):
                if config.is_moe_layer(i) == moe:
                    maps += _layer_mappings(f"decoder.layers.{i}.", f"model.layers.{i}.",
                                            config, moe)
    if config.mtp_num_layers:
        mtp_moe = config.is_moe_layer(layers - 1)
        maps += _layer_mappings("mtp.layers.*.mtp_model_layer.", "model.mtp_layers.*.layer.",
                                config, mtp_moe)
        maps += [ReplicatedMapping("mtp.layers.*.hnorm.weight", "model.mtp_layers.*.hnorm.weight"),
                 ReplicatedMapping("mtp.layers.*.enorm.weight", "model.mtp_layers.*.enorm.weight"),
                 ReplicatedMapping("mtp.layers.*.block_mixer.weight",
                                   "model.mtp_layers.*.block_mixer.weight")]
        if config.normalization == "LayerNorm":
            maps += [ReplicatedMapping("mtp.layers.*.hnorm.bias", "model.mtp_layers.*.hnorm.bias"),
                     ReplicatedMapping("mtp.layers.*.enorm.bias", "model.mtp_layers.*.enorm.bias")]
    return MegatronMappingRegistry(*maps)


__all__ = ["GHC_PARAMS", "mapping_registry_for"]
