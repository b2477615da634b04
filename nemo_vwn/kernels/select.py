"""``ghc_impl`` selection: "torch" | "triton" | "auto" (config field of VWNConfigMixin).

    "torch"   the plain-torch GHC in ghc.py (reference and fallback); never imports the kernels.
    "triton"  the fused Triton kernels, always. On a CUDA tensor they run compiled; on a CPU tensor
              only through Triton's interpreter (TRITON_INTERPRET=1 set before Python starts —
              slow, for tests). Anything else raises GHCKernelUnavailableError naming the field.
    "auto"    the kernels when the wide state is a CUDA tensor, compiled Triton is usable and the
              shape/dtype is supported; the torch path otherwise (CPU, interpreter, float64, ...).

The decision is made per call from the tensor actually passed (a model built on CPU and moved to
the GPU switches over), and costs a few attribute checks.
"""

from __future__ import annotations

import torch

from nemo_vwn.kernels.runtime import (
    GHCKernelUnavailableError,
    compiled_triton_usable,
    cuda_usable,
    interpreter_active,
    interpreter_mismatch_message,
    interpreter_requested,
    triton_importable,
)

from nemo_vwn.config import GHC_IMPL_CHOICES as GHC_IMPLS  # noqa: E402  ("torch", "triton", "auto")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_SLOTS = 64  # n (and m) up to 64: the paper's largest setting (8, 64); register tiles are n×n


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


def use_triton(impl: str, n: int, m: int, hidden_states: torch.Tensor) -> bool:
    """Per call: run the kernels on this wide state? Raises for 'triton' where they cannot."""
    if impl == "torch":
        return False
    reason = unsupported_reason(n, m, hidden_states.dtype)
    if impl == "auto":
        return reason is None and hidden_states.is_cuda and compiled_triton_usable()
    if reason is not None:
        raise _unavailable(reason)
    if not triton_importable():
        raise _unavailable("triton is not importable")
    if interpreter_active() or hidden_states.is_cuda:
        return True
    raise _unavailable(
        f"the wide state is on {hidden_states.device} and Triton's interpreter is not active"
    )
