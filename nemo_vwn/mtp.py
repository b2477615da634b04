"""Multi-Token Prediction with VWN (docs/method.md §5; DeepSeek-V3-style MTP, depth k).

For depth j = 1..k, with H^0 the decoder's wide state before the collapse:

    E^j   = VWNEmbedding(tokens shifted left by j)                       [s, b, D']
    U^j   = BlockMix( RMSNorm_D'(H^{j-1}), RMSNorm_D'(E^j) )             [s, b, D']
            BlockMix: split both into n slots of width d and apply ONE shared Linear(2d -> d)
            to every [hidden_slot ; embedding_slot] pair (cost as at r = 1)
    H^j   = VWN transformer layer (GHC kept on) (U^j)                    [s, b, D']
    out^j = collapse + final norm (shared with the main head) (H^j)      [s, b, D]
    logits^j = shared LM head (out^j);  loss^j = CE(logits^j, tokens shifted left by j + 1)

The per-depth losses are computed and logged by megatron's ``process_mtp_loss`` (one value per
depth, separate from the next-token loss) and weighted by ``mtp_loss_scaling_factor / k``.

[choice] Each input is normed with an RMSNorm over the full wide vector D' (per-channel gain),
as DeepSeek-V3 norms the full hidden state; the mixer is initialised with ``init_method``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.multi_token_prediction import roll_tensor
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import Tensor

from nemo_vwn.norms import SequenceParallelTorchNorm


class BlockwiseMixer(MegatronModule):
    """One Linear(2d -> d) shared by the n slot pairs: [s, b, D'] x 2 -> [s, b, D']."""

    def __init__(self, config):
        super().__init__(config=config)
        self.n = config.virtual_width_n
        self.d = config.ghc_segment_size
        self.weight = torch.nn.Parameter(torch.empty(self.d, 2 * self.d, dtype=config.params_dtype))
        if config.perform_initialization:
            weight = torch.empty(self.weight.shape, dtype=torch.float32)
            config.init_method(weight)  # replicated over TP: drawn from the CPU generator
            with torch.no_grad():
                self.weight.copy_(weight)
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        s, b, _ = hidden.shape
        pairs = torch.cat(
            [hidden.view(s, b, self.n, self.d), embedding.view(s, b, self.n, self.d)], dim=-1
        )  # [s, b, n, 2d]: [hidden_slot ; embedding_slot]
        return torch.nn.functional.linear(pairs, self.weight).view(s, b, self.n * self.d)


class VWNMultiTokenPredictionLayer(MegatronModule):
    """One MTP depth: norms, block-wise mixer, a GHC-wrapped transformer layer.

    Wide in, wide out.
    """

    def __init__(self, config, layer_spec: ModuleSpec, depth: int, vp_stage=None,
                 pg_collection=None):
        super().__init__(config=config)
        wide = config.virtual_hidden_size
        self.depth = depth
        self.hnorm = SequenceParallelTorchNorm(config, wide, eps=config.layernorm_epsilon)
        self.enorm = SequenceParallelTorchNorm(config, wide, eps=config.layernorm_epsilon)
        self.block_mixer = BlockwiseMixer(config)
        self.mtp_model_layer = build_module(
            layer_spec, config=config, layer_number=depth, is_mtp_layer=True,
            vp_stage=vp_stage, pg_collection=pg_collection,
        )

    def forward(self, hidden_states: Tensor, embeddings: Tensor, **layer_kwargs) -> Tensor:
        """hidden_states H^{j-1}, embeddings E^j: [s, b, D'] -> H^j [s, b, D']"""
        mixed = self.block_mixer(self.hnorm(hidden_states), self.enorm(embeddings))
        output, _ = self.mtp_model_layer(hidden_states=mixed, **layer_kwargs)
        return output


class VWNMultiTokenPredictionBlock(MegatronModule):
    """k MTP depths (``config.mtp_num_layers``); ``mtp_use_repeated_layer`` shares one layer."""

    def __init__(self, config, layer_spec: ModuleSpec, vp_stage=None, pg_collection=None):
        super().__init__(config=config)
        self.repeated = bool(getattr(config, "mtp_use_repeated_layer", False))
        self.cp_group = pg_collection.cp if pg_collection is not None else None
        num_built = 1 if self.repeated else config.mtp_num_layers
        self.layers = torch.nn.ModuleList(
            VWNMultiTokenPredictionLayer(config, layer_spec, depth=j + 1, vp_stage=vp_stage,
                                         pg_collection=pg_collection)
            for j in range(num_built)
        )

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None):
        """Each depth under ``{prefix}layers.{j}.``, its TP-sharded layer handled by the layer
        itself (megatron's default would treat the whole ModuleList as replicated)."""
        sharded = {}
        for j, layer in enumerate(self.layers):
            sharded.update(layer.sharded_state_dict(f"{prefix}layers.{j}.", sharded_offsets,
                                                    metadata))
        return sharded

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        hidden_states: Tensor,
        embedding: Callable,
        attention_mask: Optional[Tensor] = None,
        packed_seq_params=None,
        padding_mask: Optional[Tensor] = None,
        **layer_kwargs,
    ) -> list[Tensor]:
        """The wide state of every depth, [H^1, ..., H^k], each [s, b, D']."""
        if self.config.mtp_detach_heads:
            hidden_states = hidden_states.detach()
        outputs = []
        for j in range(self.config.mtp_num_layers):
            layer = self.layers[0 if self.repeated else j]
            input_ids, _ = roll_tensor(input_ids, shifts=-1, dims=-1, cp_group=self.cp_group,
                                       packed_seq_params=packed_seq_params)
            position_ids, _ = roll_tensor(position_ids, shifts=-1, dims=-1,
                                          cp_group=self.cp_group,
                                          packed_seq_params=packed_seq_params)
            if padding_mask is not None:
                padding_mask, _ = roll_tensor(padding_mask, shifts=-1, dims=-1,
                                              cp_group=self.cp_group,
                                              packed_seq_params=packed_seq_params)
            embeddings = embedding(input_ids=input_ids, position_ids=position_ids)
            hidden_states = layer(hidden_states, embeddings, attention_mask=attention_mask,
                                  packed_seq_params=packed_seq_params, padding_mask=padding_mask,
                                  **layer_kwargs)
            outputs.append(hidden_states)
        return outputs
