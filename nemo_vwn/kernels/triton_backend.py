"""The fused Triton GHC backend (``ghc_impl="triton"``, or ``"auto"`` on CUDA): importing it imports
triton. The kernels are in ``ghc_triton.py``, their autograd Functions in ``ghc_autograd.py``."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from nemo_vwn.kernels import ghc_autograd
from nemo_vwn.kernels.ghc_autograd import TritonGHCState
from nemo_vwn.kernels.select import check_kernel_input


class TritonGHCBackend:
    """read/write through the fused kernels; the state is a ``TritonGHCState`` (H and the link)."""

    name = "triton"

    def read(self, ghc, hidden_states: Tensor) -> tuple[Tensor, TritonGHCState]:
        check_kernel_input(ghc.n, ghc.m, hidden_states)
        return ghc_autograd.ghc_read(ghc, hidden_states)

    def write(self, ghc, branch_output: Tensor, state: TritonGHCState,
              bias: Optional[Tensor] = None, dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor:
        return ghc_autograd.ghc_write(ghc, branch_output, state, bias=bias, dropout_p=dropout_p,
                                      training=training, seed=seed)
