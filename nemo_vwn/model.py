"""VWNGPTModel: megatron's GPTModel with a wide residual state.

    tokens -> VWNEmbedding [s, b, D'] -> VWN layers (GHC around attention and MLP/MoE) [s, b, D']
           -> VWNOutputNorm (collapse D' -> D, final norm) [s, b, D] -> LM head (width D) -> loss

Only the embedding differs structurally from GPTModel: the decoder is built from VWN specs (the
collapse sits in the block's final-norm slot), the LM head stays at width D, and forward/loss/MTP
plumbing is GPTModel's own. The constructor takes exactly GPTModel's arguments.

Construction note: GPTModel's constructor builds its standard D-wide embedding, which is then
replaced by the VWN embedding; the temporary table is freed right away.
"""

from __future__ import annotations

import inspect

from megatron.core.models.gpt.gpt_model import GPTModel

from nemo_vwn.config import VWNConfigError, check_tied_embeddings
from nemo_vwn.embedding import VWNEmbedding
from nemo_vwn.layer_specs import as_vwn_block_spec

_GPT_MODEL_SIGNATURE = inspect.signature(GPTModel.__init__)


def require_vwn_config(config) -> None:
    if not hasattr(config, "validate_vwn"):
        raise VWNConfigError(
            f"{type(config).__name__} has no VWN fields; build the model from nemo_vwn.VWNConfig "
            "(or the Megatron-Bridge VWNModelProvider)"
        )


class VWNGPTModel(GPTModel):
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
            from nemo_vwn.patches import pipeline_shapes

            if not pipeline_shapes.is_applied():
                raise VWNConfigError(
                    "pipeline_model_parallel_size > 1: stage boundaries carry the wide state "
                    "[s, b, D']; call nemo_vwn.patches.pipeline_shapes.apply() before training "
                    "(nemo_vwn.runtime.prepare_runtime() and VWNModelProvider do it)"
                )
        if arguments["mtp_block_spec"] is not None:
            raise VWNConfigError("mtp_block_spec: VWN multi-token prediction is not implemented yet")
        arguments["transformer_layer_spec"] = as_vwn_block_spec(
            transformer_layer_spec, config, vp_stage=arguments["vp_stage"]
        )
        super().__init__(**arguments)

        if self.pre_process or self.mtp_process:
            self.embedding = VWNEmbedding(
                config=self.config,
                vocab_size=self.vocab_size,
                max_sequence_length=self.max_sequence_length,
                position_embedding_type=arguments["position_embedding_type"],
                scatter_to_sequence_parallel=arguments["scatter_embedding_sequence_parallel"],
                tp_group=self.pg_collection.tp,
            )
            self.setup_embeddings_and_output_layer()
