"""autograd Functions and launchers around the Triton GHC kernels (``ghc_triton.py``).

Two Functions, one per GHC half, because the branch (attention / MLP) runs between them:

    GHCReadFunction (H, params)              -> x [T, m*d], link [T, n*d]
    GHCWriteFunction(Y, H, link, bias, ...)  -> H' [T, n*d]

Recompute vs save (docs/kernels.md has the byte counts):
  * Forward stores nothing per token besides x and H'. The write recomputes A_carry and B from H
    (its coefficient prologue) instead of reading a materialised carry state or coefficients.
  * Backward saves only the inputs (H, the branch output Y, the parameters; the dropout seed) and
    recomputes the RMSNorm statistics, projections and tanh in a first pass over d that it needs
    anyway to form dA = H dMᵀ. No coefficient, normalised state or mask is kept between
    forward and backward: the activation memory of a GHC is the H it already holds.
  * ``link`` is a zero-stride [T, n*d] placeholder returned by the read and consumed by the write.
    The write's backward returns its share of dL/dH as link's gradient, so autograd hands it to the
    read's backward, which adds it while writing dL/dH once (instead of autograd adding two
    [T, n*d] gradients in a separate pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import triton
from torch import Tensor

from nemo_vwn.kernels import ghc_triton as K
from nemo_vwn.kernels import ghc_triton_bwd as KB

PRECISION = "ieee"  # fp32 tl.dot: exact fp32 products (TF32 would cost ~3 decimal digits)
BLOCK_D_MAX = 64  # tile width over d (tests lower it to exercise several tiles + a remainder)
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
INTERPRETER_PROGRAMS = 3  # persistent programs under the CPU interpreter (fewer than tokens)


class TritonGHCState(NamedTuple):
    """What the Triton write needs from the Triton read (GHC.write dispatches on this type)."""

    hidden: Tensor  # [T, n*d] the GHC's input H: the write recomputes A_carry, B and the carry
    link: Tensor  # [T, n*d] zero-stride placeholder routing write's dL/dH into read's backward


@dataclass(frozen=True)
class _Meta:
    n: int
    m: int
    d: int
    eps: float
    dynamic: bool
    block_n: int
    block_m: int
    block_d: int
    num_warps: int

    @property
    def inv_sqrt_d(self) -> float:
        return 1.0 / math.sqrt(self.d)


def _pow2(x: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(x))


def make_meta(n: int, m: int, d: int, eps: float, dynamic: bool) -> _Meta:
    block_n = _pow2(n)
    return _Meta(n=n, m=m, d=d, eps=float(eps), dynamic=bool(dynamic), block_n=block_n,
                 block_m=_pow2(m), block_d=min(_pow2(d), max(MIN_BLOCK, BLOCK_D_MAX)),
                 num_warps=8 if block_n >= 64 else 4)


def _programs(tokens: int, device: torch.device, share: int = 1) -> int:
    """Persistent grid size: about 2 programs per SM on CUDA (``share`` = other grid dims)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(tokens, (2 * sms) // share))
    return max(1, min(tokens, INTERPRETER_PROGRAMS))


def _proj_grad(h: Tensor, dps: Tensor, meta: _Meta, cols: int) -> Tensor:
    """K = Σ_t Hᵀ (u·rstd∘dP): [d, cols] fp32 (dW = g ∘ K, dg = Σ_c W ∘ K)."""
    tokens = h.shape[0]
    block_d = min(meta.block_d, 32)
    d_blocks = triton.cdiv(meta.d, block_d)
    progs = _programs(tokens, h.device, share=d_blocks)
    part = torch.empty(progs, meta.d, cols, device=h.device, dtype=torch.float32)
    KB.ghc_gain_proj_grad_kernel[(d_blocks, progs)](
        h, dps, part, tokens, meta.n, meta.d, cols,
        BLOCK_N=meta.block_n, BLOCK_D=block_d, BLOCK_C=_pow2(cols), PRECISION=PRECISION,
        num_warps=4,
    )
    return part.sum(0)


def _grad_like(value: Tensor, param: Optional[Tensor]) -> Optional[Tensor]:
    return None if param is None else value.to(param.dtype)


# -------------------------------------------------------------------------------------------- read
class GHCReadFunction(torch.autograd.Function):
    """x = A_readᵀ H (eq. 1) and the ``link`` placeholder; backward adds write's dL/dH via link."""

    @staticmethod
    def forward(ctx, h, meta: _Meta, alpha, gain, w_a, s_a):
        tokens = h.shape[0]
        x = torch.empty(tokens, meta.m * meta.d, device=h.device, dtype=h.dtype)
        K.ghc_read_fwd_kernel[(tokens,)](
            h, x, alpha, gain if meta.dynamic else alpha, w_a if meta.dynamic else alpha,
            s_a if meta.dynamic else alpha,
            meta.n, meta.m, meta.d, meta.eps, meta.inv_sqrt_d,
            DYNAMIC=meta.dynamic, BLOCK_N=meta.block_n, BLOCK_M=meta.block_m,
            BLOCK_D=meta.block_d, PRECISION=PRECISION, num_warps=meta.num_warps,
        )
        link = h.new_zeros(()).expand(tokens, meta.n * meta.d)
        ctx.meta = meta
        ctx.save_for_backward(h, alpha, gain, w_a, s_a)
        ctx.set_materialize_grads(False)
        return x, link

    @staticmethod
    def backward(ctx, dx, dlink):
        meta: _Meta = ctx.meta
        h, alpha, gain, w_a, s_a = ctx.saved_tensors
        n, m, d = meta.n, meta.m, meta.d
        tokens = h.shape[0]
        if dx is None:
            dx = h.new_zeros(tokens, m * d)
        dx = dx.contiguous()
        has_dhw = dlink is not None
        dhw = dlink.contiguous() if has_dhw else h  # h: a pointer the kernel never reads
        dh = torch.empty_like(h)
        progs = _programs(tokens, h.device)
        part = torch.zeros(progs, 2, n, m, device=h.device, dtype=torch.float32)
        dps = (torch.empty(tokens, n, m, device=h.device, dtype=torch.float32)
               if meta.dynamic else part)  # part: never written when static
        KB.ghc_read_bwd_kernel[(progs,)](
            dx, dhw, h, dh, dps, part,
            alpha, gain if meta.dynamic else alpha, w_a if meta.dynamic else alpha,
            s_a if meta.dynamic else alpha,
            tokens, n, m, d, meta.eps, meta.inv_sqrt_d,
            DYNAMIC=meta.dynamic, HAS_DHW=has_dhw, BLOCK_N=meta.block_n, BLOCK_M=meta.block_m,
            BLOCK_D=meta.block_d, PRECISION=PRECISION, num_warps=meta.num_warps,
        )
        sums = part.sum(0)  # [2, n, m]
        d_alpha = torch.zeros(n, m + n, device=h.device, dtype=torch.float32)
        d_alpha[:, :m] = sums[0]
        d_gain = d_wa = d_sa = None
        if meta.dynamic:
            k_mat = _proj_grad(h, dps, meta, m)  # [d, m]
            d_wa = torch.zeros(d, m + n, device=h.device, dtype=torch.float32)
            d_wa[:, :m] = gain.float()[:, None] * k_mat
            d_gain = (w_a[:, :m].float() * k_mat).sum(1)
            d_sa = torch.zeros(n, m + n, device=h.device, dtype=torch.float32)
            d_sa[:, :m] = sums[1]
        return (dh, None, _grad_like(d_alpha, alpha), _grad_like(d_gain, gain),
                _grad_like(d_wa, w_a), _grad_like(d_sa, s_a))


# ------------------------------------------------------------------------------------------- write
class GHCWriteFunction(torch.autograd.Function):
    """H' = Bᵀ dropout(Y + bias) + A_carryᵀ H (eq. 3); backward sends its dL/dH through ``link``."""

    @staticmethod
    def forward(ctx, y, h, link, bias, seed, p_drop: float, meta: _Meta,
                alpha, beta, gain, w_a, w_b, s_a, s_b):
        tokens = h.shape[0]
        out = torch.empty(tokens, meta.n * meta.d, device=h.device, dtype=y.dtype)
        dropout = seed is not None
        K.ghc_write_fwd_kernel[(tokens,)](
            y, bias if bias is not None else y, seed if dropout else y, h, out,
            *_write_params(meta, alpha, beta, gain, w_a, w_b, s_a, s_b),
            meta.n, meta.m, meta.d, meta.eps, meta.inv_sqrt_d, p_drop, _drop_scale(p_drop),
            DYNAMIC=meta.dynamic, HAS_BIAS=bias is not None, DROPOUT=dropout,
            BLOCK_N=meta.block_n, BLOCK_M=meta.block_m, BLOCK_D=meta.block_d,
            PRECISION=PRECISION, num_warps=meta.num_warps,
        )
        ctx.meta, ctx.p_drop = meta, p_drop
        ctx.save_for_backward(y, h, bias, seed, alpha, beta, gain, w_a, w_b, s_a, s_b)
        return out

    @staticmethod
    def backward(ctx, dout):
        meta: _Meta = ctx.meta
        p_drop = ctx.p_drop
        y, h, bias, seed, alpha, beta, gain, w_a, w_b, s_a, s_b = ctx.saved_tensors
        n, m, d = meta.n, meta.m, meta.d
        tokens = h.shape[0]
        dout = dout.contiguous()
        dropout = seed is not None
        dy = torch.empty_like(y)
        dh_w = torch.empty_like(h)  # gradient of ``link``: write's share of dL/dH
        progs = _programs(tokens, h.device)
        cols = n + m
        part = torch.zeros(progs, 2, n, cols, device=h.device, dtype=torch.float32)
        dps = (torch.empty(tokens, n, cols, device=h.device, dtype=torch.float32)
               if meta.dynamic else part)  # part: never written when static
        KB.ghc_write_bwd_kernel[(progs,)](
            dout, y, bias if bias is not None else y, seed if dropout else y, h,
            dy, dh_w, dps, part,
            *_write_params(meta, alpha, beta, gain, w_a, w_b, s_a, s_b),
            tokens, n, m, d, meta.eps, meta.inv_sqrt_d, p_drop, _drop_scale(p_drop),
            DYNAMIC=meta.dynamic, HAS_BIAS=bias is not None, DROPOUT=dropout,
            BLOCK_N=meta.block_n, BLOCK_M=meta.block_m, BLOCK_D=meta.block_d,
            PRECISION=PRECISION, num_warps=meta.num_warps,
        )
        sums = part.sum(0)  # [2, n, n+m]: [0] Σ dA_carry | Σ dBᵀ, [1] the same ∘ T
        d_alpha = torch.zeros(n, m + n, device=h.device, dtype=torch.float32)
        d_alpha[:, m:] = sums[0, :, :n]
        d_beta = sums[0, :, n:].t()
        d_gain = d_wa = d_wb = d_sa = d_sb = None
        if meta.dynamic:
            k_mat = _proj_grad(h, dps, meta, cols)  # [d, n+m]
            g = gain.float()[:, None]
            d_wa = torch.zeros(d, m + n, device=h.device, dtype=torch.float32)
            d_wa[:, m:] = g * k_mat[:, :n]
            d_wb = g * k_mat[:, n:]
            d_gain = ((w_a[:, m:].float() * k_mat[:, :n]).sum(1)
                      + (w_b.float() * k_mat[:, n:]).sum(1))
            d_sa = torch.zeros(n, m + n, device=h.device, dtype=torch.float32)
            d_sa[:, m:] = sums[1, :, :n]
            d_sb = sums[1, :, n:].t()
        d_bias = None
        if bias is not None and ctx.needs_input_grad[3]:
            d_bias = dy.float().sum(0).to(bias.dtype)
        return (dy, None, dh_w, d_bias, None, None, None,
                _grad_like(d_alpha, alpha), _grad_like(d_beta, beta), _grad_like(d_gain, gain),
                _grad_like(d_wa, w_a), _grad_like(d_wb, w_b), _grad_like(d_sa, s_a),
                _grad_like(d_sb, s_b))


def _write_params(meta, alpha, beta, gain, w_a, w_b, s_a, s_b):
    if meta.dynamic:
        return alpha, beta, gain, w_a, w_b, s_a, s_b
    return alpha, beta, alpha, alpha, alpha, alpha, alpha


def _drop_scale(p_drop: float) -> float:
    return 0.0 if p_drop >= 1.0 else 1.0 / (1.0 - p_drop)


# ------------------------------------------------------------------------------------ public entry
def _params(ghc):
    """The GHC's parameters in kernel argument order (None for the static module's dynamic ones)."""
    get = lambda name: getattr(ghc, name, None)  # noqa: E731
    return dict(alpha=ghc.static_alpha, beta=ghc.static_beta, gain=get("norm_weight"),
                w_a=get("dynamic_alpha_proj"), w_b=get("dynamic_beta_proj"),
                s_a=get("dynamic_alpha_scale"), s_b=get("dynamic_beta_scale"))


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def ghc_read(ghc, hidden_states: Tensor) -> tuple[Tensor, TritonGHCState]:
    """Triton GHC.read: hidden_states [s, b, n*d] -> (x [s, b, m*d], TritonGHCState)."""
    s, b, width = hidden_states.shape
    meta = make_meta(ghc.n, ghc.m, ghc.d, ghc.eps, ghc.dynamic)
    h = hidden_states.reshape(s * b, width).contiguous()  # [T, n*d]
    p = {k: _contig(v) for k, v in _params(ghc).items()}
    x, link = GHCReadFunction.apply(h, meta, p["alpha"], p["gain"], p["w_a"], p["s_a"])
    return x.view(s, b, ghc.m * ghc.d), TritonGHCState(hidden=h, link=link)


def ghc_write(ghc, branch_output: Tensor, state: TritonGHCState, bias: Optional[Tensor] = None,
              dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor:
    """Triton GHC.write: H' = Bᵀ dropout(z + bias) + A_carryᵀ H -> [s, b, n*d] (z's dtype).

    ``bias`` [m*d] and ``dropout_p`` fuse the branch's bias-dropout into the write (the layer does
    not route them here yet: its bda slot applies them and passes bias=None, p=0). Dropout draws
    Philox numbers keyed by ``seed`` (an int64 [1] tensor; default: drawn from the device's default
    torch generator, so Megatron's RNG-state save/restore for activation recompute replays it) and
    the element's flat index in z; the mask is NOT torch.nn.functional.dropout's mask (same
    distribution, different stream) — see ``dropout_keep_mask``.
    """
    s, b, width = branch_output.shape
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    meta = make_meta(ghc.n, ghc.m, ghc.d, ghc.eps, ghc.dynamic)
    y = branch_output.reshape(s * b, width).contiguous()  # [T, m*d]
    use_dropout = training and dropout_p > 0.0
    if use_dropout and seed is None:
        seed = torch.randint(0, 2**62, (1,), device=y.device, dtype=torch.int64)
    if not use_dropout:
        seed, dropout_p = None, 0.0
    p = {k: _contig(v) for k, v in _params(ghc).items()}
    out = GHCWriteFunction.apply(
        y, state.hidden, state.link, _contig(bias), seed, float(dropout_p), meta,
        p["alpha"], p["beta"], p["gain"], p["w_a"], p["w_b"], p["s_a"], p["s_b"])
    return out.view(s, b, ghc.n * ghc.d)


def dropout_keep_mask(seed: Tensor, shape: tuple[int, ...], p_drop: float) -> Tensor:
    """The fused write's keep mask (bool, ``shape`` = z's shape) for ``seed`` and ``p_drop``."""
    numel = math.prod(shape)
    keep = torch.empty(numel, device=seed.device, dtype=torch.int8)
    block = 1024
    K.dropout_keep_kernel[(triton.cdiv(numel, block),)](seed, keep, numel, float(p_drop),
                                                        BLOCK=block)
    return keep.view(shape).bool()
