"""Bias + dropout of a sub-layer's output, *without* the residual add.

In a standard Megatron layer the ``*_bda`` submodule computes ``residual + dropout(out + bias)``.
In a VWN layer the residual connection is GHC's job (H' = Bᵀ Z + A_carryᵀ H, docs/method.md §3
eq. 3), so the layer's bda
slots hold this function instead and return the branch output Z = dropout(out + bias). It has the
same builder signature as ``megatron.core.fusions.fused_bias_dropout.get_bias_dropout_add`` and
the same arithmetic on ``out`` and ``bias`` (and the same RNG use), so with n == m and the static
init the VWN layer reproduces the stock layer bit for bit.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


def _bias_dropout(
    x_with_bias: Tuple[Tensor, Optional[Tensor]], prob: float, training: bool
) -> Tensor:
    x, bias = x_with_bias
    if bias is not None:
        x = x + bias
    return torch.nn.functional.dropout(x, p=prob, training=training)


def get_bias_dropout_branch(training: bool, fused: bool = False) -> Callable:
    """Builder used in the ``self_attn_bda`` / ``mlp_bda`` slots of a VWN layer spec.

    ``fused`` is accepted for signature compatibility; the fused GHC write kernel is where bias and
    dropout get fused with the wide-state update.
    """

    def bias_dropout_branch(x_with_bias, residual, prob):  # residual: ignored (GHC adds it)
        return _bias_dropout(x_with_bias, prob, training)

    return bias_dropout_branch
