"""VWN configuration: the fields that select a Virtual Width Network, and their validation.

Notation (docs/method.md §1):
    D   backbone hidden size (``hidden_size``): attention and MLP/MoE run at width D
    m   ``virtual_width_m``: a backbone vector is viewed as m segments of width d = D/m
    n   ``virtual_width_n``: slots in the wide state, n >= m
    D'  virtual width D' = n*d = (n/m)*D (``virtual_hidden_size``)
    r   virtual-width factor r = n/m (``virtual_width_factor``); 1.5x=(2,3), 2x=(8,16), 8x=(8,64)

``VWNConfigMixin`` holds the fields and ``validate_vwn()``; ``VWNConfig`` is megatron's
``TransformerConfig`` plus the mixin. The Megatron-Bridge provider reuses the same mixin, so a
recipe and a hand-built config are validated by the same code. Every check runs in
``__post_init__``, before any parameter is allocated, and names the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.core.transformer.transformer_config import TransformerConfig

EMBEDDING_CHOICES = ("wide", "factorized")
EMBEDDING_UP_INIT_CHOICES = ("scaled", "normal")
EMBEDDING_UP_ACT_CHOICES = ("none", "gelu")
COLLAPSE_CHOICES = ("norm_linear", "linear", "none")
COLLAPSE_INIT_CHOICES = ("normal", "identity")
GHC_IMPL_CHOICES = ("torch", "triton", "compile", "auto")
GHC_WRITE_INIT_CHOICES = ("tile", "backbone")


class VWNConfigError(ValueError):
    """An invalid VWN configuration (raised before any allocation)."""


def _small_divisors(value: int, limit: int = 64) -> list[int]:
    return [k for k in range(1, min(value, limit) + 1) if value % k == 0]


@dataclass
class VWNConfigMixin:
    """VWN fields shared by ``VWNConfig`` and the Megatron-Bridge ``VWNModelProvider``."""

    virtual_width_n: Optional[int] = None
    """n: slots of width d = D/m in the wide state (n >= m)."""

    virtual_width_m: Optional[int] = None
    """m: segments per backbone vector (the fraction rate); must divide hidden_size."""

    ghc_dynamic: bool = True
    """Dynamic GHC (DGHC, docs/method.md §4, eq. 4-6): input-dependent A(H), B(H) on top of the
    static matrices."""

    ghc_fp32_coefficients: bool = True
    """[choice] Compute the DGHC norm, projection, tanh and the width/depth connections in fp32
    (docs/method.md §4: a small dynamic part added to a static 1 is rounded away in bf16)."""

    ghc_scale_weight_decay: bool = False
    """[choice] Weight decay on the DGHC scales S_A, S_B (default: none, as for norm gains). The
    static A/B never decay; the dynamic projections W_A, W_B always do (nemo_vwn.optim,
    docs/method.md §4)."""

    ghc_write_init: str = "tile"
    """[choice] Init of the static write matrix B (m, n) (docs/method.md §3): "tile" = the
    method's B[i, j] = 1 if j mod m == i, backbone segment i written into every slot j ≡ i (mod m)
    (default); "backbone" = B[i, j] = 1 if j == i, the branch output written into the backbone
    slots 0..m-1 only, so the extra slots carry the embedding's content until the learned B (and
    DGHC) write into them. Both give a standard residual stream in slots 0..m-1 at init, and
    they coincide when n == m. "backbone" is the variant the wide-state probe suggested for the
    factorized embedding (docs/results.md, round 2: with "tile" every layer adds the same output
    to slot i and to slots i + m, i + 2m, ..., so the extra slots stay linear mixtures of the
    backbone ones)."""

    ghc_recompute: bool = False
    """Selective recompute of GHC: the read (per-slot norm, dynamic coefficients, width
    connection) is recomputed in backward instead of storing its intermediates; only the layer's
    wide input is kept (docs/method.md §6)."""

    ghc_impl: str = "torch"
    """GHC backend, chosen once per GHC module (docs/kernels.md): "torch" (plain torch: the
    reference and fallback); "triton" (the fused kernels of nemo_vwn/kernels, always: compiled on
    CUDA, or on CPU under TRITON_INTERPRET=1 set before Python starts; an error anywhere else);
    "compile" (torch.compile/Inductor around a fused formulation: C++ on CPU, Triton on GPU);
    "auto" (Triton where compiled Triton is usable, else compile where a compiler works, else
    torch; the choice is logged once). The Triton kernels always compute in fp32."""

    vwn_embedding: str = "wide"
    """Over-width embedding (docs/method.md §2): "wide" = a vocabulary table of width D' (every
    slot distinct); "factorized" = a width-D table followed by one Linear D -> D' (the paper's
    option for large r)."""

    vwn_embedding_up_init: str = "scaled"
    """[choice] Init of the factorized up-projection D -> D' (docs/method.md §2): "scaled" =
    N(0, 1/D), which keeps a wide element at the table's std sigma, as a wide table has (default);
    "normal" = Megatron's init_method (std sigma, so a wide element starts at std ~ sigma^2 *
    sqrt(D), far below the table's). Chosen from the factorized-embedding runs, see
    docs/results.md §1.3. Ignored with vwn_embedding="wide" (no up-projection), so a saved config
    loads whatever it holds."""

    vwn_embedding_up_act: str = "none"
    """[choice] What follows the factorized up-projection (docs/method.md §2): "none" = nothing,
    the paper's linear D -> D' (default); "gelu" = sigma * GELU(x / sigma) per element, sigma =
    init_method_std, so a wide element keeps the table's scale while the GELU acts at it (plain
    GELU of values of std sigma ~ 0.02 is ~ x/2, i.e. linear). Without it the factorized wide
    state is a linear map of a width-D embedding and can hold no more across tokens than the
    width-D table does (docs/results.md, round 2, the probe); with it the wide state is a
    nonlinear function of the token's embedding. No parameters are added. Ignored with
    vwn_embedding="wide"."""

    vwn_collapse: str = "norm_linear"
    """Collapse before the final norm (docs/method.md §2): "norm_linear" = W_reduce(GroupNorm(H))
    with r groups of width D; "linear" = W_reduce(H) (the paper's 1.5x runs); "none" only when
    n == m."""

    vwn_collapse_init: str = "identity"
    """[choice] Init of W_reduce (docs/method.md §2): "identity" = [I_D | 0], reading slots
    0..m-1 (default; it also reproduces a standard model at init, which upcycling needs);
    "normal" = Megatron's init_method. The default was chosen from the collapse-init study, see
    docs/results.md §1.4-1.5. Ignored when vwn_collapse="none"."""

    # ------------------------------------------------------------------ derived sizes
    @property
    def virtual_width_factor(self) -> float:
        """r = n / m."""
        return self.virtual_width_n / self.virtual_width_m

    @property
    def ghc_segment_size(self) -> int:
        """d = D / m: the width of one slot."""
        return self.hidden_size // self.virtual_width_m

    @property
    def virtual_hidden_size(self) -> int:
        """D' = n * d: the width of the wide hidden state."""
        return self.virtual_width_n * self.ghc_segment_size

    # ------------------------------------------------------------------ validation
    def validate_vwn(self) -> None:
        """Check every VWN field; raise VWNConfigError naming the field and the allowed values."""
        n, m, hidden = self.virtual_width_n, self.virtual_width_m, self.hidden_size
        for name, value in (("virtual_width_n", n), ("virtual_width_m", m)):
            if value is None:
                raise VWNConfigError(
                    f"{name} must be set: (virtual_width_m, virtual_width_n) = (m, n), e.g. (2, 3) "
                    "for 1.5x, (8, 16) for 2x, (8, 64) for 8x"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VWNConfigError(f"{name} must be a positive integer, got {value!r}")
        if not hidden or hidden % m != 0:
            raise VWNConfigError(
                f"virtual_width_m={m} must divide hidden_size={hidden} (slot width d = D/m); "
                f"allowed virtual_width_m values for this hidden_size: {_small_divisors(hidden)}"
            )
        if n < m:
            raise VWNConfigError(
                f"virtual_width_n={n} must be >= virtual_width_m={m}: the virtual width factor "
                f"r = n/m = {n / m:.3g} must be >= 1"
            )
        if not isinstance(self.ghc_dynamic, bool):
            raise VWNConfigError(f"ghc_dynamic must be True or False, got {self.ghc_dynamic!r}")
        choices = (
            ("vwn_embedding", self.vwn_embedding, EMBEDDING_CHOICES),
            ("vwn_collapse", self.vwn_collapse, COLLAPSE_CHOICES),
            ("vwn_collapse_init", self.vwn_collapse_init, COLLAPSE_INIT_CHOICES),
            ("vwn_embedding_up_init", self.vwn_embedding_up_init, EMBEDDING_UP_INIT_CHOICES),
            ("vwn_embedding_up_act", self.vwn_embedding_up_act, EMBEDDING_UP_ACT_CHOICES),
            ("ghc_impl", self.ghc_impl, GHC_IMPL_CHOICES),
            ("ghc_write_init", self.ghc_write_init, GHC_WRITE_INIT_CHOICES),
        )
        for name, value, allowed in choices:
            if value not in allowed:
                raise VWNConfigError(f"{name}={value!r} is not one of {list(allowed)}")
        if self.vwn_collapse == "none" and n != m:
            raise VWNConfigError(
                f"vwn_collapse='none' is valid only when virtual_width_n == virtual_width_m "
                f"(no widening), got (m, n) = ({m}, {n}); use 'norm_linear' or 'linear'"
            )
        if self.vwn_collapse == "norm_linear" and n % m != 0:
            raise VWNConfigError(
                f"vwn_collapse='norm_linear' normalises r groups of width D, "
                f"which needs an integer "
                f"r = n/m; (m, n) = ({m}, {n}) gives r = {n / m:.3g}. Use vwn_collapse='linear' "
                "(the plain linear collapse, as the paper did for its 1.5x runs)"
            )
        self._validate_vwn_layout()

    def _validate_vwn_layout(self) -> None:
        """Reject Megatron features the VWN model does not support (yet), naming what is missing."""
        unsupported = []
        if getattr(self, "cuda_graph_impl", "none") not in (None, "none"):
            unsupported.append("cuda_graph_impl (GHC is not captured in CUDA graphs)")
        if getattr(self, "inference_fuse_tp_communication", False):
            unsupported.append("inference_fuse_tp_communication (fuses the residual add)")
        if getattr(self, "cpu_offloading", False):
            unsupported.append("cpu_offloading")
        if unsupported:
            raise VWNConfigError("VWN does not support: " + "; ".join(unsupported))


def check_tied_embeddings(
    config: VWNConfigMixin, share_embeddings_and_output_weights: bool
) -> None:
    """A wide (D'-wide) embedding table cannot be the LM head's (D-wide) weight."""
    if (
        share_embeddings_and_output_weights
        and config.vwn_embedding == "wide"
        and config.virtual_hidden_size != config.hidden_size
    ):
        raise VWNConfigError(
            "share_embeddings_and_output_weights=True is impossible with vwn_embedding='wide' "
            f"(table width D'={config.virtual_hidden_size} "
            f"!= LM head width D={config.hidden_size}); "
            "set share_embeddings_and_output_weights=False or vwn_embedding='factorized'"
        )


@dataclass
class VWNConfig(TransformerConfig, VWNConfigMixin):
    """megatron-core ``TransformerConfig`` plus the VWN fields (see ``VWNConfigMixin``)."""

    def __post_init__(self):
        self.validate_vwn()
        super().__post_init__()
