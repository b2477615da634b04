"""ModuleSpecs for VWN layers and decoder blocks.

A VWN layer spec is an upstream GPT layer spec (local or Transformer Engine, dense or MoE) with
three changes, so every attention/MLP/MoE/norm choice stays upstream's:
    module                 TransformerLayer -> VWNTransformerLayer
    self_attn_bda/mlp_bda  bias+dropout+residual -> bias+dropout only (GHC does the residual)
    *_ghc                  one GHC per sub-layer
and, for the local backend, the torch norms are built by ``norms.SequenceParallelTorchNorm`` so
that sequence parallelism works without Transformer Engine.

A VWN block spec puts ``VWNOutputNorm`` (collapse + final norm) in the block's final-norm slot.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_layer_local_spec,
)
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import TransformerLayer

from nemo_vwn.bias_dropout import get_bias_dropout_branch
from nemo_vwn.collapse import VWNOutputNorm
from nemo_vwn.ghc import GHC
from nemo_vwn.layer import VWNLayerMixin, VWNTransformerLayer, VWNTransformerLayerSubmodules
from nemo_vwn.norms import SequenceParallelTorchNorm

try:  # Transformer Engine is optional everywhere
    from megatron.core.extensions.transformer_engine import HAVE_TE
except ImportError:  # pragma: no cover - depends on the installed megatron-core
    HAVE_TE = False


def resolve_transformer_engine(use_transformer_engine: Optional[bool]) -> bool:
    if use_transformer_engine is None:
        return bool(HAVE_TE)
    if use_transformer_engine and not HAVE_TE:
        raise ImportError(
            "use_transformer_engine=True but Transformer Engine is not importable; "
            "pass use_transformer_engine=False (or None to pick automatically)"
        )
    return bool(use_transformer_engine)


def _local_norm(builder):
    return SequenceParallelTorchNorm if builder is WrappedTorchNorm else builder


def _swap_local_norms(submodules):
    """Replace WrappedTorchNorm (no SP) by the SP-capable torch norm, recursively."""
    if not dataclasses.is_dataclass(submodules):
        return submodules
    changes = {}
    for field in dataclasses.fields(submodules):
        value = getattr(submodules, field.name)
        if value is WrappedTorchNorm:
            changes[field.name] = SequenceParallelTorchNorm
        elif isinstance(value, ModuleSpec) and dataclasses.is_dataclass(value.submodules):
            changes[field.name] = dataclasses.replace(
                value, submodules=_swap_local_norms(value.submodules)
            )
    return dataclasses.replace(submodules, **changes) if changes else submodules


def _vwn_layer_class(module):
    """The VWN class wrapping an upstream layer class (None if there is none)."""
    from megatron.core.ssm.mamba_layer import MambaLayer
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.transformer.transformer_layer import MoETransformerLayer

    from nemo_vwn.layer import VWNMambaLayer, VWNMLPLayer, VWNMoETransformerLayer

    return {TransformerLayer: VWNTransformerLayer, MoETransformerLayer: VWNMoETransformerLayer,
            MLPLayer: VWNMLPLayer, MambaLayer: VWNMambaLayer}.get(module)


def to_vwn_layer_spec(layer_spec: ModuleSpec) -> ModuleSpec:
    """Turn an upstream layer spec into its VWN spec: the VWN layer class, branch-only
    bias+dropout, and one GHC per present sub-layer (attention, MLP/MoE, or a Mamba mixer).

    Handles megatron's TransformerLayer, MoETransformerLayer, MLPLayer (hybrid stacks) and
    MambaLayer; local norms become the sequence-parallel-capable torch norm.
    """
    from nemo_vwn.layer import VWNMambaLayer, VWNMambaLayerSubmodules

    module = layer_spec.module
    if isinstance(module, type) and (issubclass(module, VWNLayerMixin)
                                     or issubclass(module, VWNMambaLayer)):
        return layer_spec
    target = _vwn_layer_class(module) if isinstance(module, type) else None
    if target is None:
        raise TypeError(
            f"no VWN wrapper for layer module {module!r}; supported: TransformerLayer, "
            "MoETransformerLayer, MLPLayer, MambaLayer"
        )
    base = _swap_local_norms(layer_spec.submodules)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    if target is VWNMambaLayer:
        fields.update(mamba_bda=get_bias_dropout_branch, mixer_ghc=ModuleSpec(module=GHC))
        submodules = VWNMambaLayerSubmodules(**fields)
    else:
        has_attention = base.self_attention is not IdentityOp
        has_mlp = base.mlp is not IdentityOp
        fields.update(
            self_attn_bda=get_bias_dropout_branch if has_attention else base.self_attn_bda,
            mlp_bda=get_bias_dropout_branch if has_mlp else base.mlp_bda,
            self_attention_ghc=ModuleSpec(module=GHC) if has_attention else IdentityOp,
            mlp_ghc=ModuleSpec(module=GHC) if has_mlp else IdentityOp,
        )
        submodules = VWNTransformerLayerSubmodules(**fields)
    return ModuleSpec(module=target, params=dict(layer_spec.params), submodules=submodules)


def get_vwn_layer_spec(
    num_experts: Optional[int] = None,
    moe_grouped_gemm: bool = False,
    qk_layernorm: bool = False,
    multi_latent_attention: bool = False,
    normalization: str = "RMSNorm",
    qk_l2_norm: bool = False,
    use_transformer_engine: Optional[bool] = None,
) -> ModuleSpec:
    """ModuleSpec of the VWN TransformerLayer, dense (``num_experts=None``) or MoE.

    ``use_transformer_engine``: None picks TE when importable, else the local (torch) modules.
    """
    if resolve_transformer_engine(use_transformer_engine):
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        base = get_gpt_layer_with_transformer_engine_spec(
            num_experts=num_experts,
            moe_grouped_gemm=moe_grouped_gemm,
            qk_layernorm=qk_layernorm,
            multi_latent_attention=multi_latent_attention,
            qk_l2_norm=qk_l2_norm,
        )
    else:
        base = get_gpt_layer_local_spec(
            num_experts=num_experts,
            moe_grouped_gemm=moe_grouped_gemm,
            qk_layernorm=qk_layernorm,
            multi_latent_attention=multi_latent_attention,
            normalization=normalization,
            qk_l2_norm=qk_l2_norm,
        )
    return to_vwn_layer_spec(base)


def get_vwn_decoder_block_spec(
    config,
    use_transformer_engine: Optional[bool] = None,
    normalization: Optional[str] = None,
    qk_l2_norm: bool = False,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """Per-stage VWN block spec, like upstream's ``get_gpt_decoder_block_spec``.

    Dense and MoE layers follow ``config.moe_layer_freq``; the block's final-norm slot holds
    ``VWNOutputNorm`` (collapse + final norm).
    """
    block = get_gpt_decoder_block_spec(
        config,
        use_transformer_engine=resolve_transformer_engine(use_transformer_engine),
        normalization=normalization or config.normalization,
        qk_l2_norm=qk_l2_norm,
        vp_stage=vp_stage,
        pp_rank=pp_rank,
    )
    converted: dict[int, ModuleSpec] = {}
    layer_specs = []
    for spec in block.layer_specs:
        if id(spec) not in converted:
            converted[id(spec)] = to_vwn_layer_spec(spec)
        layer_specs.append(converted[id(spec)])
    return TransformerBlockSubmodules(layer_specs=layer_specs, layer_norm=VWNOutputNorm)


def as_vwn_block_spec(spec, config, vp_stage: Optional[int] = None) -> TransformerBlockSubmodules:
    """Normalise what a user passes as ``transformer_layer_spec`` into a VWN block spec.

    Accepts a VWN layer ModuleSpec (fanned out over this stage's layers), a VWN block spec, or a
    ModuleSpec of TransformerBlock with VWN submodules. Rejects stock (non-VWN) specs.
    """
    if isinstance(spec, ModuleSpec) and isinstance(spec.module, type):
        if issubclass(spec.module, TransformerBlock):
            spec = spec.submodules
        elif issubclass(spec.module, VWNLayerMixin):
            num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
            return TransformerBlockSubmodules(layer_specs=[spec] * num_layers,
                                              layer_norm=VWNOutputNorm)
    if isinstance(spec, TransformerBlockSubmodules):
        stock = [s for s in spec.layer_specs
                 if not (isinstance(s.module, type) and issubclass(s.module, VWNLayerMixin))]
        if stock:
            raise TypeError(
                "VWNGPTModel needs VWN layer specs; got "
                f"{sorted({getattr(s.module, '__name__', str(s.module)) for s in stock})}. "
                "Use nemo_vwn.get_vwn_decoder_block_spec() or get_vwn_layer_spec()"
            )
        if spec.layer_norm is not VWNOutputNorm:
            raise TypeError("a VWN block spec must hold VWNOutputNorm in its layer_norm slot")
        return spec
    raise TypeError(
        "transformer_layer_spec must be a VWN layer ModuleSpec or a VWN block spec "
        "(nemo_vwn.get_vwn_layer_spec / get_vwn_decoder_block_spec), got "
        f"{type(spec).__name__}"
    )
