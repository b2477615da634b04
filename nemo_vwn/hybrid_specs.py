"""Hybrid-stack specs (megatron's HybridModel: one sub-layer per layer, pattern like "*-*E").

    get_vwn_hybrid_stack_spec(...)     the VWN stack: every layer type wrapped with one GHC,
                                       ``VWNHybridStack`` (collapse + final norm)
    local_hybrid_stack_spec(...)       a stock stack from megatron's local (non-TE) modules, for
                                       CPU tests and baseline twins where TE is absent

Layer symbols: ``*`` attention, ``-`` MLP, ``E`` MoE, ``M`` Mamba (TE spec only: Mamba's mixer
needs the mamba-ssm kernels), ``G``/``D``/``+`` upstream's other TE layer types.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_submodules
from megatron.core.models.hybrid.hybrid_block import HybridStackSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)

from nemo_vwn.layer_specs import resolve_transformer_engine, to_vwn_layer_spec
from nemo_vwn.norms import LocalFinalNormHybridStack

_LAYER_FIELDS = ("mamba_layer", "gdn_layer", "attention_layer", "dsa_layer", "mla_layer",
                 "mlp_layer", "moe_layer")


def local_hybrid_stack_spec(
    normalization: str = "RMSNorm", qk_layernorm: bool = False
) -> ModuleSpec:
    """A stock hybrid stack from megatron's local modules: attention, MLP and MoE layers."""
    dense = get_gpt_layer_local_submodules(normalization=normalization, qk_layernorm=qk_layernorm)
    moe = get_gpt_layer_local_submodules(num_experts=1, normalization=normalization)
    keys = dense.sharded_state_dict_keys_map
    attention = dataclasses.replace(
        dense, pre_mlp_layernorm=IdentityOp, mlp=IdentityOp, mlp_bda=IdentityFuncOp,
        sharded_state_dict_keys_map={k: v for k, v in keys.items() if k.startswith("input_")},
    )
    mlp = TransformerLayerSubmodules(
        pre_mlp_layernorm=dense.pre_mlp_layernorm, mlp=dense.mlp, mlp_bda=dense.mlp_bda,
        sharded_state_dict_keys_map={k: v for k, v in keys.items() if k.startswith("pre_mlp")},
    )
    moe_layer = TransformerLayerSubmodules(pre_mlp_layernorm=moe.pre_mlp_layernorm, mlp=moe.mlp,
                                           mlp_bda=moe.mlp_bda)
    return ModuleSpec(
        module=LocalFinalNormHybridStack,
        submodules=HybridStackSubmodules(
            attention_layer=ModuleSpec(module=TransformerLayer, submodules=attention),
            mlp_layer=ModuleSpec(module=MLPLayer, submodules=mlp),
            moe_layer=ModuleSpec(module=MoETransformerLayer, submodules=moe_layer),
        ),
    )


def to_vwn_hybrid_stack_spec(stack_spec: ModuleSpec) -> ModuleSpec:
    """Every layer spec of an upstream hybrid stack spec wrapped with GHC; ``VWNHybridStack``."""
    from nemo_vwn.hybrid_model import VWNHybridStack

    submodules = stack_spec.submodules
    changes = {}
    for name in _LAYER_FIELDS:
        spec = getattr(submodules, name)
        if spec is not IdentityOp:
            changes[name] = to_vwn_layer_spec(copy.deepcopy(spec))
    changes["mtp_block_spec"] = None  # VWN hybrid MTP is not implemented (rejected by the model)
    return ModuleSpec(module=VWNHybridStack, params=dict(stack_spec.params),
                      submodules=dataclasses.replace(submodules, **changes))


def get_vwn_hybrid_stack_spec(use_transformer_engine: Optional[bool] = None,
                              normalization: str = "RMSNorm") -> ModuleSpec:
    """The VWN hybrid stack: upstream's TE stack (all layer types, Mamba included) when TE is
    importable, else megatron's local attention / MLP / MoE layers."""
    if resolve_transformer_engine(use_transformer_engine):
        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec

        return to_vwn_hybrid_stack_spec(hybrid_stack_spec)
    return to_vwn_hybrid_stack_spec(local_hybrid_stack_spec(normalization=normalization))
