"""Triton kernels for GHC / DGHC (docs/method.md §3, §4, §6): the shared helpers and the forward
kernels; the backward kernels are in ``ghc_triton_bwd.py``. Launched by ``ghc_autograd.py``.

Per token t the wide state is H (n, d) and every kernel works on one token at a time, streaming
over d in tiles of BLOCK_D. Slot/segment indices: j, k in [0, n) (slots), i in [0, m) (segments),
e in [0, d) (features). Padded tile sizes: BLOCK_N >= n, BLOCK_M >= m, all >= 16 (tl.dot minimum).

Coefficients (DGHC, docs/method.md §4, eq. 4-6), with u = 1/sqrt(d) and Q = (H ∘ g) W
(one d-reduction):
    rstd_j = (mean_e H_je² + eps)^(-1/2)             Hn = RMSNorm_d(H) = (H ∘ rstd) ∘ g
    P = u · rstd ∘ Q       (= Hn W / sqrt(d))        T = tanh(P)
    A = S_A ∘ T_A + A_static   (n, m+n)              B = S_B ∘ T_Bᵀ + B_static   (m, n)
Static GHC uses A_static, B_static only.

No kernel stores the per-token coefficients: each kernel that needs some recomputes exactly the
columns it needs from H in a first pass over d (the "coefficient prologue"), because it must
stream H anyway. read needs A_read (n×m); write needs A_carry (n×n) and B (m×n). See
docs/kernels.md for the byte counts behind this choice.

Kernels (all maths in fp32; tensors are read/written in their own dtype):
    ghc_read_fwd_kernel    X = A_readᵀ H                                   (eq. 1)
    ghc_write_fwd_kernel   H' = Bᵀ Z + A_carryᵀ H,  Z = dropout(Y + bias)   (eq. 3)
    ghc_write_bwd_kernel   dY, write's share of dH, per-token dP, per-program coefficient sums
    ghc_read_bwd_kernel    dH (adding write's share), per-token dP, per-program coefficient sums
    ghc_gain_proj_grad_kernel   K = Σ_t Hᵀ (u·rstd∘dP) → dW = g ∘ K, dg = Σ_c W ∘ K
    dropout_keep_kernel    the dropout keep-mask of the fused write (for tests / debugging)

Backward maths (per token; G = dL/dH', dX = dL/dX, dM = [dX; G] of shape (m+n, d)):
    dA = H dMᵀ (n, m+n)      dB = Z Gᵀ (m, n)      dZ = B G      dH_conn = A dM
    dP = (dA ∘ S_A ∘ (1 - T_A²) | (dB ∘ S_B)ᵀ ∘ (1 - T_B²))
    RMSNorm backward, using Hn·(dP Wᵀ) = Σ_c dP_c P_c / u (no extra pass over d):
        dH_norm = g ∘ ((u·rstd∘dP) Wᵀ) - rstd² ∘ H ∘ rowterm,   rowterm_j = Σ_c dP_jc P_jc / d
    param grads: dA_static = Σ_t dA, dS_A = Σ_t dA ∘ T_A (same for B), dW = g ∘ K, dg = Σ_c W ∘ K.
"""

from __future__ import annotations

import triton
import triton.language as tl


# ---------------------------------------------------------------------------------------- helpers
@triton.jit
def tanh_fp32(x):
    """tanh in fp32 without libdevice: odd Taylor series near 0, exp form elsewhere (no
    overflow)."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    t = tl.where(ax < 0.0625, small, big)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def branch_z(y_row, bias_ptr, seed, offs, i, e, mask, d, p_drop, drop_scale,
              HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr):
    """Z tile [BLOCK_M, BLOCK_D] = dropout(Y + bias) in fp32, and the keep mask (or None).

    y_row points at token t of Y [T, m*d]; offs are the flat int64 element indices t*m*d + i*d + e,
    which are also the Philox counters of the dropout (see dropout_keep_kernel).
    """
    z = tl.load(y_row + i[:, None] * d + e[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + i[:, None] * d + e[None, :], mask=mask, other=0.0).to(tl.float32)
    keep = mask
    if DROPOUT:
        keep = tl.rand(seed, offs) >= p_drop
        z = tl.where(keep, z * drop_scale, 0.0)
    return z, keep


# ------------------------------------------------------------------------------------ read forward
@triton.jit
def ghc_read_fwd_kernel(
    h_ptr,  # [T, n*d]  wide state H (any float dtype)
    x_ptr,  # [T, m*d]  out: backbone input X = A_readᵀ H (dtype of x)
    alpha_ptr,  # [n, m+n] A_static
    gain_ptr,  # [d]      RMSNorm gain g            (DYNAMIC)
    wa_ptr,  # [d, m+n]  W_A                        (DYNAMIC)
    sa_ptr,  # [n, m+n]  S_A                        (DYNAMIC)
    n, m, d, eps, inv_sqrt_d,
    DYNAMIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Eq. 1: X = A_readᵀ H.

    A_read = S_A[:, :m] ∘ tanh(Hn W_A[:, :m]/sqrt(d)) + A_static[:, :m].
    """
    t = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_M)
    e0 = tl.arange(0, BLOCK_D)
    jm = j < n
    im = i < m
    cols = m + n
    h_row = h_ptr + t * n * d
    x_row = x_ptr + t * m * d
    a_mask = jm[:, None] & im[None, :]
    a_off = j[:, None] * cols + i[None, :]
    a_read = tl.load(alpha_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)  # [BN, BM]
    if DYNAMIC:
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        q = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # (H ∘ g) W_A[:, :m]
        for d0 in range(0, d, BLOCK_D):
            e = d0 + e0
            em = e < d
            h = tl.load(h_row + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                        other=0.0).to(tl.float32)  # [BN, BD]
            g = tl.load(gain_ptr + e, mask=em, other=0.0).to(tl.float32)  # [BD]
            w = tl.load(wa_ptr + e[:, None] * cols + i[None, :], mask=em[:, None] & im[None, :],
                        other=0.0).to(tl.float32)  # [BD, BM]
            sumsq += tl.sum(h * h, axis=1)
            q += tl.dot(h * g[None, :], w, input_precision=PRECISION)
        rstd = 1.0 / tl.sqrt(sumsq / d + eps)  # [BN]
        p = q * (rstd * inv_sqrt_d)[:, None]
        s_a = tl.load(sa_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
        a_read = s_a * tanh_fp32(p) + a_read
    a_read_t = tl.trans(a_read)  # [BM, BN]
    for d0 in range(0, d, BLOCK_D):
        e = d0 + e0
        em = e < d
        h = tl.load(h_row + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                    other=0.0).to(tl.float32)
        x = tl.dot(a_read_t, h, input_precision=PRECISION)  # [BM, BD]
        tl.store(x_row + i[:, None] * d + e[None, :], x.to(x_ptr.dtype.element_ty),
                 mask=im[:, None] & em[None, :])


# ----------------------------------------------------------------------------------- write forward
@triton.jit
def write_proj_tile(h, gain_ptr, wa_ptr, wb_ptr, e, em, j, i, n, m,
                     PRECISION: tl.constexpr):
    """One d-tile of the write's coefficient prologue: this tile's share of Σ_e H², (H∘g) W_A[:, m:]
    [BN, BN] and (H∘g) W_B [BN, BM]."""
    jm = j < n
    im = i < m
    g = tl.load(gain_ptr + e, mask=em, other=0.0).to(tl.float32)
    hg = h * g[None, :]
    w_c = tl.load(wa_ptr + e[:, None] * (m + n) + m + j[None, :], mask=em[:, None] & jm[None, :],
                  other=0.0).to(tl.float32)  # [BD, BN]
    w_b = tl.load(wb_ptr + e[:, None] * m + i[None, :], mask=em[:, None] & im[None, :],
                  other=0.0).to(tl.float32)  # [BD, BM]
    return (tl.sum(h * h, axis=1), tl.dot(hg, w_c, input_precision=PRECISION),
            tl.dot(hg, w_b, input_precision=PRECISION))


@triton.jit
def write_coefficients(sumsq, q_c, q_b, alpha_ptr, beta_ptr, sa_ptr, sb_ptr,
                        j, i, n, m, d, eps, inv_sqrt_d, DYNAMIC: tl.constexpr):
    """A_carry [BN(j), BN(k)] = A[j, m+k] and Bᵀ [BN(j), BM(i)] = B[i, j] for one token from the
    prologue sums, plus (DYNAMIC) rstd [BN], the tanh inputs P_c, P_b and tanh values T_c, T_b."""
    jm = j < n
    im = i < m
    c_mask = jm[:, None] & jm[None, :]
    c_off = j[:, None] * (m + n) + m + j[None, :]
    b_mask = jm[:, None] & im[None, :]
    b_off = i[None, :] * n + j[:, None]  # Bᵀ[j, i] = B[i, j]
    a_carry = tl.load(alpha_ptr + c_off, mask=c_mask, other=0.0).to(tl.float32)
    beta_t = tl.load(beta_ptr + b_off, mask=b_mask, other=0.0).to(tl.float32)
    rstd = sumsq
    p_c = q_c
    p_b = q_b
    t_c = q_c
    t_b = q_b
    if DYNAMIC:
        rstd = 1.0 / tl.sqrt(sumsq / d + eps)
        scale = (rstd * inv_sqrt_d)[:, None]
        p_c = q_c * scale
        p_b = q_b * scale
        t_c = tanh_fp32(p_c)
        t_b = tanh_fp32(p_b)
        a_carry += tl.load(sa_ptr + c_off, mask=c_mask, other=0.0).to(tl.float32) * t_c
        beta_t += tl.load(sb_ptr + b_off, mask=b_mask, other=0.0).to(tl.float32) * t_b
    return a_carry, beta_t, rstd, p_c, p_b, t_c, t_b


@triton.jit
def ghc_write_fwd_kernel(
    y_ptr,  # [T, m*d]  branch output Y (before bias/dropout)
    bias_ptr,  # [m*d]  branch bias                    (HAS_BIAS)
    seed_ptr,  # [1] int64 Philox seed                 (DROPOUT)
    h_ptr,  # [T, n*d]  the GHC's input wide state H
    out_ptr,  # [T, n*d] out: H' = Bᵀ Z + A_carryᵀ H
    alpha_ptr, beta_ptr, gain_ptr, wa_ptr, wb_ptr, sa_ptr, sb_ptr,
    n, m, d, eps, inv_sqrt_d, p_drop, drop_scale,
    DYNAMIC: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Eq. 3 fused with the branch's bias + dropout: H' = Bᵀ dropout(Y + bias) + A_carryᵀ H."""
    t = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_M)
    e0 = tl.arange(0, BLOCK_D)
    jm = j < n
    im = i < m
    h_row = h_ptr + t * n * d
    y_row = y_ptr + t * m * d
    out_row = out_ptr + t * n * d
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
    q_c = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    q_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    if DYNAMIC:  # prologue: the coefficients need a full pass over d first
        for d0 in range(0, d, BLOCK_D):
            e = d0 + e0
            em = e < d
            h = tl.load(h_row + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                        other=0.0).to(tl.float32)
            s2, qc, qb = write_proj_tile(h, gain_ptr, wa_ptr, wb_ptr, e, em, j, i, n, m, PRECISION)
            sumsq += s2
            q_c += qc
            q_b += qb
    a_carry, beta_t, rstd, p_c, p_b, t_c, t_b = write_coefficients(
        sumsq, q_c, q_b, alpha_ptr, beta_ptr, sa_ptr, sb_ptr, j, i, n, m, d, eps, inv_sqrt_d,
        DYNAMIC)
    a_carry_t = tl.trans(a_carry)  # [BN(k), BN(j)]
    for d0 in range(0, d, BLOCK_D):
        e = d0 + e0
        em = e < d
        h = tl.load(h_row + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                    other=0.0).to(tl.float32)  # [BN, BD]
        z_mask = im[:, None] & em[None, :]
        offs = t * m * d + i[:, None].to(tl.int64) * d + e[None, :]
        z, keep = branch_z(y_row, bias_ptr, seed, offs, i, e, z_mask, d, p_drop, drop_scale,
                            HAS_BIAS, DROPOUT)  # [BM, BD]
        out = tl.dot(beta_t, z, input_precision=PRECISION)  # Bᵀ Z: [BN, BD]
        out += tl.dot(a_carry_t, h, input_precision=PRECISION)  # + A_carryᵀ H
        tl.store(out_row + j[:, None] * d + e[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=jm[:, None] & em[None, :])


# ------------------------------------------------------------------------------------ dropout mask
@triton.jit
def dropout_keep_kernel(seed_ptr, keep_ptr, numel, p_drop, BLOCK: tl.constexpr):
    """keep[o] = (Philox-uniform(seed, o) >= p) for the flat index o of Y [T, m*d]: the same draw
    the fused write kernels make for element o."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr)
    keep = tl.rand(seed, offs) >= p_drop
    tl.store(keep_ptr + offs, keep.to(tl.int8), mask=offs < numel)
