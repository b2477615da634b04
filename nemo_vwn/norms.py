"""Torch norms for megatron's local (non-TE) specs that work under sequence parallelism.

Two permanent components of the local VWN specs (they are not upstream workarounds: VWN needs a
norm module that megatron's local spec does not provide):

* ``SequenceParallelTorchNorm`` -- a drop-in builder with ``WrappedTorchNorm``'s signature.
  megatron-core's ``WrappedTorchNorm`` asserts ``not config.sequence_parallel``, so without TE or
  apex no norm allows SP. A norm is per-token, so under SP it only needs its (replicated)
  parameters to carry ``sequence_parallel=True``; Megatron then all-reduces their gradients over the
  tensor-parallel group, as it does for TE norms. Used by the VWN layer specs, the MTP norms and the
  hybrid final norm.
* ``LocalFinalNormHybridStack`` -- a ``HybridStack`` whose final norm is that torch norm.
  megatron-core's ``HybridStack`` builds its final norm with ``TENorm`` unconditionally, so a stock
  hybrid model (the baseline twin of a VWN hybrid model) cannot be built without TE. Everything else
  is HybridStack's own code; the VWN stack does not need it (its final norm is the collapse + norm).
"""

from __future__ import annotations

import torch
from megatron.core.models.hybrid.hybrid_block import HybridStack

NORMS = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}


class SequenceParallelTorchNorm:
    """Builds ``torch.nn.RMSNorm`` / ``torch.nn.LayerNorm`` like WrappedTorchNorm, SP allowed."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **kwargs):
        if config.layernorm_zero_centered_gamma:
            raise ValueError("layernorm_zero_centered_gamma needs Transformer Engine norms")
        if config.persist_layer_norm or config.memory_efficient_layer_norm:
            raise ValueError("persist/memory_efficient layer norm need apex or Transformer Engine")
        if config.normalization not in NORMS:
            raise ValueError(
                f"normalization={config.normalization!r} is not one of {sorted(NORMS)} "
                "for the local spec"
            )
        norm = NORMS[config.normalization](normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)
        return norm


class LocalFinalNormHybridStack(HybridStack):
    """HybridStack with its final norm built by ``SequenceParallelTorchNorm`` instead of TENorm."""

    def __init__(self, config, submodules, *args, post_layer_norm: bool = True,
                 post_process: bool = True, **kwargs):
        super().__init__(config, submodules, *args, post_layer_norm=False,
                         post_process=post_process, **kwargs)
        if post_process and post_layer_norm:
            self.post_layer_norm = True
            self.final_norm = SequenceParallelTorchNorm(config, config.hidden_size,
                                                        eps=config.layernorm_epsilon)
