"""The compiled GHC backend (``ghc_impl="compile"``): torch.compile / Inductor around a formulation
written for it (docs/method.md §3, §4, §6). Inductor emits vectorised C++ on CPU and Triton on
GPU; its AOTAutograd derives and fuses the backward. No hand-written kernel.

The formulation, per token (H: (n, d); u = 1/sqrt(d); W = [W_A | W_B] of shape (d, 2m+n)):
    rstd = (mean_e H² + eps)^(-1/2)                    the norm statistics, computed once
    T    = tanh(u · rstd ∘ ((H ∘ g) W))  (n, 2m+n)     ONE projection for A and B
    A    = S_A ∘ T[:, :m+n] + A_static                 B = (S_B ∘ T[:, m+n:]ᵀ) + B_static
    read:  X  = A_readᵀ H                               (eq. 1)
    write: H' = Bᵀ dropout(Z + bias) + A_carryᵀ H       (eq. 3; the branch's bias/dropout fused)
The read computes A and B once and hands A_carry and Bᵀ to the write (``CompiledGHCState``): no
second norm or projection, and neither the normalised state nor the carried state A_carryᵀ H
(n×d per token) is ever materialised; the products are broadcast-sums over the n (or m) slots
that Inductor fuses into one loop nest with its reduction. AOTAutograd's partitioner keeps for
backward the inputs (H, the branch output, the small per-token coefficients) and recomputes the
pointwise rest. With ``ghc_recompute`` the read runs under megatron's activation checkpoint, as
on the torch path.

In a layer the attention GHC's write and the MLP GHC's read are one region (``write_read_terms``,
via ``GHC.write_read``): 3 compiled calls per layer instead of 4, and Inductor schedules the read
in the graph that computes the new wide state (it can fuse the read's pointwise work and reductions
into the write's loops; the DGHC projection stays an extern matmul on CPU).

The regions are compiled once per process and shared by every GHC of the same variant (m, n, d,
dtypes, static/dynamic, bias, dropout): the parameters are arguments, not closed-over module state,
so layers add no recompiles. Each variant gets a copy of the Python function with a code object of
its own, because torch._dynamo keeps its graph cache, recompile count (limit 8) and automatic-
dynamic shape marks per code object: with one shared function, a process that builds GHCs of many
shapes and variants (the test suite; a benchmark timing r = 1.5 ... 8) exceeded the limit, and a
second shape turned n and d into symbolic sizes for every GHC. Within a variant only the token
count is dynamic. ``fullgraph=True``: a graph break inside a GHC is an error, not a silent
slowdown.
"""

from __future__ import annotations

import functools
import math
import types
from typing import NamedTuple, Optional

import torch
from megatron.core import tensor_parallel
from torch import Tensor


class CompiledGHCState(NamedTuple):
    """What the compiled write needs from the compiled read."""

    hidden: Tensor  # [T, n, d]  H (its dtype)
    carry_alpha: Tensor  # [T, n, n] A_carry (dynamic) or [1, n, n] (static), coefficient dtype
    beta_t: Tensor  # [T, n, m] Bᵀ (dynamic) or [1, n, m] (static), coefficient dtype


def coefficient_dtype(dtype: torch.dtype, fp32: bool) -> torch.dtype:
    """[choice] ghc_fp32_coefficients: fp32 maths for half-precision wide states."""
    return torch.float32 if fp32 and dtype in (torch.float16, torch.bfloat16) else dtype


def read_terms(H: Tensor, static_alpha: Tensor, static_beta: Tensor, gain: Optional[Tensor],
               w_a: Optional[Tensor], w_b: Optional[Tensor], s_a: Optional[Tensor],
               s_b: Optional[Tensor], eps: float, cdt: torch.dtype):
    """H [T, n, d] -> x [T, m, d] (H's dtype), A_carry [T|1, n, n], Bᵀ [T|1, n, m] (cdt)."""
    m, (n, d) = static_beta.shape[0], H.shape[-2:]
    Hf = H.to(cdt)
    alpha = static_alpha.to(cdt)[None]  # [1, n, m+n]
    beta_t = static_beta.to(cdt).t()[None]  # [1, n, m]
    if gain is not None:
        rstd = torch.rsqrt(Hf.pow(2).mean(-1, keepdim=True) + eps)  # [T, n, 1]
        w = torch.cat([w_a, w_b], dim=1).to(cdt) * gain.to(cdt)[:, None]  # [d, 2m+n]
        t = torch.tanh(torch.matmul(Hf, w) * (rstd * (1.0 / math.sqrt(d))))  # [T, n, 2m+n]
        alpha = s_a.to(cdt) * t[..., : m + n] + alpha  # [T, n, m+n]
        beta_t = s_b.to(cdt).t() * t[..., m + n :] + beta_t  # [T, n, m]
    # X[i] = Σ_j A_read[j, i] H[j]: a broadcast-sum over the n slots
    x = (alpha[..., :m, None] * Hf[..., :, None, :]).sum(-3)  # [T, m, d]
    return x.to(H.dtype), alpha[..., m:], beta_t


def write_terms(z: Tensor, H: Tensor, carry_alpha: Tensor, beta_t: Tensor, bias: Optional[Tensor],
                keep_scale: Optional[Tensor], out_dtype: torch.dtype):
    """z [T, m, d], H [T, n, d] -> H' [T, n, d] = Bᵀ dropout(z + bias) + A_carryᵀ H.

    ``keep_scale`` [T, m, d] is the dropout mask already scaled by 1/(1-p) (or None): drawn
    eagerly by the caller from torch's (or megatron's tracked) RNG, so dropout replays under
    activation recompute exactly as megatron's own bias-dropout does."""
    cdt = beta_t.dtype
    zf = z.to(cdt)
    if bias is not None:
        zf = zf + bias.to(cdt).view(zf.shape[-2], zf.shape[-1])
    if keep_scale is not None:
        zf = zf * keep_scale.to(cdt)
    depth = (beta_t[..., :, :, None] * zf[..., None, :, :]).sum(-2)  # Bᵀ Z: [T, n, d]
    carry = (carry_alpha[..., :, :, None] * H.to(cdt)[..., :, None, :]).sum(-3)  # A_carryᵀ H
    return (depth + carry).to(out_dtype)


def write_read_terms(z: Tensor, H: Tensor, carry_alpha: Tensor, beta_t: Tensor,
                     static_alpha: Tensor, static_beta: Tensor, gain: Optional[Tensor],
                     w_a: Optional[Tensor], w_b: Optional[Tensor], s_a: Optional[Tensor],
                     s_b: Optional[Tensor], eps: float, cdt: torch.dtype, out_dtype: torch.dtype):
    """One GHC's write then the next GHC's read of the state it wrote, in one graph:
    z [T, m, d], H [T, n, d] -> (H' [T, n, d], x [T, m, d], A_carry', Bᵀ') of the next GHC.
    H' is returned: the next GHC's write and the backward need it."""
    new_hidden = write_terms(z, H, carry_alpha, beta_t, None, None, out_dtype)
    return (new_hidden, *read_terms(new_hidden, static_alpha, static_beta, gain, w_a, w_b, s_a,
                                    s_b, eps, cdt))


@functools.lru_cache(maxsize=None)
def compiled(name: str, key: tuple = ()):
    """The process-wide compiled ``read_terms`` / ``write_terms`` / ``write_read_terms`` for one
    variant ``key``.

    The function is cloned with a code object of its own (named after the key, which also names
    it in profiles): dynamo keeps its graph cache, recompile count and automatic-dynamic state per
    code object."""
    fn = {"read": read_terms, "write": write_terms, "write_read": write_read_terms}[name]
    label = "_".join(str(part).replace("torch.", "") for part in key)
    code = fn.__code__.replace(co_name=f"{fn.__name__}__{label}",
                               co_qualname=f"{fn.__qualname__}__{label}")
    clone = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                               fn.__closure__)
    clone.__kwdefaults__, clone.__doc__ = fn.__kwdefaults__, fn.__doc__
    return torch.compile(clone, fullgraph=True, dynamic=None)


def reset_compiled() -> None:
    """Forget every compiled GHC graph: the next call compiles afresh, at the shapes it sees (a
    benchmark that times several shapes in one process measures each as its own process would)."""
    compiled.cache_clear()
    torch._dynamo.reset()


class CompiledGHCBackend:
    """read/write through the compiled formulation above; state: ``CompiledGHCState``."""

    name = "compile"

    @staticmethod
    def _read_inputs(ghc, dtype: torch.dtype) -> tuple[tuple, dict, tuple]:
        """(parameter args, keyword args, variant key) of ``ghc``'s read of a [T, n, d] state of
        ``dtype``: shared by ``read`` and ``write_read``."""
        cdt = coefficient_dtype(dtype, ghc.fp32)
        get = lambda name: getattr(ghc, name, None)  # noqa: E731 - the static GHC has none
        args = (ghc.static_alpha, ghc.static_beta, get("norm_weight"), get("dynamic_alpha_proj"),
                get("dynamic_beta_proj"), get("dynamic_alpha_scale"), get("dynamic_beta_scale"))
        key = (ghc.m, ghc.n, ghc.d, dtype, cdt, "dynamic" if args[2] is not None else "static")
        return args, dict(eps=float(ghc.eps), cdt=cdt), key

    def read(self, ghc, hidden_states: Tensor) -> tuple[Tensor, CompiledGHCState]:
        s, b, _ = hidden_states.shape
        H = hidden_states.view(s * b, ghc.n, ghc.d)  # [T, n, d]
        torch._dynamo.maybe_mark_dynamic(H, 0)  # any token count, one graph
        args, kwargs, key = self._read_inputs(ghc, H.dtype)
        read = compiled("read", key)

        def run(H):
            return read(H, *args, **kwargs)

        if ghc.recompute and torch.is_grad_enabled():
            x, carry_alpha, beta_t = tensor_parallel.checkpoint(run, False, H)
        else:
            x, carry_alpha, beta_t = run(H)
        return x.view(s, b, ghc.m * ghc.d), CompiledGHCState(H, carry_alpha, beta_t)

    def write_read(self, ghc, branch_output: Tensor, state: CompiledGHCState,
                   next_ghc) -> tuple[Tensor, CompiledGHCState]:
        """``next_ghc.read(ghc.write(z, state))`` as one compiled region (``GHC.write_read``).
        Under ``next_ghc``'s GHC recompute the read alone is checkpointed, so the two are
        composed (as on the torch path)."""
        if next_ghc.recompute and torch.is_grad_enabled():
            return next_ghc.read(self.write(ghc, branch_output, state))
        s, b, _ = branch_output.shape
        z = branch_output.view(s * b, ghc.m, ghc.d)  # [T, m, d]
        torch._dynamo.maybe_mark_dynamic(z, 0)
        args, kwargs, read_key = self._read_inputs(next_ghc, branch_output.dtype)
        key = self._write_key(ghc, z.dtype, state, False, False) + read_key
        new_hidden, x, carry_alpha, beta_t = compiled("write_read", key)(
            z, state.hidden, state.carry_alpha, state.beta_t, *args, **kwargs,
            out_dtype=branch_output.dtype)
        return (x.view(s, b, next_ghc.m * next_ghc.d),
                CompiledGHCState(new_hidden, carry_alpha, beta_t))

    @staticmethod
    def _write_key(ghc, dtype: torch.dtype, state: CompiledGHCState, bias: bool,
                   dropout: bool) -> tuple:
        return (ghc.m, ghc.n, ghc.d, dtype, state.beta_t.dtype,
                "dynamic" if getattr(ghc, "norm_weight", None) is not None else "static",
                "bias" if bias else "nobias", "dropout" if dropout else "nodropout")

    def write(self, ghc, branch_output: Tensor, state: CompiledGHCState,
              bias: Optional[Tensor] = None, dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor:
        if not 0.0 <= dropout_p <= 1.0:
            raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
        s, b, _ = branch_output.shape
        z = branch_output.view(s * b, ghc.m, ghc.d)  # [T, m, d]
        torch._dynamo.maybe_mark_dynamic(z, 0)
        keep_scale = None  # seed: only the Triton write keys its own stream
        if training and dropout_p > 0.0:
            keep_scale = torch.nn.functional.dropout(torch.ones_like(z), p=float(dropout_p))
        key = self._write_key(ghc, z.dtype, state, bias is not None, keep_scale is not None)
        out = compiled("write", key)(z, state.hidden, state.carry_alpha, state.beta_t, bias,
                                     keep_scale, branch_output.dtype)
        return out.view(s, b, ghc.n * ghc.d)
