"""Where the Triton GHC kernels can run: compiled on a CUDA device, or on CPU through Triton's
interpreter. Nothing here imports triton at module import time.

How triton 3.7 reads ``TRITON_INTERPRET`` (checked in triton/runtime/jit.py and knobs.py):
``@triton.jit`` looks at ``triton.knobs.runtime.interpret`` (which reads the environment variable)
*when it decorates a function*, and returns an ``InterpretedFunction`` instead of a ``JITFunction``.
Triton's own library functions (``tl.rand``, the combine functions behind ``tl.sum``/``tl.max``)
are decorated when ``triton`` is first imported. So the variable must be set **before triton is
imported** — and megatron-core imports triton, so before ``megatron``/``nemo_vwn`` are imported.
Setting it later gives "Cannot call @triton.jit'd outside of the scope of a kernel" from the first
``tl.sum``. :func:`interpreter_active` therefore asks triton's library, not the environment.
"""

from __future__ import annotations

import functools
import os

_TRUE = ("1", "true", "on", "yes")


class GHCKernelUnavailableError(RuntimeError):
    """The Triton GHC kernels were requested (``ghc_impl``) where they cannot run."""


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` is set to a true value in this process's environment."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@functools.lru_cache(maxsize=None)
def interpreter_active() -> bool:
    """Triton was imported in interpreter mode (its library functions are interpreted). Fixed for
    the life of the process once triton is imported, hence cached."""
    if not triton_importable():
        return False
    from triton.language import random as tl_random
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl_random.randint, InterpretedFunction)


def interpreter_mismatch_message() -> str:
    return (
        "TRITON_INTERPRET=1 is set but triton was imported before it was set, so triton's own "
        "library functions were compiled-mode objects and its interpreter cannot run (triton 3.7 "
        "reads the variable at @triton.jit decoration time, i.e. at import). "
        "Set TRITON_INTERPRET=1 "
        "in the environment before starting Python (megatron-core imports triton), e.g. "
        "`TRITON_INTERPRET=1 python ...`"
    )


def cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def compiled_triton_usable() -> bool:
    """Compiled (GPU) Triton: triton importable, a CUDA device present, interpreter off."""
    return triton_importable() and cuda_usable() and not interpreter_active()


@functools.lru_cache(maxsize=None)
def compiler_usable() -> bool:
    """torch.compile can build kernels here: Triton for CUDA, else a C++ compiler for Inductor's
    CPU backend (checked without compiling anything)."""
    import torch

    if not torch._dynamo.is_dynamo_supported():
        return False
    if cuda_usable():
        return triton_importable()
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:  # noqa: BLE001 - no compiler found (or an Inductor without the helper)
        return False


def describe() -> str:
    """One line for logs/benchmarks: which Triton mode this process can use."""
    if not triton_importable():
        return "triton not importable"
    import triton

    if interpreter_active():
        return f"triton {triton.__version__} (interpreter, TRITON_INTERPRET=1)"
    if cuda_usable():
        return f"triton {triton.__version__} (compiled, CUDA)"
    return f"triton {triton.__version__} (no CUDA device, interpreter off)"
