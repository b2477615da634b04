"""The VWN transformer layer: Megatron's TransformerLayer with a GHC around each sub-layer.

Data flow of one layer (the hidden state between layers is the wide state [s, b, n*d]):

    h  --GHC_attn.read-->  x [s,b,D] --(input norm, attention, bias+dropout)-->  z [s,b,D]
       --GHC_attn.write(z)-->  h'
    h' --GHC_mlp.read-->   x [s,b,D] --(pre-MLP norm, MLP/MoE, bias+dropout)-->  z
       --GHC_mlp.write(z)-->   h''

Everything inside a branch is Megatron's own code (``_forward_attention`` / ``_forward_mlp``: norms,
attention, MLP, MoE routing and dispatch, selective recompute of norms/MLP, offloading); the VWN
spec only swaps the ``*_bda`` slots for a branch-only bias+dropout (``bias_dropout.py``) so those
methods return the branch output z, and adds the two GHC slots. Nothing is forked from upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
)
from megatron.core.utils import make_viewless_tensor


@dataclass
class VWNTransformerLayerSubmodules(TransformerLayerSubmodules):
    """TransformerLayerSubmodules plus one GHC per sub-layer."""

    self_attention_ghc: Union[ModuleSpec, type] = IdentityOp
    mlp_ghc: Union[ModuleSpec, type] = IdentityOp


class VWNLayerMixin:
    """Wraps self-attention and the MLP/MoE of a Megatron transformer layer with GHC modules.

    Narrow overrides only: ``__init__`` builds the two GHC slots after the stock layer is built,
    ``forward`` threads the wide state through GHC.read -> stock branch -> GHC.write.
    """

    def __init__(self, config, submodules: VWNTransformerLayerSubmodules, layer_number: int = 1,
                 **kwargs):
        if submodules.self_attention_ghc is IdentityOp or submodules.mlp_ghc is IdentityOp:
            raise ValueError(
                f"{type(self).__name__} needs self_attention_ghc and mlp_ghc specs; "
                "use nemo_vwn.get_vwn_layer_spec()"
            )
        if submodules.cross_attention is not IdentityOp:
            raise ValueError("VWN layers do not support cross-attention (GPT decoders have none)")
        super().__init__(config=config, submodules=submodules, layer_number=layer_number, **kwargs)
        self.self_attention_ghc = build_module(
            submodules.self_attention_ghc, config=self.config, layer_number=self.layer_number
        )
        self.mlp_ghc = build_module(
            submodules.mlp_ghc, config=self.config, layer_number=self.layer_number
        )

    def forward(self, *args, **kwargs):
        """hidden_states [s, b, n*d] -> ([s, b, n*d], context). Same arguments as TransformerLayer."""
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]

        x, state = self.self_attention_ghc.read(hidden_states)  # x: [s, b, D]
        z, context = self._forward_attention(x, *args, **kwargs)  # z = F_attn(x): [s, b, D]
        hidden_states = self.self_attention_ghc.write(z, state)  # [s, b, n*d]

        x, state = self.mlp_ghc.read(hidden_states)
        z = self._forward_mlp(
            x,
            kwargs.get("inference_context", None),
            padding_mask=kwargs.get("padding_mask", None),
            packed_seq_params=kwargs.get("packed_seq_params", None),
        )
        hidden_states = self.mlp_ghc.write(z, state)

        output = make_viewless_tensor(
            inp=hidden_states, requires_grad=hidden_states.requires_grad, keep_graph=True
        )
        return output, context


class VWNTransformerLayer(VWNLayerMixin, TransformerLayer):
    """A Megatron ``TransformerLayer`` (dense MLP or MoE) whose residual stream is the wide state."""
