"""Generalized Hyper-Connections (GHC) and dynamic GHC (DGHC): docs/method.md §3-4.

Legend (per token; the wide state h of width D' = n*d is viewed as H with shape (n, d)):
    A = [A_read | A_carry]   (n, m+n)   ``static_alpha`` (+ dynamic part)
    B                        (m, n)     ``static_beta``  (+ dynamic part)
    read   (eq. 1; paper Alg. 2): X = A_readᵀ H     -> (m, d), flattened to x in R^D
    branch (eq. 2):          z = Attention(Norm(x)) | MLP(Norm(x)), viewed as Z (m, d)
    write  (eq. 3):          H' = Bᵀ Z + A_carryᵀ H         -> (n, d)
Compact form: M = Aᵀ H (m+n, d); M[:m] is the backbone input, M[m:] the carried state.

Static init: A_read = [I_m ; 0], A_carry = I_n, B[i, j] = 1 if j mod m == i else 0, so at init slots
0..m-1 are a plain pre-norm residual stream of width D. [choice] ``ghc_write_init="backbone"``:
B[i, j] = 1 if j == i (the output written into slots 0..m-1 only; the same at n == m).

DGHC (docs/method.md §4, eq. 4-6), from the layer input H:
    Hn   = RMSNorm_d(H)                          one gain of size d shared by the n slots
    A(H) = S_A ∘ tanh(Hn W_A / sqrt(d)) + A_static      W_A (d, m+n) -> (n, m+n)
    B(H) = S_B ∘ tanh(Hn W_B / sqrt(d))ᵀ + B_static     W_B (d, m)   -> (m, n)
S_A, S_B init 1; W_A, W_B init 0, so DGHC == GHC at init.

[choice] ``ghc_fp32_coefficients``: the norm, projections, tanh and both connections run in fp32
(inputs are upcast; outputs are cast back to the wide state's dtype).

Backends: the GHC module owns the parameters and the equations' reference implementation
(``TorchGHCBackend`` below). ``config.ghc_impl`` picks, once when the module is built, the backend
that runs read/write (``nemo_vwn.kernels.select``: torch | triton | auto); every backend has the
same read/write interface (``nemo_vwn.kernels.backend``) and its own state type.

Parallelism: every parameter is replicated over tensor-parallel ranks (the wide state is replicated
like Megatron's residual stream). Under sequence parallelism each rank sees different tokens, so the
parameters carry ``sequence_parallel=True`` and Megatron all-reduces their gradients over TP, as it
does for layer-norm weights.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from nemo_vwn.config import GHC_WRITE_INIT_CHOICES
from nemo_vwn.kernels import build_backend

# Parameters carrying this attribute get no weight decay (nemo_vwn.optim adds the override).
NO_WEIGHT_DECAY_ATTR = "vwn_no_weight_decay"


class GHCState(NamedTuple):
    """What the torch backend's ``write`` needs from its ``read``: the carried state and B."""

    carry: Tensor  # [s, b, n, d]  A_carryᵀ H, in the coefficient dtype
    beta: Tensor  # [m, n] (static) or [s, b, m, n] (dynamic), fp32


def static_alpha_init(n: int, m: int) -> Tensor:
    """A = [A_read | A_carry] with A_read = [I_m ; 0] and A_carry = I_n.  -> (n, m+n)"""
    alpha = torch.zeros(n, m + n)
    alpha[:m, :m] = torch.eye(m)
    alpha[:, m:] = torch.eye(n)
    return alpha


def static_beta_init(n: int, m: int, kind: str = "tile") -> Tensor:
    """The static B, (m, n). ``kind`` (config ``ghc_write_init``): "tile" = B[i, j] = 1 if
    j mod m == i, backbone segment i written into every slot j ≡ i (mod m) (the method's init);
    "backbone" = B[i, j] = 1 if j == i, written into the backbone slots 0..m-1 only."""
    j = torch.arange(n)
    if kind == "tile":
        slot_of = j % m
    elif kind == "backbone":
        slot_of = j
    else:
        raise ValueError(f"ghc_write_init={kind!r} is not one of {list(GHC_WRITE_INIT_CHOICES)}")
    return (slot_of[None, :] == torch.arange(m)[:, None]).to(torch.float32)  # (m, n)


class GHC(MegatronModule):
    """One GHC/DGHC module wrapping one sub-layer (attention or MLP/MoE) of a transformer layer.

    Args:
        config: a VWN config (``virtual_width_n``, ``virtual_width_m``, ``ghc_dynamic`` ...).
        layer_number: the owning layer's number (kept for logging/debugging; init does not use it).
    """

    def __init__(self, config, layer_number: Optional[int] = None):
        super().__init__(config=config)
        self.layer_number = layer_number
        self.n = config.virtual_width_n
        self.m = config.virtual_width_m
        self.d = config.ghc_segment_size
        self.dynamic = bool(config.ghc_dynamic)
        self.fp32 = bool(config.ghc_fp32_coefficients)
        self.recompute = bool(getattr(config, "ghc_recompute", False))
        self.eps = config.layernorm_epsilon
        n, m, d = self.n, self.m, self.d
        # Chosen once: "torch" (TorchGHCBackend below) | "triton" | "auto" (nemo_vwn.kernels).
        self.impl = getattr(config, "ghc_impl", "torch")
        self.backend = build_backend(self.impl, n, m, reference=TorchGHCBackend)
        # write_read may use the backend's fused write+read (False: always compose; benchmarks
        # set it to time the fusion against the composed calls)
        self.fuse_write_read = True

        def param(shape):
            return torch.nn.Parameter(torch.empty(shape, dtype=config.params_dtype))

        self.static_alpha = param((n, m + n))
        self.static_beta = param((m, n))
        if self.dynamic:
            self.norm_weight = param((d,))
            self.dynamic_alpha_proj = param((d, m + n))
            self.dynamic_beta_proj = param((d, m))
            self.dynamic_alpha_scale = param((n, m + n))
            self.dynamic_beta_scale = param((m, n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The method's init (deterministic: no RNG is consumed)."""
        with torch.no_grad():
            self.static_alpha.copy_(static_alpha_init(self.n, self.m))
            self.static_beta.copy_(static_beta_init(
                self.n, self.m, getattr(self.config, "ghc_write_init", "tile")))
            if self.dynamic:
                self.norm_weight.fill_(1.0)
                self.dynamic_alpha_proj.zero_()
                self.dynamic_beta_proj.zero_()
                self.dynamic_alpha_scale.fill_(1.0)
                self.dynamic_beta_scale.fill_(1.0)
        for p in self.parameters():
            setattr(p, "sequence_parallel", self.config.sequence_parallel)
        # Weight decay (docs/method.md §4): none on the static A/B and the norm gain; the
        # scales S_A/S_B follow ghc_scale_weight_decay; the projections W_A/W_B decay.
        no_decay = [self.static_alpha, self.static_beta]
        if self.dynamic:
            no_decay.append(self.norm_weight)
            if not getattr(self.config, "ghc_scale_weight_decay", False):
                no_decay += [self.dynamic_alpha_scale, self.dynamic_beta_scale]
        for p in no_decay:
            setattr(p, NO_WEIGHT_DECAY_ATTR, True)

    # ------------------------------------------------------------------ coefficients
    def _compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.fp32 and dtype in (torch.float16, torch.bfloat16) else dtype

    def coefficients(self, H: Tensor) -> tuple[Tensor, Tensor]:
        """A and B for the wide state H [s, b, n, d].

        Returns (alpha, beta): static [n, m+n], [m, n]; dynamic [s, b, n, m+n], [s, b, m, n].
        """
        cdt = self._compute_dtype(H.dtype)
        static_alpha = self.static_alpha.to(cdt)
        static_beta = self.static_beta.to(cdt)
        if not self.dynamic:
            return static_alpha, static_beta
        Hf = H.to(cdt)
        # Hn = RMSNorm_d(H): per-slot RMS over d, one gain of size d shared by the slots
        Hn = torch.nn.functional.rms_norm(Hf, (self.d,), self.norm_weight.to(cdt), self.eps)
        # One projection for A and B: Hn [W_A | W_B] / sqrt(d), one tanh -> [s, b, n, 2m+n]
        proj = torch.cat([self.dynamic_alpha_proj, self.dynamic_beta_proj], dim=1).to(cdt)
        dyn = torch.tanh(torch.matmul(Hn, proj) * (1.0 / math.sqrt(self.d)))
        dyn_alpha, dyn_beta = dyn.split([self.m + self.n, self.m], dim=-1)
        alpha = self.dynamic_alpha_scale.to(cdt) * dyn_alpha + static_alpha  # [s, b, n, m+n]
        beta = self.dynamic_beta_scale.to(cdt) * dyn_beta.transpose(-1, -2) + static_beta
        # alpha [s, b, n, m+n], beta [s, b, m, n]
        return alpha, beta

    # ------------------------------------------------------------------ read / write
    def read(self, hidden_states: Tensor) -> tuple[Tensor, object]:
        """Backbone input from the wide state (eq. 1) plus the state ``write`` needs.

        hidden_states: [s, b, n*d]  ->  x: [s, b, D] (D = m*d), the backend's state

        With ``ghc_recompute`` the torch read runs under megatron's activation checkpoint: backward
        keeps only ``hidden_states`` and recomputes the norm, coefficients and M = Aᵀ H. The fused
        backends always work that way (they save only H).
        """
        width = hidden_states.shape[-1]
        if width != self.n * self.d:
            raise ValueError(
                f"GHC.read expects a wide state of width n*d = {self.n * self.d}, got {width}"
            )
        return self.backend.read(self, hidden_states)

    def write(self, branch_output: Tensor, state, bias: Optional[Tensor] = None,
              dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor:
        """Merge the branch output back into the wide state (eq. 3): H' = Bᵀ Z + A_carryᵀ H.

        branch_output: [s, b, D]  ->  [s, b, n*d] (dtype of branch_output). With ``bias`` [D] and
        ``dropout_p`` the write applies the branch's bias and dropout first, Z = dropout(z + bias)
        (fused into the write by the Triton backend; ``seed`` keys its dropout stream).
        """
        return self.backend.write(self, branch_output, state, bias=bias, dropout_p=dropout_p,
                                  training=training, seed=seed)

    def write_read(self, branch_output: Tensor, state, next_ghc: "GHC") -> tuple[Tensor, object]:
        """``next_ghc.read(self.write(branch_output, state))``: this GHC's write (eq. 3) and the
        next GHC's read (eq. 1) of the wide state it writes, as one step. The attention GHC's
        write and the MLP GHC's read are adjacent in every GPT layer, so a backend with a fused
        ``write_read`` (the compiled one) runs both in one region: one call instead of two, and
        the compiler may fuse the read into the write's loops. Otherwise the two calls are
        composed; they are also composed when ``fuse_write_read`` is False or ``next_ghc.read``
        is observed (an instance attribute, as ``diagnostics.probe_wide_state`` sets) so an
        observer still sees every read.

        branch_output: [s, b, D]  ->  (x [s, b, D], next_ghc's backend state)
        """
        fused = getattr(self.backend, "write_read", None)
        if (fused is None or not self.fuse_write_read
                or type(next_ghc.backend) is not type(self.backend)
                or (next_ghc.n, next_ghc.m, next_ghc.d) != (self.n, self.m, self.d)
                or "read" in vars(next_ghc) or "write" in vars(self)):
            return next_ghc.read(self.write(branch_output, state))
        return fused(self, branch_output, state, next_ghc)

    def forward(self, hidden_states: Tensor, branch) -> Tensor:
        """Convenience: write(branch(read(h))) for a branch taking and returning [s, b, D]."""
        x, state = self.read(hidden_states)
        return self.write(branch(x), state)

    def extra_repr(self) -> str:
        return (f"n={self.n}, m={self.m}, d={self.d}, dynamic={self.dynamic}, "
                f"backend={self.backend.name}")


class TorchGHCBackend:
    """The reference: eqs. 1 and 3 in plain torch (the GHC's own ``coefficients``); any device or
    dtype. State: ``GHCState`` (the carried state A_carryᵀ H and B)."""

    name = "torch"

    def read(self, ghc: GHC, hidden_states: Tensor) -> tuple[Tensor, GHCState]:
        if ghc.recompute and torch.is_grad_enabled():
            terms = functools.partial(self.read_terms, ghc)  # checkpoint saves tensor args only
            x, carry, beta = tensor_parallel.checkpoint(terms, False, hidden_states)
        else:
            x, carry, beta = self.read_terms(ghc, hidden_states)
        return x, GHCState(carry=carry, beta=beta)

    @staticmethod
    def read_terms(ghc: GHC, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x [s, b, D], carry [s, b, n, d], beta) from the wide state [s, b, n*d]."""
        s, b, _ = hidden_states.shape
        H = hidden_states.view(s, b, ghc.n, ghc.d)  # [s, b, n, d]
        alpha, beta = ghc.coefficients(H)
        Hc = H.to(alpha.dtype)
        # M = Aᵀ H: [s, b, m+n, d]; rows :m are the backbone input, rows m: the carried state.
        # (matmul rather than einsum: its backward yields contiguous grads, so the branch's GEMMs
        # see the same layouts as in a stock layer and n == m reproduces stock gradients exactly.)
        M = torch.matmul(alpha.transpose(-1, -2), Hc)
        x = M[:, :, : ghc.m].reshape(s, b, ghc.m * ghc.d).to(hidden_states.dtype).contiguous()
        return x, M[:, :, ghc.m :], beta

    def write(self, ghc: GHC, branch_output: Tensor, state: GHCState,
              bias: Optional[Tensor] = None, dropout_p: float = 0.0, training: bool = True,
              seed: Optional[Tensor] = None) -> Tensor:
        s, b, _ = branch_output.shape
        if not 0.0 <= dropout_p <= 1.0:
            raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
        z = branch_output if bias is None else branch_output + bias
        if training and dropout_p > 0.0:  # seed: only the fused write keys its own stream
            z = torch.nn.functional.dropout(z, p=dropout_p, training=True)
        beta = state.beta
        Z = z.view(s, b, ghc.m, ghc.d).to(beta.dtype)  # [s, b, m, d]
        depth = torch.matmul(beta.transpose(-1, -2), Z)  # Bᵀ Z: [s, b, n, d]
        out = depth + state.carry  # [s, b, n, d]
        return out.reshape(s, b, ghc.n * ghc.d).to(branch_output.dtype)
