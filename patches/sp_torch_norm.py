"""A torch layer norm that works under sequence parallelism, for the local (non-TE) layer spec.

megatron-core's local spec builds its norms with ``WrappedTorchNorm``, which asserts
``not config.sequence_parallel``; without Transformer Engine or apex there is then no norm that
allows SP. A norm is per-token, so under SP it only needs its (replicated) parameters to carry
``sequence_parallel=True`` so that Megatron all-reduces their gradients over the tensor-parallel
group. This is a drop-in builder with WrappedTorchNorm's signature; the VWN local spec uses it.
"""

from __future__ import annotations

import torch

REASON = (
    "WrappedTorchNorm (local spec norm without TE/apex) asserts not sequence_parallel; this torch "
    "norm tags its params sequence_parallel so SP works without TE"
)
APPLIES_TO = "megatron-core 0.16-0.19"


class SequenceParallelTorchNorm:
    """Builds ``torch.nn.RMSNorm`` / ``torch.nn.LayerNorm`` like WrappedTorchNorm, SP allowed."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **kwargs):
        if config.layernorm_zero_centered_gamma:
            raise ValueError("layernorm_zero_centered_gamma needs Transformer Engine norms")
        if config.persist_layer_norm or config.memory_efficient_layer_norm:
            raise ValueError("persist/memory_efficient layer norm need apex or Transformer Engine")
        norms = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.normalization not in norms:
            raise ValueError(
                f"normalization={config.normalization!r} is not one of {sorted(norms)} "
                "for the local spec"
            )
        norm = norms[config.normalization](normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)
        return norm
