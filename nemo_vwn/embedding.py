"""Wide state in: the over-width embedding (docs/method.md §2; paper Sec 3.2, Alg. 1).

``vwn_embedding``:
    "wide"        a vocabulary table of width D' = n*d: every slot has its own values (not n copies
                  of one embedding as in Hyper-Connections). Vocab-parallel like Megatron's table.
    "factorized"  a width-D table followed by one Linear D -> D' (the paper's option for large r,
                  where a D'-wide table gets expensive). The D-wide table can be tied to the LM
                  head.

Output: [s, b, D'] (sequence-sharded under sequence parallelism, like Megatron's embedding).

``VWNEmbedding`` is megatron's ``LanguageModelEmbedding`` built at the table width; its forward
(position embedding, transpose, sequence-parallel scatter, dropout) is reused unchanged.
[choice] The factorized up-projection is replicated over TP. ``vwn_embedding_up_init`` picks its
init: "scaled" = N(0, 1/D) (default: a wide element keeps the table's std sigma, like a wide
table's) or "normal" = ``init_method`` (std sigma: a wide element starts at std
~ sigma^2 * sqrt(D)). ``vwn_embedding_up_act`` ("none" | "gelu") picks what follows it:
nothing (the paper's linear up-projection) or sigma * GELU(x / sigma), sigma = init_method_std.
"""

from __future__ import annotations

import copy

import torch
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from torch import Tensor


def _config_with_width(config, width: int):
    """A shallow copy of ``config`` with hidden_size = the table width (not re-validated)."""
    table_config = copy.copy(config)
    table_config.hidden_size = width
    return table_config


class VWNEmbedding(LanguageModelEmbedding):
    """Token (+ learned position) embedding of width D' (same constructor as
    LanguageModelEmbedding)."""

    def __init__(self, config, vocab_size: int, max_sequence_length: int, *args, **kwargs):
        self.factorized = config.vwn_embedding == "factorized"
        table_width = config.hidden_size if self.factorized else config.virtual_hidden_size
        super().__init__(_config_with_width(config, table_width), vocab_size, max_sequence_length,
                         *args, **kwargs)
        self.config = config
        self.table_width = table_width
        self.wide_size = config.virtual_hidden_size
        if self.factorized:
            self.up_proj_weight = torch.nn.Parameter(
                torch.empty(self.wide_size, config.hidden_size, dtype=config.params_dtype)
            )  # Linear D -> D'
            if config.perform_initialization:
                weight = torch.empty(self.up_proj_weight.shape, dtype=torch.float32)
                if config.vwn_embedding_up_init == "scaled":
                    torch.nn.init.normal_(weight, mean=0.0, std=config.hidden_size ** -0.5)
                else:
                    config.init_method(weight)
                with torch.no_grad():
                    self.up_proj_weight.copy_(weight)
            setattr(self.up_proj_weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, input_ids: Tensor, position_ids: Tensor, tokentype_ids=None) -> Tensor:
        """[b, s] token ids -> [s, b, D'] wide state."""
        embeddings = super().forward(input_ids, position_ids, tokentype_ids)
        if self.factorized:
            embeddings = torch.nn.functional.linear(embeddings, self.up_proj_weight)  # [s, b, D']
            if self.config.vwn_embedding_up_act == "gelu":
                sigma = self.config.init_method_std
                embeddings = sigma * torch.nn.functional.gelu(embeddings / sigma)
        return embeddings
