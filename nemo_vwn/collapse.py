"""Wide state out: the collapse D' -> D before the final norm (docs/method.md §2).

    h = W_reduce · GroupNorm(H)        H: [s, b, D'],  h: [s, b, D]

``vwn_collapse``:
    "norm_linear"  GroupNorm with r = n/m groups of width D, then W_reduce (Linear D' -> D)
    "linear"       W_reduce only (the paper's 1.5x runs; the only choice when r is fractional)
    "none"         no collapse (valid only when n == m, D' == D)
[choice] The group norm is RMS-style (no mean subtraction, like RMSNorm elsewhere) with a learnable
gain per channel (size D', init 1).
[choice] ``vwn_collapse_init``: "identity" = W_reduce = [I_D | 0], reading slots 0..m-1 (default:
function-preserving for upcycling, and the better start from scratch, see docs/results.md
§1.4-1.5); "normal" = Megatron's ``init_method``.

``VWNOutputNorm`` is what a VWN decoder block holds in its final-norm slot: the collapse followed by
the model's final norm. It keeps the final norm's parameters under the stock names
(``decoder.final_layernorm.weight`` / ``.bias``), so a baseline checkpoint's keys map one-to-one,
and it lives on the pipeline stage that holds the final norm, as upstream places it.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nemo_vwn.ghc import NO_WEIGHT_DECAY_ATTR


def _tag_sequence_parallel(module: torch.nn.Module, config) -> None:
    # Replicated over TP; under SP each rank sees other tokens, so grads are all-reduced over TP.
    for param in module.parameters(recurse=False):
        setattr(param, "sequence_parallel", config.sequence_parallel)


class VWNCollapse(MegatronModule):
    """W_reduce · GroupNorm(H): [s, b, D'] -> [s, b, D]."""

    def __init__(self, config):
        super().__init__(config=config)
        if config.vwn_collapse not in ("norm_linear", "linear"):
            raise ValueError(f"VWNCollapse needs vwn_collapse in ('norm_linear', 'linear'), "
                             f"got {config.vwn_collapse!r}")
        self.hidden_size = config.hidden_size  # D
        self.wide_size = config.virtual_hidden_size  # D'
        self.eps = config.layernorm_epsilon
        self.use_group_norm = config.vwn_collapse == "norm_linear"
        dtype = config.params_dtype
        if self.use_group_norm:
            self.groups = self.wide_size // self.hidden_size  # r (an integer, checked by config)
            self.group_norm_weight = torch.nn.Parameter(torch.empty(self.wide_size, dtype=dtype))
        self.reduce_weight = torch.nn.Parameter(
            torch.empty(self.hidden_size, self.wide_size, dtype=dtype)  # Linear D' -> D
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.use_group_norm:
                self.group_norm_weight.fill_(1.0)
            if self.config.vwn_collapse_init == "identity":
                self.reduce_weight.zero_()
                self.reduce_weight[:, : self.hidden_size].copy_(torch.eye(self.hidden_size))
            elif self.config.perform_initialization:
                # Replicated over TP: drawn from the CPU generator like megatron's MoE router.
                weight = torch.empty(self.reduce_weight.shape, dtype=torch.float32)
                self.config.init_method(weight)
                self.reduce_weight.copy_(weight)
        _tag_sequence_parallel(self, self.config)
        if self.use_group_norm:
            setattr(self.group_norm_weight, NO_WEIGHT_DECAY_ATTR, True)  # a norm gain

    def forward(self, hidden_states: Tensor) -> Tensor:
        s, b, width = hidden_states.shape
        if width != self.wide_size:
            raise ValueError(f"VWNCollapse expects width D'={self.wide_size}, got {width}")
        if self.use_group_norm:
            groups = hidden_states.view(s, b, self.groups, self.hidden_size)  # [s, b, r, D]
            normed = torch.nn.functional.rms_norm(groups, (self.hidden_size,), eps=self.eps)
            hidden_states = normed.view(s, b, width) * self.group_norm_weight
        return torch.nn.functional.linear(hidden_states, self.reduce_weight)  # [s, b, D]


class VWNOutputNorm(MegatronModule):
    """The VWN decoder's final-norm slot: collapse (D' -> D), then the final RMSNorm/LayerNorm.

    Built by TransformerBlock with the final norm's signature ``(config, hidden_size, eps)``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__(config=config)
        self.hidden_size = hidden_size
        self.eps = eps
        self.normalization = config.normalization
        if self.normalization not in ("RMSNorm", "LayerNorm"):
            raise ValueError(
                f"VWN final norm supports RMSNorm or LayerNorm, got {self.normalization}")
        self.zero_centered_gamma = config.layernorm_zero_centered_gamma
        self.collapse = VWNCollapse(config) if config.vwn_collapse != "none" else None
        # The final norm's parameters, under the stock names.
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, dtype=config.params_dtype))
        if self.normalization == "LayerNorm":
            self.bias = torch.nn.Parameter(torch.empty(hidden_size, dtype=config.params_dtype))
        else:
            self.bias = None
        with torch.no_grad():
            self.weight.fill_(0.0 if self.zero_centered_gamma else 1.0)
            if self.bias is not None:
                self.bias.zero_()
        _tag_sequence_parallel(self, config)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """[s, b, D'] -> [s, b, D]"""
        x = self.collapse(hidden_states) if self.collapse is not None else hidden_states
        weight = self.weight + 1 if self.zero_centered_gamma else self.weight
        if self.normalization == "RMSNorm":
            return torch.nn.functional.rms_norm(x, (self.hidden_size,), weight, self.eps)
        return torch.nn.functional.layer_norm(x, (self.hidden_size,), weight, self.bias, self.eps)
