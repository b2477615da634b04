"""VWNModelProvider: a Megatron-Bridge GPTModelProvider that builds VWNGPTModel.

A NeMo user selects VWN by using this provider (or a VWN recipe, or ``apply_vwn`` on any GPT/MoE
recipe) and trains with Bridge's own ``pretrain()``. The VWN fields and their validation are the
same ``VWNConfigMixin`` as ``nemo_vwn.VWNConfig``; like every Bridge config, validation runs in
``finalize()`` (after CLI overrides), before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from megatron.bridge.models.gpt_provider import GPTModelProvider
from megatron.core.transformer import ModuleSpec

from nemo_vwn.config import VWNConfigMixin, check_tied_embeddings
from nemo_vwn.layer_specs import HAVE_TE, get_vwn_decoder_block_spec
from nemo_vwn.model import VWNGPTModel
from nemo_vwn.patches import pipeline_shapes
from nemo_vwn.patches.bridge_provider import gpt_model_class

try:  # Bridge re-instantiates providers from checkpoint run configs only for allowed prefixes
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    register_allowed_target_prefix("nemo_vwn.")
except ImportError:  # pragma: no cover - older Bridge without an allowlist
    pass


def vwn_layer_spec(config, vp_stage: Optional[int] = None):
    """Default ``transformer_layer_spec`` of VWN providers: the per-stage VWN block spec.

    Transformer Engine modules when TE is importable and ``transformer_impl`` asks for it,
    megatron-core's local modules otherwise.
    """
    use_te = bool(HAVE_TE) and getattr(config, "transformer_impl", "local") == "transformer_engine"
    return get_vwn_decoder_block_spec(config, use_transformer_engine=use_te, vp_stage=vp_stage)


@dataclass
class VWNModelProvider(GPTModelProvider, VWNConfigMixin):
    """GPTModelProvider + VWN fields (``virtual_width_n/m``, ``ghc_dynamic``, ``vwn_embedding``,
    ``vwn_collapse`` ...). ``provide()`` returns a ``VWNGPTModel``."""

    transformer_layer_spec: Union[ModuleSpec, Callable] = vwn_layer_spec
    # A D'-wide embedding table cannot be the D-wide LM head (set True only with "factorized").
    share_embeddings_and_output_weights: bool = False

    def finalize(self) -> None:
        self.validate_vwn()
        check_tied_embeddings(self, self.share_embeddings_and_output_weights)
        super().finalize()

    def provide(self, pre_process=None, post_process=None, vp_stage=None) -> VWNGPTModel:
        if self.pipeline_model_parallel_size > 1:
            pipeline_shapes.apply()  # stage boundaries carry the wide state
        with gpt_model_class(VWNGPTModel):
            return super().provide(pre_process=pre_process, post_process=post_process,
                                   vp_stage=vp_stage)
