"""VWNGPTModel: megatron's GPTModel with a wide residual state (docs/method.md §2-5).

    tokens -> VWNEmbedding [s, b, D'] -> VWN layers (GHC around attention and MLP/MoE) [s, b, D']
           -> VWNOutputNorm (collapse D' -> D, final norm) [s, b, D] -> LM head (width D) -> loss

Only the embedding differs structurally from GPTModel: the decoder is built from VWN specs (the
collapse sits in the block's final-norm slot), the LM head stays at width D, and forward/loss
plumbing is GPTModel's own. The constructor takes exactly GPTModel's arguments.

Multi-token prediction (``config.mtp_num_layers`` = k, docs/method.md §5): the MTP depths branch
off the *wide* state before the collapse (``nemo_vwn.mtp``). The decoder hands that state over
through upstream's ``extract_layer_indices`` (the output of the last layer), each depth's wide
output goes through the decoder's own collapse + final norm, and megatron's ``process_mtp_loss``
computes, logs and
back-propagates the per-depth losses exactly as for a stock GPT. An upstream ``mtp_block_spec`` is
accepted for API compatibility (Megatron-Bridge passes one) but VWN builds its own MTP block from
the decoder's VWN layer spec.

Construction note: GPTModel's constructor builds its standard D-wide embedding, which is then
replaced by the VWN embedding; the temporary table is freed right away. Upstream's embedding/head
setup (which all-reduces embedding copies across pipeline stages) runs once, at the end.
"""

from __future__ import annotations

import inspect

import torch
from megatron.core.inference.utils import InferenceMode
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.multi_token_prediction import mtp_on_this_rank

from nemo_vwn import runtime
from nemo_vwn.config import VWNConfigError, check_tied_embeddings
from nemo_vwn.embedding import VWNEmbedding
from nemo_vwn.layer_specs import as_vwn_block_spec
from nemo_vwn.mtp import VWNMultiTokenPredictionBlock

_GPT_MODEL_SIGNATURE = inspect.signature(GPTModel.__init__)
_GPT_FORWARD_SIGNATURE = inspect.signature(GPTModel.forward)


def require_vwn_config(config) -> None:
    if not hasattr(config, "validate_vwn"):
        raise VWNConfigError(
            f"{type(config).__name__} has no VWN fields; build the model from nemo_vwn.VWNConfig "
            "(or the Megatron-Bridge VWNModelProvider)"
        )


class VWNLanguageModelMixin:
    """What every VWN language model does around its upstream constructor: the wide embedding
    replaces the upstream D-wide one, and upstream's embedding/head setup (tags, cross-stage weight
    sync) runs once, with the VWN modules in place."""

    def _defer_embedding_setup(self, defer: bool) -> None:
        object.__setattr__(self, "_vwn_defer_embedding_setup", defer)

    def setup_embeddings_and_output_layer(self) -> None:
        """Upstream's embedding/head setup, run once: after the VWN embedding (and MTP) exist, not
        from inside the upstream constructor."""
        if getattr(self, "_vwn_defer_embedding_setup", False):
            return
        super().setup_embeddings_and_output_layer()

    def _install_wide_embedding(self, position_embedding_type, scatter_to_sequence_parallel):
        if self.pre_process or getattr(self, "mtp_process", False):
            self.embedding = VWNEmbedding(
                config=self.config,
                vocab_size=self.vocab_size,
                max_sequence_length=self.max_sequence_length,
                position_embedding_type=position_embedding_type,
                scatter_to_sequence_parallel=scatter_to_sequence_parallel,
                tp_group=self.pg_collection.tp,
            )
        if self.pre_process or self.post_process or getattr(self, "mtp_process", False):
            self.setup_embeddings_and_output_layer()


class VWNGPTModel(VWNLanguageModelMixin, GPTModel):
    """GPTModel with over-width embedding, GHC-wrapped layers and a collapse before the LM head."""

    def __init__(self, config, transformer_layer_spec, *args, **kwargs):
        require_vwn_config(config)
        bound = _GPT_MODEL_SIGNATURE.bind(self, config, transformer_layer_spec, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        # Checks that need the model arguments, before anything is allocated.
        check_tied_embeddings(config, arguments["share_embeddings_and_output_weights"])
        if config.pipeline_model_parallel_size > 1:
            runtime.apply_pipeline_shapes()  # stage boundaries carry the wide state
        block_spec = as_vwn_block_spec(transformer_layer_spec, config,
                                       vp_stage=arguments["vp_stage"])
        _check_context_parallel_attention(block_spec, config)
        arguments["transformer_layer_spec"] = block_spec
        arguments["mtp_block_spec"] = None  # VWN builds its own MTP block (below)
        # GPTModel's constructor syncs embedding copies across pipeline stages; that must happen
        # once, with the VWN embedding and MTP in place (see setup_embeddings_and_output_layer).
        self._defer_embedding_setup(True)
        super().__init__(**arguments)
        self._defer_embedding_setup(False)

        if config.mtp_num_layers:
            self.mtp_process = mtp_on_this_rank(
                layout=config.pipeline_model_parallel_layout,
                mtp_num_layers=config.mtp_num_layers,
                ignore_virtual=False,
                vp_stage=self.vp_stage,
            )
            _check_mtp_placement(self, config)
            if self.mtp_process:
                self.mtp = VWNMultiTokenPredictionBlock(
                    config, block_spec.layer_specs[-1], vp_stage=self.vp_stage,
                    pg_collection=self.pg_collection,
                )

        self._install_wide_embedding(arguments["position_embedding_type"],
                                     arguments["scatter_embedding_sequence_parallel"])

    # ------------------------------------------------------------------ multi-token prediction
    def _runs_vwn_mtp(self) -> bool:
        return (bool(self.config.mtp_num_layers) and self.mtp_process
                and not InferenceMode.is_active())

    def forward(self, *args, **kwargs):
        """GPTModel.forward; with MTP the decoder also returns the last layer's wide state."""
        if not self._runs_vwn_mtp():
            return super().forward(*args, **kwargs)
        bound = _GPT_FORWARD_SIGNATURE.bind(self, *args, **kwargs)
        extra = dict(bound.arguments.get("extra_block_kwargs") or {})
        extra["extract_layer_indices"] = {self.config.num_layers - 1}
        bound.arguments["extra_block_kwargs"] = extra
        return super().forward(*bound.args[1:], **bound.kwargs)

    def _postprocess(self, hidden_states, **kwargs):
        """Run the VWN MTP depths on the wide state, then GPTModel's postprocess (loss, logits)."""
        extra = dict(kwargs.get("extra_block_kwargs") or {})
        extra.pop("extract_layer_indices", None)
        kwargs["extra_block_kwargs"] = extra or None
        if isinstance(hidden_states, tuple):  # (collapsed + normed, [wide state of last layer])
            hidden_states, (wide,) = hidden_states
            if kwargs.get("mtp_in_postprocess"):
                depth_states = self.mtp(
                    input_ids=kwargs["input_ids"],
                    position_ids=kwargs["position_ids"],
                    hidden_states=wide,
                    embedding=self.embedding,
                    attention_mask=kwargs.get("attention_mask"),
                    packed_seq_params=kwargs.get("packed_seq_params"),
                    padding_mask=kwargs.get("padding_mask"),
                    rotary_pos_emb=kwargs.get("rotary_pos_emb"),
                    rotary_pos_cos=kwargs.get("rotary_pos_cos"),
                    rotary_pos_sin=kwargs.get("rotary_pos_sin"),
                    sequence_len_offset=kwargs.get("sequence_len_offset"),
                    **extra,
                )
                collapse = self.decoder.final_layernorm  # collapse + final norm, shared
                hidden_states = torch.cat(
                    [hidden_states] + [collapse(state) for state in depth_states], dim=0
                )  # [(1 + k) * s, b, D], the layout process_mtp_loss splits
        kwargs["mtp_in_postprocess"] = False
        return super()._postprocess(hidden_states, **kwargs)


def _check_context_parallel_attention(block_spec, config) -> None:
    """CP shards the wide state along the sequence like the residual (GHC is per token); the
    attention must be context-parallel too, which megatron's local attention is not."""
    if config.context_parallel_size <= 1:
        return
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    for spec in block_spec.layer_specs:
        attention = getattr(getattr(spec.submodules, "self_attention", None), "submodules", None)
        if getattr(attention, "core_attention", None) is DotProductAttention:
            raise VWNConfigError(
                f"context_parallel_size={config.context_parallel_size} needs a context-parallel "
                "attention: Transformer Engine's TEDotProductAttention (use a TE spec, "
                "use_transformer_engine=True, on a GPU machine with TE installed); megatron's "
                "local DotProductAttention supports context_parallel_size=1 only"
            )


def _check_mtp_placement(model, config) -> None:
    if model.mtp_process and not model.post_process:
        raise VWNConfigError(
            "VWN multi-token prediction must sit on the pipeline stage with the LM head "
            "(pipeline_model_parallel_layout places MTP elsewhere)"
        )
    if config.pipeline_model_parallel_size > 1:
        if config.vwn_embedding != "wide" or model.position_embedding_type == "learned_absolute":
            raise VWNConfigError(
                "mtp_num_layers with pipeline_model_parallel_size > 1 needs vwn_embedding='wide' "
                "and no learned_absolute position embedding (only the word table is kept in "
                "sync between the first stage and the MTP stage)"
            )
