"""Triton kernels for GHC / DGHC (docs/method.md §3, §4, §6). Launched by ``ghc_autograd.py``.

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
def _tanh(x):
    """tanh in fp32 without libdevice: odd Taylor series near 0, exp form elsewhere (no overflow).
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    t = tl.where(ax < 0.0625, small, big)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _branch_z(y_row, bias_ptr, seed, offs, i, e, mask, d, p_drop, drop_scale,
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
        a_read = s_a * _tanh(p) + a_read
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
def _write_proj_tile(h, gain_ptr, wa_ptr, wb_ptr, e, em, j, i, n, m,
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
def _write_coefficients(sumsq, q_c, q_b, alpha_ptr, beta_ptr, sa_ptr, sb_ptr,
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
        t_c = _tanh(p_c)
        t_b = _tanh(p_b)
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
            s2, qc, qb = _write_proj_tile(h, gain_ptr, wa_ptr, wb_ptr, e, em, j, i, n, m, PRECISION)
            sumsq += s2
            q_c += qc
            q_b += qb
    a_carry, beta_t, rstd, p_c, p_b, t_c, t_b = _write_coefficients(
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
        z, keep = _branch_z(y_row, bias_ptr, seed, offs, i, e, z_mask, d, p_drop, drop_scale,
                            HAS_BIAS, DROPOUT)  # [BM, BD]
        out = tl.dot(beta_t, z, input_precision=PRECISION)  # Bᵀ Z: [BN, BD]
        out += tl.dot(a_carry_t, h, input_precision=PRECISION)  # + A_carryᵀ H
        tl.store(out_row + j[:, None] * d + e[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=jm[:, None] & em[None, :])


# ---------------------------------------------------------------------------------- write backward
@triton.jit
def ghc_write_bwd_kernel(
    gout_ptr,  # [T, n*d]  G = dL/dH'
    y_ptr, bias_ptr, seed_ptr, h_ptr,
    dy_ptr,  # [T, m*d]  out: dL/dY (through dropout; dL/dbias = Σ_t dY)
    dh_ptr,  # [T, n*d]  out: write's share of dL/dH (A_carry G + its RMSNorm term)
    dps_ptr,  # [T, n, n+m] fp32 out: u·rstd ∘ dP for the carry (:n) and B (n:) columns (DYNAMIC)
    part_ptr,  # [P, 2, n, n+m] fp32 out: per-program Σ_t dA|dBᵀ and Σ_t (dA|dBᵀ) ∘ T
    alpha_ptr, beta_ptr, gain_ptr, wa_ptr, wb_ptr, sa_ptr, sb_ptr,
    T, n, m, d, eps, inv_sqrt_d, p_drop, drop_scale,
    DYNAMIC: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Backward of eq. 3 (persistent: program pid handles tokens pid, pid+P, ...).

    Pass 1 recomputes A_carry, B (prologue sums) while accumulating dA_carry = H Gᵀ, dBᵀ = G Zᵀ;
    pass 2 writes dY = dropout'(B G) and dH_w = A_carry G + g∘((u·rstd∘dP) Wᵀ) - rstd²∘H∘rowterm.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    j = tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_M)
    e0 = tl.arange(0, BLOCK_D)
    jm = j < n
    im = i < m
    cols = m + n
    ccols = n + m  # dps / partial layout: carry columns first, then B columns
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    sum_dc = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)  # Σ_t dA_carry
    sum_db = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # Σ_t dBᵀ
    sum_dct = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)  # Σ_t dA_carry ∘ T_c
    sum_dbt = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # Σ_t dBᵀ ∘ T_b
    for tt in range(pid, T, n_prog):
        t = tl.cast(tt, tl.int64)
        h_row = h_ptr + t * n * d
        g_row = gout_ptr + t * n * d
        y_row = y_ptr + t * m * d
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        q_c = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
        q_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        d_c = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)  # dA_carry[j, k] = <H_j, G_k>
        d_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # dBᵀ[j, i] = <G_j, Z_i>
        for d0 in range(0, d, BLOCK_D):  # pass 1: prologue and dA, dB in one sweep
            e = d0 + e0
            em = e < d
            hm = jm[:, None] & em[None, :]
            h = tl.load(h_row + j[:, None] * d + e[None, :], mask=hm, other=0.0).to(tl.float32)
            gr = tl.load(g_row + j[:, None] * d + e[None, :], mask=hm, other=0.0).to(tl.float32)
            offs = t * m * d + i[:, None].to(tl.int64) * d + e[None, :]
            z, keep = _branch_z(y_row, bias_ptr, seed, offs, i, e, im[:, None] & em[None, :], d,
                                p_drop, drop_scale, HAS_BIAS, DROPOUT)
            d_c += tl.dot(h, tl.trans(gr), input_precision=PRECISION)
            d_b += tl.dot(gr, tl.trans(z), input_precision=PRECISION)
            if DYNAMIC:
                s2, qc, qb = _write_proj_tile(h, gain_ptr, wa_ptr, wb_ptr, e, em, j, i, n, m,
                                              PRECISION)
                sumsq += s2
                q_c += qc
                q_b += qb
        a_carry, beta_t, rstd, p_c, p_b, t_c, t_b = _write_coefficients(
            sumsq, q_c, q_b, alpha_ptr, beta_ptr, sa_ptr, sb_ptr, j, i, n, m, d, eps, inv_sqrt_d,
            DYNAMIC)
        sum_dc += d_c
        sum_db += d_b
        dps_c = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
        dps_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        row_term = tl.zeros([BLOCK_N], dtype=tl.float32)
        if DYNAMIC:
            sum_dct += d_c * t_c
            sum_dbt += d_b * t_b
            s_c = tl.load(sa_ptr + j[:, None] * cols + m + j[None, :],
                          mask=jm[:, None] & jm[None, :], other=0.0).to(tl.float32)
            s_bt = tl.load(sb_ptr + i[None, :] * n + j[:, None],
                           mask=jm[:, None] & im[None, :], other=0.0).to(tl.float32)
            dp_c = d_c * s_c * (1.0 - t_c * t_c)  # dL/dP, carry columns
            dp_b = d_b * s_bt * (1.0 - t_b * t_b)  # dL/dP, B columns
            row_term = (tl.sum(dp_c * p_c, axis=1) + tl.sum(dp_b * p_b, axis=1)) / d
            row_term = row_term * rstd * rstd
            scale = (rstd * inv_sqrt_d)[:, None]
            dps_c = dp_c * scale
            dps_b = dp_b * scale
            dps_row = dps_ptr + t * n * ccols
            tl.store(dps_row + j[:, None] * ccols + j[None, :], dps_c,
                     mask=jm[:, None] & jm[None, :])
            tl.store(dps_row + j[:, None] * ccols + n + i[None, :], dps_b,
                     mask=jm[:, None] & im[None, :])
        beta = tl.trans(beta_t)  # [BM, BN]
        dy_row = dy_ptr + t * m * d
        dh_row = dh_ptr + t * n * d
        for d0 in range(0, d, BLOCK_D):
            e = d0 + e0
            em = e < d
            hm = jm[:, None] & em[None, :]
            zm = im[:, None] & em[None, :]
            gr = tl.load(g_row + j[:, None] * d + e[None, :], mask=hm, other=0.0).to(tl.float32)
            dz = tl.dot(beta, gr, input_precision=PRECISION)  # B G: [BM, BD]
            if DROPOUT:
                offs = t * m * d + i[:, None].to(tl.int64) * d + e[None, :]
                keep = tl.rand(seed, offs) >= p_drop
                dz = tl.where(keep, dz * drop_scale, 0.0)
            tl.store(dy_row + i[:, None] * d + e[None, :], dz.to(dy_ptr.dtype.element_ty), mask=zm)
            dh = tl.dot(a_carry, gr, input_precision=PRECISION)  # A_carry G: [BN, BD]
            if DYNAMIC:
                h = tl.load(h_row + j[:, None] * d + e[None, :], mask=hm, other=0.0).to(tl.float32)
                g = tl.load(gain_ptr + e, mask=em, other=0.0).to(tl.float32)
                w_c = tl.load(wa_ptr + e[:, None] * cols + m + j[None, :],
                              mask=em[:, None] & jm[None, :], other=0.0).to(tl.float32)  # [BD, BN]
                w_b = tl.load(wb_ptr + e[:, None] * m + i[None, :],
                              mask=em[:, None] & im[None, :], other=0.0).to(tl.float32)  # [BD, BM]
                dhn = tl.dot(dps_c, tl.trans(w_c), input_precision=PRECISION)
                dhn += tl.dot(dps_b, tl.trans(w_b), input_precision=PRECISION)
                dh += g[None, :] * dhn - row_term[:, None] * h
            tl.store(dh_row + j[:, None] * d + e[None, :], dh.to(dh_ptr.dtype.element_ty), mask=hm)
    part = part_ptr + pid.to(tl.int64) * 2 * n * ccols
    c_mask = jm[:, None] & jm[None, :]
    b_mask = jm[:, None] & im[None, :]
    tl.store(part + j[:, None] * ccols + j[None, :], sum_dc, mask=c_mask)
    tl.store(part + j[:, None] * ccols + n + i[None, :], sum_db, mask=b_mask)
    if DYNAMIC:
        part1 = part + n * ccols
        tl.store(part1 + j[:, None] * ccols + j[None, :], sum_dct, mask=c_mask)
        tl.store(part1 + j[:, None] * ccols + n + i[None, :], sum_dbt, mask=b_mask)


# ----------------------------------------------------------------------------------- read backward
@triton.jit
def ghc_read_bwd_kernel(
    dx_ptr,  # [T, m*d]  dL/dX
    dhw_ptr,  # [T, n*d] write's share of dL/dH (HAS_DHW), added here
    h_ptr,  # [T, n*d]
    dh_ptr,  # [T, n*d]  out: dL/dH = dH_w + A_read dX + RMSNorm term
    dps_ptr,  # [T, n, m] fp32 out: u·rstd ∘ dP for the read columns (DYNAMIC)
    part_ptr,  # [P, 2, n, m] fp32 out: per-program Σ_t dA_read and Σ_t dA_read ∘ T
    alpha_ptr, gain_ptr, wa_ptr, sa_ptr,
    T, n, m, d, eps, inv_sqrt_d,
    DYNAMIC: tl.constexpr, HAS_DHW: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Backward of eq. 1 (persistent). Pass 1 recomputes A_read and accumulates dA_read = H dXᵀ;
    pass 2 writes dH = dH_w + A_read dX + g∘((u·rstd∘dP) Wᵀ) - rstd²∘H∘rowterm."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    j = tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_M)
    e0 = tl.arange(0, BLOCK_D)
    jm = j < n
    im = i < m
    cols = m + n
    a_mask = jm[:, None] & im[None, :]
    a_off = j[:, None] * cols + i[None, :]
    a_static = tl.load(alpha_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
    s_a = a_static * 0.0
    if DYNAMIC:
        s_a = tl.load(sa_ptr + a_off, mask=a_mask, other=0.0).to(tl.float32)
    sum_da = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    sum_dat = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for tt in range(pid, T, n_prog):
        t = tl.cast(tt, tl.int64)
        h_row = h_ptr + t * n * d
        dx_row = dx_ptr + t * m * d
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        q = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        d_a = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # dA_read[j, i] = <H_j, dX_i>
        for d0 in range(0, d, BLOCK_D):
            e = d0 + e0
            em = e < d
            h = tl.load(h_row + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                        other=0.0).to(tl.float32)
            dx = tl.load(dx_row + i[:, None] * d + e[None, :], mask=im[:, None] & em[None, :],
                         other=0.0).to(tl.float32)
            d_a += tl.dot(h, tl.trans(dx), input_precision=PRECISION)
            if DYNAMIC:
                g = tl.load(gain_ptr + e, mask=em, other=0.0).to(tl.float32)
                w = tl.load(wa_ptr + e[:, None] * cols + i[None, :],
                            mask=em[:, None] & im[None, :], other=0.0).to(tl.float32)
                sumsq += tl.sum(h * h, axis=1)
                q += tl.dot(h * g[None, :], w, input_precision=PRECISION)
        sum_da += d_a
        a_read = a_static
        dps = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        row_term = tl.zeros([BLOCK_N], dtype=tl.float32)
        if DYNAMIC:
            rstd = 1.0 / tl.sqrt(sumsq / d + eps)
            p = q * (rstd * inv_sqrt_d)[:, None]
            th = _tanh(p)
            a_read = s_a * th + a_static
            sum_dat += d_a * th
            dp = d_a * s_a * (1.0 - th * th)
            row_term = tl.sum(dp * p, axis=1) / d * rstd * rstd
            dps = dp * (rstd * inv_sqrt_d)[:, None]
            tl.store(dps_ptr + t * n * m + j[:, None] * m + i[None, :], dps, mask=a_mask)
        dh_row = dh_ptr + t * n * d
        dhw_row = dhw_ptr + t * n * d
        for d0 in range(0, d, BLOCK_D):
            e = d0 + e0
            em = e < d
            hm = jm[:, None] & em[None, :]
            dx = tl.load(dx_row + i[:, None] * d + e[None, :], mask=im[:, None] & em[None, :],
                         other=0.0).to(tl.float32)
            dh = tl.dot(a_read, dx, input_precision=PRECISION)  # A_read dX: [BN, BD]
            if HAS_DHW:
                dh += tl.load(dhw_row + j[:, None] * d + e[None, :], mask=hm,
                              other=0.0).to(tl.float32)
            if DYNAMIC:
                h = tl.load(h_row + j[:, None] * d + e[None, :], mask=hm, other=0.0).to(tl.float32)
                g = tl.load(gain_ptr + e, mask=em, other=0.0).to(tl.float32)
                w = tl.load(wa_ptr + e[:, None] * cols + i[None, :],
                            mask=em[:, None] & im[None, :], other=0.0).to(tl.float32)
                dh += g[None, :] * tl.dot(dps, tl.trans(w), input_precision=PRECISION)
                dh -= row_term[:, None] * h
            tl.store(dh_row + j[:, None] * d + e[None, :], dh.to(dh_ptr.dtype.element_ty), mask=hm)
    part = part_ptr + pid.to(tl.int64) * 2 * n * m
    tl.store(part + j[:, None] * m + i[None, :], sum_da, mask=a_mask)
    if DYNAMIC:
        tl.store(part + n * m + j[:, None] * m + i[None, :], sum_dat, mask=a_mask)


# ----------------------------------------------------------------------- projection / gain gradient
@triton.jit
def ghc_gain_proj_grad_kernel(
    h_ptr,  # [T, n*d]
    dps_ptr,  # [T, n, C] fp32: u·rstd ∘ dP
    part_ptr,  # [P, d, C] fp32 out: per-program K = Σ_t Hᵀ (u·rstd∘dP)
    T, n, d, C,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """K[e, c] = Σ_t Σ_j H[t, j, e] · (u·rstd ∘ dP)[t, j, c]; then dW = g ∘ K and dg = Σ_c W ∘ K.

    Grid (cdiv(d, BLOCK_D), P): program (bd, pid) owns features [bd*BLOCK_D, +BLOCK_D) and tokens
    pid, pid+P, ...; the host sums the P partials.
    """
    bd = tl.program_id(0)
    pid = tl.program_id(1)
    n_prog = tl.num_programs(1)
    j = tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_C)
    e = bd * BLOCK_D + tl.arange(0, BLOCK_D)
    jm = j < n
    cm = c < C
    em = e < d
    acc = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
    for tt in range(pid, T, n_prog):
        t = tl.cast(tt, tl.int64)
        h = tl.load(h_ptr + t * n * d + j[:, None] * d + e[None, :], mask=jm[:, None] & em[None, :],
                    other=0.0).to(tl.float32)  # [BN, BD]
        dps = tl.load(dps_ptr + t * n * C + j[:, None] * C + c[None, :],
                      mask=jm[:, None] & cm[None, :], other=0.0)  # [BN, BC]
        acc += tl.dot(tl.trans(h), dps, input_precision=PRECISION)
    out = part_ptr + pid.to(tl.int64) * d * C
    tl.store(out + e[:, None] * C + c[None, :], acc, mask=em[:, None] & cm[None, :])


# --------------------------------------------------------------------------------- dropout mask
@triton.jit
def dropout_keep_kernel(seed_ptr, keep_ptr, numel, p_drop, BLOCK: tl.constexpr):
    """keep[o] = (Philox-uniform(seed, o) >= p) for the flat index o of Y [T, m*d]: the same draw
    the fused write kernels make for element o."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr)
    keep = tl.rand(seed, offs) >= p_drop
    tl.store(keep_ptr + offs, keep.to(tl.int8), mask=offs < numel)
