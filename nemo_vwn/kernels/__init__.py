"""GHC / DGHC backends beside the torch reference (docs/method.md §3, §4, §6; docs/kernels.md).

    backend.GHCBackend            the read/write interface every backend implements
    select.build_backend(impl, n, m, reference)   the backend for ``ghc_impl``, chosen once per GHC
    select.choose_backend / check_ghc_impl        the decision and its validation
    triton_backend.TritonGHCBackend               the fused Triton kernels (imports triton)
    ghc_compiled.CompiledGHCBackend               torch.compile around a fused formulation
    ghc_autograd / ghc_triton                     their autograd Functions and kernels
    runtime.describe()                            which Triton mode this process can use

Importing this package does not import triton and compiles nothing (building a Triton backend
imports triton; the compiled backend compiles on its first call). The plain-torch
reference ``TorchGHCBackend`` is in ``nemo_vwn/ghc.py``.
"""

from __future__ import annotations

from nemo_vwn.kernels.backend import GHCBackend
from nemo_vwn.kernels.runtime import GHCKernelUnavailableError
from nemo_vwn.kernels.select import GHC_IMPLS, build_backend, check_ghc_impl, choose_backend

__all__ = [
    "GHCBackend",
    "GHCKernelUnavailableError",
    "GHC_IMPLS",
    "build_backend",
    "check_ghc_impl",
    "choose_backend",
]
