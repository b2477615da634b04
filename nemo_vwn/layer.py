"""VWN layers: megatron's transformer (and hybrid) layers with a GHC around each sub-layer.

docs/method.md §3 (eq. 1-3); the whole step is drawn in docs/architecture.md §1.

Data flow of a GPT layer (the hidden state between layers is the wide state [s, b, n*d]):

    h  --GHC_attn.read-->  x [s,b,D] --(input norm, attention, bias+dropout)-->  z [s,b,D]
       --GHC_attn.write(z)-->  h'
    h' --GHC_mlp.read-->   x [s,b,D] --(pre-MLP norm, MLP/MoE, bias+dropout)-->  z
       --GHC_mlp.write(z)-->   h''

(GHC_attn.write and GHC_mlp.read are one ``GHC.write_read`` call: a backend may fuse them.)

Everything inside a branch is Megatron's own code (``_forward_attention`` / ``_forward_mlp``: norms,
attention, MLP, MoE routing and dispatch, selective recompute of norms/MLP, offloading); the VWN
spec only swaps the ``*_bda`` slots for a branch-only bias+dropout (``bias_dropout.py``) so those
methods return the branch output z, and adds one GHC slot per present sub-layer. A hybrid-stack
layer has one sub-layer (attention, MLP, MoE or Mamba) and therefore one GHC. Nothing is forked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)
from megatron.core.utils import make_viewless_tensor


@dataclass
class VWNTransformerLayerSubmodules(TransformerLayerSubmodules):
    """TransformerLayerSubmodules plus one GHC per (present) sub-layer."""

    self_attention_ghc: Union[ModuleSpec, type] = IdentityOp
    mlp_ghc: Union[ModuleSpec, type] = IdentityOp


def _viewless(tensor):
    return make_viewless_tensor(inp=tensor, requires_grad=tensor.requires_grad, keep_graph=True)


class VWNLayerMixin:
    """Wraps self-attention and/or the MLP/MoE of a Megatron transformer layer with GHC modules.

    Narrow overrides only: ``__init__`` builds the GHC slots after the stock layer is built,
    ``forward`` threads the wide state through GHC.read -> stock branch -> GHC.write for each
    present sub-layer (a GPT layer has both, a hybrid layer one).
    """

    def __init__(self, config, submodules: VWNTransformerLayerSubmodules, layer_number: int = 1,
                 **kwargs):
        has_attention = submodules.self_attention is not IdentityOp
        has_mlp = submodules.mlp is not IdentityOp
        ghc_attention = submodules.self_attention_ghc is not IdentityOp
        ghc_mlp = submodules.mlp_ghc is not IdentityOp
        if (has_attention, has_mlp) != (ghc_attention, ghc_mlp) or not (has_attention or has_mlp):
            raise ValueError(
                f"{type(self).__name__} needs exactly one GHC per present sub-layer (attention "
                f"present={has_attention}, GHC={ghc_attention}; MLP present={has_mlp}, "
                f"GHC={ghc_mlp}); build specs with nemo_vwn.get_vwn_layer_spec()"
            )
        if submodules.cross_attention is not IdentityOp:
            raise ValueError("VWN layers do not support cross-attention (GPT decoders have none)")
        super().__init__(config=config, submodules=submodules, layer_number=layer_number, **kwargs)
        self.self_attention_ghc = (build_module(submodules.self_attention_ghc, config=self.config,
                                                layer_number=self.layer_number)
                                   if has_attention else None)
        self.mlp_ghc = (build_module(submodules.mlp_ghc, config=self.config,
                                     layer_number=self.layer_number) if has_mlp else None)

    def forward(self, *args, **kwargs):
        """hidden_states [s, b, n*d] -> ([s, b, n*d], context); TransformerLayer's arguments."""
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, args = args[0], args[1:]
        context = kwargs.get("context")

        attention_ghc, mlp_ghc = self.self_attention_ghc, self.mlp_ghc
        if attention_ghc is not None:
            x, state = attention_ghc.read(hidden_states)  # x: [s, b, D]
            z, context = self._forward_attention(x, *args, **kwargs)  # z = F_attn(x): [s, b, D]
            if mlp_ghc is None:
                hidden_states = attention_ghc.write(z, state)  # [s, b, n*d]
            else:  # write the wide state and read the MLP's input from it in one step
                x, state = attention_ghc.write_read(z, state, mlp_ghc)
        elif mlp_ghc is not None:
            x, state = mlp_ghc.read(hidden_states)

        if mlp_ghc is not None:
            z = self._forward_mlp(
                x,
                kwargs.get("inference_context", None),
                padding_mask=kwargs.get("padding_mask", None),
                packed_seq_params=kwargs.get("packed_seq_params", None),
            )
            hidden_states = mlp_ghc.write(z, state)

        return _viewless(hidden_states), context


class VWNTransformerLayer(VWNLayerMixin, TransformerLayer):
    """A Megatron ``TransformerLayer`` (dense MLP or MoE) on the wide state."""


class VWNMoETransformerLayer(VWNLayerMixin, MoETransformerLayer):
    """A Megatron ``MoETransformerLayer`` (hybrid MoE layers) on the wide state."""


class VWNMLPLayer(VWNLayerMixin, MLPLayer):
    """A hybrid-stack MLP-only layer on the wide state."""


@dataclass
class VWNMambaLayerSubmodules(MambaLayerSubmodules):
    """MambaLayerSubmodules plus the GHC around the mixer."""

    mixer_ghc: Union[ModuleSpec, type] = IdentityOp


class VWNMambaLayer(MambaLayer):
    """A Mamba layer on the wide state: GHC.read -> norm -> mixer -> bias/dropout -> GHC.write.

    The spec's ``mamba_bda`` slot holds the branch-only bias+dropout, so MambaLayer's own forward
    returns the mixer branch. (Mamba mixers need the mamba-ssm kernels, i.e. a GPU.)
    """

    def __init__(self, config, submodules: VWNMambaLayerSubmodules, layer_number: int = 1,
                 **kwargs):
        if submodules.mixer_ghc is IdentityOp:
            raise ValueError("VWNMambaLayer needs a mixer_ghc spec (nemo_vwn layer specs add it)")
        super().__init__(config, submodules, layer_number=layer_number, **kwargs)
        self.mixer_ghc = build_module(submodules.mixer_ghc, config=self.config,
                                      layer_number=self.layer_number)

    def forward(self, hidden_states, *args, **kwargs):
        x, state = self.mixer_ghc.read(hidden_states)  # [s, b, D]
        z = super().forward(x, *args, **kwargs)  # the mixer branch (branch-only bda)
        return _viewless(self.mixer_ghc.write(z, state))  # [s, b, n*d]
