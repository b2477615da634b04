"""Which GHC backend runs: ``ghc_impl`` = torch | triton | compile | auto, decided once per GHC.

    "torch"   the plain-torch reference in ghc.py (``TorchGHCBackend``); never imports the kernels.
    "triton"  the fused Triton kernels (``TritonGHCBackend``), always. On a CUDA tensor they run
              compiled; on a CPU tensor only through Triton's interpreter (TRITON_INTERPRET=1 set
              before Python starts -- slow, for tests). Where they can never run, building the GHC
              raises GHCKernelUnavailableError naming the field; a tensor they cannot take (float64,
              a CPU tensor without the interpreter) raises the same error at ``read``.
    "compile" torch.compile / Inductor around the fused formulation of ``ghc_compiled.py``
              (vectorised C++ on CPU, Triton on GPU); an error where no compiler works.
    "auto"    the machine decides, once: Triton when compiled Triton is usable (a CUDA device,
              interpreter off) and n, m <= 64; else compile where a compiler works; else the
              torch reference. Logged once per choice; force a backend by naming it.

``build_backend`` returns an object with ``name``, ``read(ghc, h)`` and
``write(ghc, z, state, ...)`` (the interface GHC.read / GHC.write delegate to; see
``nemo_vwn.kernels.backend``). The torch
reference lives in ghc.py (rank 2, above this package), so it is passed in as ``reference``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from nemo_vwn.config import GHC_IMPL_CHOICES as GHC_IMPLS  # ("torch", "triton", "auto")
from nemo_vwn.kernels.backend import GHCBackend
from nemo_vwn.kernels.runtime import (
    GHCKernelUnavailableError,
    compiled_triton_usable,
    compiler_usable,
    cuda_usable,
    interpreter_active,
    interpreter_mismatch_message,
    interpreter_requested,
    triton_importable,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_SLOTS = 64  # n (and m) up to 64: the paper's largest setting (8, 64); register tiles are n×n

logger = logging.getLogger("nemo_vwn.ghc")
_logged: set[tuple[str, str]] = set()


def unsupported_reason(n: int, m: int, dtype: torch.dtype) -> str | None:
    """Why the kernels cannot take this GHC/tensor, or None when they can."""
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (the kernels take float32, bfloat16, float16)"
    if n > MAX_SLOTS or m > MAX_SLOTS:
        return f"(m, n) = ({m}, {n}) (the kernels support n, m <= {MAX_SLOTS})"
    return None


def _unavailable(what: str) -> GHCKernelUnavailableError:
    return GHCKernelUnavailableError(
        f"ghc_impl='triton' cannot run here: {what}. Allowed ghc_impl values: {list(GHC_IMPLS)}; "
        "use 'auto' (Triton on CUDA, torch elsewhere) or 'torch'. To run the kernels on CPU "
        "(slowly, e.g. for tests) use Triton's interpreter: set TRITON_INTERPRET=1 in the "
        "environment before starting Python."
    )


def check_ghc_impl(impl: str, n: int, m: int) -> None:
    """At GHC construction: reject an unknown impl, and 'triton' where it can never run."""
    if impl not in GHC_IMPLS:
        raise ValueError(f"ghc_impl={impl!r} is not one of {list(GHC_IMPLS)}")
    if impl == "compile" and not compiler_usable():
        raise GHCKernelUnavailableError(
            "ghc_impl='compile' cannot run here: torch.compile has no working compiler (a C++ "
            f"compiler on CPU, Triton on CUDA). Allowed ghc_impl values: {list(GHC_IMPLS)}; use "
            "'auto' or 'torch'."
        )
    if impl != "triton":
        return
    if not triton_importable():
        raise _unavailable("triton is not importable")
    if interpreter_requested() and not interpreter_active():
        raise GHCKernelUnavailableError(interpreter_mismatch_message())
    if not cuda_usable() and not interpreter_active():
        raise _unavailable("no CUDA device and TRITON_INTERPRET is not set")
    if n > MAX_SLOTS or m > MAX_SLOTS:
        raise _unavailable(f"(m, n) = ({m}, {n}); the kernels support n, m <= {MAX_SLOTS}")


def check_kernel_input(n: int, m: int, hidden_states: torch.Tensor) -> None:
    """Per read of the Triton backend: can the kernels take this tensor? Raises if not."""
    reason = unsupported_reason(n, m, hidden_states.dtype)
    if reason is not None:
        raise _unavailable(reason)
    if not (hidden_states.is_cuda or interpreter_active()):
        raise _unavailable(
            f"the wide state is on {hidden_states.device} and Triton's interpreter is not active"
        )


def choose_backend(impl: str, n: int, m: int) -> str:
    """The backend name for ``ghc_impl`` on this machine ("torch" | "triton" | "compile")."""
    check_ghc_impl(impl, n, m)
    if impl != "auto":
        return impl
    if compiled_triton_usable() and n <= MAX_SLOTS and m <= MAX_SLOTS:
        name, why = "triton", "compiled Triton on CUDA"
    elif compiler_usable():
        name, why = "compile", ("torch.compile works here (no compiled Triton, or n, m beyond "
                                f"the kernels' {MAX_SLOTS})")
    else:
        name, why = "torch", "neither compiled Triton nor a torch.compile compiler is usable"
    if (name, why) not in _logged:
        _logged.add((name, why))
        logger.info("ghc_impl='auto' chose the %s GHC backend: %s (force it with ghc_impl=...)",
                    name, why)
    return name


def build_backend(impl: str, n: int, m: int, reference: Callable[[], GHCBackend]) -> GHCBackend:
    """The backend object a GHC module uses for its whole life (see the module docstring)."""
    name = choose_backend(impl, n, m)
    if name == "triton":
        from nemo_vwn.kernels.triton_backend import TritonGHCBackend  # imports triton

        return TritonGHCBackend()
    if name == "compile":
        from nemo_vwn.kernels.ghc_compiled import CompiledGHCBackend

        return CompiledGHCBackend()
    return reference()
