"""A HybridStack whose final norm is a torch norm, for hybrid models without Transformer Engine.

megatron-core 0.19's ``HybridStack`` builds its final norm with ``TENorm`` unconditionally, so a
stock ``HybridModel`` cannot be built where TE is absent (CPU tests, the baseline twin of a VWN
hybrid model on CPU). This drop-in stack builds the same final norm with the SP-capable torch norm
(``sp_torch_norm``) instead; everything else is HybridStack's own code. The VWN stack does not need
it (its final norm is the collapse + norm module).
"""

from __future__ import annotations

from megatron.core.models.hybrid.hybrid_block import HybridStack

from nemo_vwn.patches.sp_torch_norm import SequenceParallelTorchNorm

REASON = (
    "HybridStack hard-codes TENorm as its final norm; build it with a torch norm when TE is absent"
)
APPLIES_TO = "megatron-core 0.19.x"


class LocalFinalNormHybridStack(HybridStack):
    def __init__(self, config, submodules, *args, post_layer_norm: bool = True,
                 post_process: bool = True, **kwargs):
        super().__init__(config, submodules, *args, post_layer_norm=False,
                         post_process=post_process, **kwargs)
        if post_process and post_layer_norm:
            self.post_layer_norm = True
            self.final_norm = SequenceParallelTorchNorm(config, config.hidden_size,
                                                        eps=config.layernorm_epsilon)
