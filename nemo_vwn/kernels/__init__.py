"""Fused Triton kernels for GHC / DGHC (vwn-method.md sections 3, 4, 6).

Public API (GHC.read / GHC.write call these when ``ghc_impl`` selects the kernels):

    ghc_read(ghc, h [s, b, n*d])              -> (x [s, b, m*d], TritonGHCState)
    ghc_write(ghc, z [s, b, m*d], state, bias=None, dropout_p=0.0, training=True, seed=None)
                                              -> h' [s, b, n*d]
    dropout_keep_mask(seed, shape, p)         -> the fused write's dropout keep mask
    use_triton(impl, n, m, h) / check_ghc_impl(impl, n, m)   selection (select.py)
    runtime.describe()                        which Triton mode this process can use

Importing this package does not import triton; the kernels (``ghc_triton``) and their autograd
wrappers (``ghc_autograd``) are imported on first use. The plain-torch GHC in ``nemo_vwn/ghc.py``
is the reference and the fallback. See docs/kernels.md.
"""

from __future__ import annotations

from nemo_vwn.kernels.runtime import GHCKernelUnavailableError
from nemo_vwn.kernels.select import GHC_IMPLS, check_ghc_impl, use_triton

__all__ = [
    "GHCKernelUnavailableError",
    "GHC_IMPLS",
    "check_ghc_impl",
    "use_triton",
    "ghc_read",
    "ghc_write",
    "dropout_keep_mask",
    "TritonGHCState",
]


def ghc_read(ghc, hidden_states):
    from nemo_vwn.kernels.ghc_autograd import ghc_read as _read

    return _read(ghc, hidden_states)


def ghc_write(ghc, branch_output, state, **kwargs):
    from nemo_vwn.kernels.ghc_autograd import ghc_write as _write

    return _write(ghc, branch_output, state, **kwargs)


def dropout_keep_mask(seed, shape, p_drop):
    from nemo_vwn.kernels.ghc_autograd import dropout_keep_mask as _mask

    return _mask(seed, shape, p_drop)


def __getattr__(name):
    if name == "TritonGHCState":
        from nemo_vwn.kernels.ghc_autograd import TritonGHCState

        return TritonGHCState
    raise AttributeError(name)
