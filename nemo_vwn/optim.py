"""Optimizer parameter groups for VWN models (megatron-core ``config_overrides``).

Weight decay (docs/method.md §4):
    none   static A/B (``static_alpha``, ``static_beta``), norm gains (GHC's shared gain, the
           collapse group norm, all RMSNorm/LayerNorm weights), biases, and the DGHC scales S_A/S_B
           unless ``ghc_scale_weight_decay`` ([choice]) is set
    decay  the dynamic projections W_A, W_B and every other matrix (embedding tables, W_reduce,
           the MTP mixer, attention/MLP/MoE weights)

VWN modules tag their no-decay parameters with ``nemo_vwn.ghc.NO_WEIGHT_DECAY_ATTR``; this module
adds one ``ParamKey(attr=...)`` override on top of megatron's standard ones (1-D params and
biases), so grouping works with every megatron optimizer, the distributed optimizer included.
"""

from __future__ import annotations

from megatron.core.optimizer import (
    OptimizerConfig,
    ParamKey,
    get_megatron_optimizer,
    get_standard_config_overrides,
)

from nemo_vwn.ghc import NO_WEIGHT_DECAY_ATTR


def vwn_config_overrides(optimizer_config: OptimizerConfig) -> dict:
    """megatron's standard overrides plus: no weight decay for parameters VWN tagged."""
    overrides = dict(get_standard_config_overrides(optimizer_config) or {})
    overrides[ParamKey(attr=NO_WEIGHT_DECAY_ATTR)] = {"wd_mult": 0.0}
    return overrides


def get_vwn_megatron_optimizer(optimizer_config: OptimizerConfig, model_chunks, **kwargs):
    """``get_megatron_optimizer`` with the VWN parameter groups."""
    kwargs.setdefault("config_overrides", vwn_config_overrides(optimizer_config))
    return get_megatron_optimizer(optimizer_config, model_chunks, **kwargs)


def weight_decay_by_name(optimizer) -> dict:
    """{parameter name: effective weight decay} for a megatron optimizer (for inspection/tests)."""
    names = {}
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for model_chunk in getattr(opt, "model_chunks", []) or []:
            for name, param in model_chunk.named_parameters():
                names[id(param)] = name
    result = {}
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in opt.optimizer.param_groups:
            params = group.get("orig_params") or group["params"]
            for param in params:
                key = names.get(id(param), f"<unnamed {tuple(param.shape)}>")
                result[key] = group["weight_decay"]
    return result
