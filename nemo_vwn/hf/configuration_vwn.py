"""Hugging Face configuration of a Virtual Width Network causal LM (``model_type = "vwn"``).

This file is self-contained (it imports only ``transformers``): an exported model directory
carries a copy of it next to ``modeling_vwn.py``, so ``AutoConfig.from_pretrained(dir,
trust_remote_code=True)`` works where nemo_vwn is not installed.

Notation (vwn-method.md section 1):
    D   ``hidden_size``       backbone width: attention and MLP/MoE run at width D
    m   ``virtual_width_m``   a backbone vector is m segments of width d = D/m
    n   ``virtual_width_n``   slots in the wide state (n >= m)
    D'  ``virtual_hidden_size`` = n*d = (n/m)*D, the width of the residual ("wide") state

Field names follow Hugging Face conventions where one exists (``num_hidden_layers``,
``num_key_value_heads``, ``rope_theta`` ...); the Megatron-Bridge bridge (``nemo_vwn.hf.bridge``)
maps every field to and from megatron's ``TransformerConfig`` / ``VWNModelProvider`` names.
"""

from __future__ import annotations

from transformers import PretrainedConfig

NORMALIZATIONS = ("RMSNorm", "LayerNorm")
ACTIVATIONS = ("gelu", "silu", "relu", "squared_relu", "fast_gelu", "quick_gelu")
POSITION_EMBEDDINGS = ("rope", "learned_absolute", "none")
EMBEDDINGS = ("wide", "factorized")
EMBEDDING_UP_ACTS = ("none", "gelu")
COLLAPSES = ("norm_linear", "linear", "none")
SCORE_FUNCTIONS = ("softmax", "sigmoid", "sqrtsoftplus")
ROUTER_DTYPES = (None, "fp32", "fp64")


class VWNHFConfig(PretrainedConfig):
    """Configuration of ``VWNForCausalLM``.

    Backbone (a pre-norm GPT with RoPE or learned positions, GQA, RMSNorm/LayerNorm):
        vocab_size, hidden_size (D), intermediate_size (dense FFN width), num_hidden_layers,
        num_attention_heads, num_key_value_heads, head_dim (default D / heads), hidden_act (one
        of ``ACTIVATIONS``), gated_linear_unit (SwiGLU/GeGLU-style fc1 = [gate; up]),
        normalization, norm_epsilon, norm_zero_centered_gamma (norm gain stored as gamma - 1),
        qkv_bias, linear_bias (bias on the attention output projection and the MLP linears),
        qk_layernorm (a norm over head_dim on queries and keys), position_embedding_type,
        rope_theta, partial_rotary_factor, max_position_embeddings, attention_softmax_scale
        (default 1/sqrt(head_dim)).
    MoE (megatron's router semantics; ``num_experts=None`` means a dense model):
        num_experts, num_experts_per_tok (top-k), moe_intermediate_size, moe_layer_pattern (one
        0/1 per layer, 1 = MoE; default all MoE), router_score_function, router_pre_softmax
        (softmax over all experts before top-k), router_topk_scaling_factor,
        router_expert_bias (a per-expert bias used for selection only, sigmoid scores),
        router_dtype (router logits in fp32/fp64 or, None, in the activation dtype).
    VWN:
        virtual_width_n (n), virtual_width_m (m), ghc_dynamic (DGHC), ghc_fp32_coefficients,
        vwn_embedding ("wide" table of width D' | "factorized" width-D table + Linear D -> D'),
        vwn_embedding_up_act (after the factorized Linear: "none" | "gelu" = s * GELU(x / s),
        s = initializer_range, which holds Megatron's init_method_std),
        vwn_collapse ("norm_linear" = W_reduce(GroupNorm(H)) | "linear" = W_reduce(H) | "none").
    Multi-token prediction (weights always loaded; ``output_mtp_logits=True`` runs them):
        mtp_num_layers (k depths), mtp_use_repeated_layer (one depth module shared by the k).
    Bookkeeping for an exact round trip to Megatron:
        megatron_vocab_size, megatron_make_vocab_size_divisible_by (the Megatron vocabulary
        before padding; ``vocab_size`` is the padded table the weights have).
    """

    model_type = "vwn"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "gelu",
        gated_linear_unit: bool = False,
        normalization: str = "RMSNorm",
        norm_epsilon: float = 1e-5,
        norm_zero_centered_gamma: bool = False,
        qkv_bias: bool = False,
        linear_bias: bool = False,
        qk_layernorm: bool = False,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        partial_rotary_factor: float = 1.0,
        max_position_embeddings: int = 4096,
        attention_softmax_scale: float | None = None,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        num_experts: int | None = None,
        num_experts_per_tok: int = 2,
        moe_intermediate_size: int | None = None,
        moe_layer_pattern: list[int] | None = None,
        router_score_function: str = "softmax",
        router_pre_softmax: bool = False,
        router_topk_scaling_factor: float | None = None,
        router_expert_bias: bool = False,
        router_dtype: str | None = None,
        virtual_width_n: int = 4,
        virtual_width_m: int = 2,
        ghc_dynamic: bool = True,
        ghc_fp32_coefficients: bool = True,
        vwn_embedding: str = "wide",
        vwn_embedding_up_act: str = "none",
        vwn_collapse: str = "norm_linear",
        mtp_num_layers: int = 0,
        mtp_use_repeated_layer: bool = False,
        megatron_vocab_size: int | None = None,
        megatron_make_vocab_size_divisible_by: int | None = None,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or (hidden_size // num_attention_heads)
        self.hidden_act = hidden_act
        self.gated_linear_unit = gated_linear_unit
        self.normalization = normalization
        self.norm_epsilon = norm_epsilon
        self.norm_zero_centered_gamma = norm_zero_centered_gamma
        self.qkv_bias = qkv_bias
        self.linear_bias = linear_bias
        self.qk_layernorm = qk_layernorm
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        self.max_position_embeddings = max_position_embeddings
        self.attention_softmax_scale = attention_softmax_scale
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size or intermediate_size
        self.moe_layer_pattern = list(moe_layer_pattern) if moe_layer_pattern is not None else None
        self.router_score_function = router_score_function
        self.router_pre_softmax = router_pre_softmax
        self.router_topk_scaling_factor = router_topk_scaling_factor
        self.router_expert_bias = router_expert_bias
        self.router_dtype = router_dtype
        self.virtual_width_n = virtual_width_n
        self.virtual_width_m = virtual_width_m
        self.ghc_dynamic = ghc_dynamic
        self.ghc_fp32_coefficients = ghc_fp32_coefficients
        self.vwn_embedding = vwn_embedding
        self.vwn_embedding_up_act = vwn_embedding_up_act
        self.vwn_collapse = vwn_collapse
        self.mtp_num_layers = mtp_num_layers or 0
        self.mtp_use_repeated_layer = mtp_use_repeated_layer
        self.megatron_vocab_size = megatron_vocab_size
        self.megatron_make_vocab_size_divisible_by = megatron_make_vocab_size_divisible_by
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_vwn()

    # ------------------------------------------------------------------ derived sizes
    @property
    def segment_size(self) -> int:
        """d = D / m: the width of one slot of the wide state."""
        return self.hidden_size // self.virtual_width_m

    @property
    def virtual_hidden_size(self) -> int:
        """D' = n * d: the width of the wide state."""
        return self.virtual_width_n * self.segment_size

    def is_moe_layer(self, layer_index: int) -> bool:
        """Whether decoder layer ``layer_index`` (0-based) has an MoE instead of a dense MLP."""
        if not self.num_experts:
            return False
        if self.moe_layer_pattern is None:
            return True
        return bool(self.moe_layer_pattern[layer_index])

    # ------------------------------------------------------------------ validation
    def validate_vwn(self) -> None:
        """Raise ValueError naming the field and the allowed values for any invalid setting."""
        n, m, hidden = self.virtual_width_n, self.virtual_width_m, self.hidden_size

        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VWNHFConfig.{name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "virtual_width_n", "virtual_width_m",
                     "max_position_embeddings"):
            positive_int(name, getattr(self, name))
        if hidden % m:
            raise ValueError(f"VWNHFConfig.virtual_width_m={m} must divide hidden_size={hidden}")
        if n < m:
            raise ValueError(f"VWNHFConfig.virtual_width_n={n} must be >= virtual_width_m={m}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"VWNHFConfig.num_key_value_heads={self.num_key_value_heads} must "
                             f"divide num_attention_heads={self.num_attention_heads}")
        choices = (("normalization", self.normalization, NORMALIZATIONS),
                   ("hidden_act", self.hidden_act, ACTIVATIONS),
                   ("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDINGS),
                   ("vwn_embedding", self.vwn_embedding, EMBEDDINGS),
                   ("vwn_embedding_up_act", self.vwn_embedding_up_act, EMBEDDING_UP_ACTS),
                   ("vwn_collapse", self.vwn_collapse, COLLAPSES),
                   ("router_score_function", self.router_score_function, SCORE_FUNCTIONS),
                   ("router_dtype", self.router_dtype, ROUTER_DTYPES))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"VWNHFConfig.{name}={value!r} is not one of {list(allowed)}")
        if self.vwn_collapse == "none" and n != m:
            raise ValueError("VWNHFConfig.vwn_collapse='none' needs virtual_width_n == "
                             f"virtual_width_m, got (m, n) = ({m}, {n})")
        if self.vwn_collapse == "norm_linear" and n % m:
            raise ValueError(f"VWNHFConfig.vwn_collapse='norm_linear' needs an integer r = n/m, "
                             f"got (m, n) = ({m}, {n}); use 'linear'")
        if self.tie_word_embeddings and self.vwn_embedding == "wide" and n != m:
            raise ValueError("VWNHFConfig.tie_word_embeddings=True needs vwn_embedding="
                             "'factorized' (a D'-wide table cannot be the D-wide LM head)")
        rot = int(self.head_dim * self.partial_rotary_factor)
        if not 0 < self.partial_rotary_factor <= 1 or rot % 2:
            raise ValueError(f"VWNHFConfig.partial_rotary_factor={self.partial_rotary_factor} must "
                             f"be in (0, 1] and give an even rotary dim (head_dim={self.head_dim})")
        if self.num_experts is not None:
            positive_int("num_experts", self.num_experts)
            positive_int("num_experts_per_tok", self.num_experts_per_tok)
            positive_int("moe_intermediate_size", self.moe_intermediate_size)
            if self.num_experts_per_tok > self.num_experts:
                raise ValueError(f"VWNHFConfig.num_experts_per_tok={self.num_experts_per_tok} > "
                                 f"num_experts={self.num_experts}")
            pattern = self.moe_layer_pattern
            if pattern is not None and (len(pattern) != self.num_hidden_layers
                                        or any(v not in (0, 1) for v in pattern)):
                raise ValueError("VWNHFConfig.moe_layer_pattern must hold one 0/1 per layer "
                                 f"({self.num_hidden_layers}), got {pattern!r}")
        if not isinstance(self.mtp_num_layers, int) or self.mtp_num_layers < 0:
            raise ValueError(f"VWNHFConfig.mtp_num_layers must be an integer >= 0, got "
                             f"{self.mtp_num_layers!r}")


__all__ = ["VWNHFConfig"]
