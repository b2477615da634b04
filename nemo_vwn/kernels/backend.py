"""The interface every GHC backend implements (docs/method.md §3-4; docs/kernels.md).

A backend is chosen once when a GHC module is built (``select.build_backend``) and holds no
parameters: the GHC module owns them and passes itself in, so ``state_dict``, ``.to()`` and
Megatron's parameter handling see one set of parameters whatever the backend. Each backend has its
own ``state`` type (what its write needs from its read); only that backend ever looks inside it.

    read(ghc, h [s, b, n*d])  -> (x [s, b, m*d], state)          eq. 1: X = A_readᵀ H
    write(ghc, z [s, b, m*d], state, bias=None, dropout_p=0.0, training=True, seed=None)
                              -> h' [s, b, n*d] (z's dtype)      eq. 3: H' = Bᵀ Z + A_carryᵀ H

``write`` takes the branch's bias and dropout so a fused backend can apply them inside the write
(Z = dropout(z + bias)); with bias=None and dropout_p=0 it is the plain eq. 3.

Optional: ``write_read(ghc, z, state, next_ghc) -> (x, next_state)``, equal to
``next_ghc.read(ghc.write(z, state))`` (the attention GHC's write and the MLP GHC's read, adjacent
in every layer) in one fused region. ``GHC.write_read`` uses it when both GHCs have this backend
and composes read and write otherwise (``CompiledGHCBackend`` has it; torch and Triton do not).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from torch import Tensor


class GHCBackend(Protocol):
    name: str

    def read(self, ghc, hidden_states: Tensor) -> tuple[Tensor, Any]: ...

    def write(self, ghc, branch_output: Tensor, state: Any, bias: Optional[Tensor] = None,
              dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor: ...
