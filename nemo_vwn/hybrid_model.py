"""VWNHybridModel: megatron's HybridModel (layer pattern, one sub-layer per layer) with VWN.

    tokens -> VWNEmbedding [s, b, D'] -> hybrid layers, each a GHC around its one sub-layer
           (attention, MLP, MoE, Mamba ...) [s, b, D'] -> collapse + final norm [s, b, D] -> LM head

The stack is ``VWNHybridStack`` (HybridStack with ``VWNOutputNorm`` as its final norm), built from
``nemo_vwn.hybrid_specs``; the constructor takes exactly HybridModel's arguments. Pipeline stage
breaks (``|``) work as for the GPT path (the boundaries carry the wide state). MTP in the hybrid
pattern (``/``) is not supported yet (a clear error).
"""

from __future__ import annotations

import inspect

from megatron.core.models.hybrid.hybrid_block import HybridStack
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.identity_op import IdentityOp

from nemo_vwn import runtime
from nemo_vwn.collapse import VWNOutputNorm
from nemo_vwn.config import VWNConfigError, check_tied_embeddings
from nemo_vwn.model import VWNLanguageModelMixin, require_vwn_config

_HYBRID_MODEL_SIGNATURE = inspect.signature(HybridModel.__init__)
_SYMBOL_FIELDS = {"M": "mamba_layer", "G": "gdn_layer", "*": "attention_layer",
                  "D": "dsa_layer", "+": "mla_layer", "-": "mlp_layer", "E": "moe_layer"}


class VWNHybridStack(HybridStack):
    """HybridStack on the wide state: every layer type must have a (VWN) spec; the final norm is
    the collapse + final norm."""

    def __init__(self, config, submodules, *args, layer_type_list=None, post_layer_norm=True,
                 post_process=True, **kwargs):
        missing = sorted({s for s in (layer_type_list or [])
                          if getattr(submodules, _SYMBOL_FIELDS.get(s, ""), IdentityOp)
                          is IdentityOp})
        if missing:
            raise VWNConfigError(
                f"hybrid layer symbols {missing} have no layer spec in this VWN hybrid stack "
                "(the local stack has '*' attention, '-' MLP, 'E' MoE; Mamba 'M' and the other "
                "types need the Transformer Engine spec)"
            )
        super().__init__(config, submodules, *args, layer_type_list=layer_type_list,
                         post_layer_norm=False, post_process=post_process, **kwargs)
        if post_process and post_layer_norm:
            self.post_layer_norm = True
            self.final_norm = VWNOutputNorm(config, config.hidden_size,
                                            eps=config.layernorm_epsilon)


class VWNHybridModel(VWNLanguageModelMixin, HybridModel):
    """HybridModel with over-width embedding, one GHC per layer and a collapse before the head."""

    def __init__(self, config, hybrid_stack_spec, *args, **kwargs):
        require_vwn_config(config)
        bound = _HYBRID_MODEL_SIGNATURE.bind(self, config, hybrid_stack_spec, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        check_tied_embeddings(config, arguments["share_embeddings_and_output_weights"])
        spec = arguments["hybrid_stack_spec"]
        if not (isinstance(spec.module, type) and issubclass(spec.module, VWNHybridStack)):
            raise TypeError("VWNHybridModel needs a VWN hybrid stack spec "
                            "(nemo_vwn.get_vwn_hybrid_stack_spec)")
        pattern = arguments.get("hybrid_layer_pattern") or arguments.get("hybrid_override_pattern")
        if pattern and "/" in pattern:
            raise VWNConfigError("hybrid_layer_pattern with MTP ('/'): VWN multi-token prediction "
                                 "is implemented for VWNGPTModel, not yet for hybrid stacks")
        if config.pipeline_model_parallel_size > 1:
            runtime.apply_pipeline_shapes()  # stage boundaries carry the wide state
        self._defer_embedding_setup(True)
        super().__init__(**arguments)
        self._defer_embedding_setup(False)
        self._install_wide_embedding(arguments["position_embedding_type"],
                                     arguments["scatter_embedding_sequence_parallel"])
