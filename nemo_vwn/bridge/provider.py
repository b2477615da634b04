"""VWNModelProvider: a Megatron-Bridge GPTModelProvider that builds VWNGPTModel.

A NeMo user selects VWN by using this provider (or a VWN recipe, or ``apply_vwn`` on any GPT/MoE
recipe) and trains with Bridge's own ``pretrain()``. The VWN fields and their validation are the
same ``VWNConfigMixin`` as ``nemo_vwn.VWNConfig``; like every Bridge config, validation runs in
``finalize()`` (after CLI overrides), before any model is built.

The VWN behaviour of a provider (validate in ``finalize()``, build ``VWNGPTModel`` in
``provide()``) lives in ``VWNProviderMixin`` so that ``nemo_vwn.bridge.apply`` can mix it into any
``GPTModelProvider`` subclass (OLMoE's, MLA's, ...); ``VWNModelProvider`` is that mix for the plain
``GPTModelProvider``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

from megatron.bridge.models.gpt_provider import GPTModelProvider
from megatron.core.transformer import ModuleSpec

from nemo_vwn import runtime
from nemo_vwn.config import VWNConfigError, VWNConfigMixin, check_tied_embeddings
from nemo_vwn.layer_specs import HAVE_TE, get_vwn_decoder_block_spec
from nemo_vwn.model import VWNGPTModel

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


@contextlib.contextmanager
def without_upstream_mtp_spec():
    """Within the block, Bridge's provide() passes ``mtp_block_spec=None``.

    VWNGPTModel builds its own MTP block from the decoder's VWN layer spec and ignores an upstream
    one; Bridge's ``mtp_block_spec()`` would still build it, with Transformer Engine modules
    hard-coded (``use_transformer_engine=True``), which fails where TE is absent.
    """
    import megatron.bridge.models.gpt_provider as gpt_provider

    original = gpt_provider.mtp_block_spec
    gpt_provider.mtp_block_spec = lambda config, vp_stage=None: None
    try:
        yield
    finally:
        gpt_provider.mtp_block_spec = original


class VWNProviderMixin:
    """VWN behaviour for a ``GPTModelProvider`` (sub)class that also has the VWNConfigMixin fields.

    Put it first in the bases: ``class P(VWNProviderMixin, SomeGPTProvider, VWNConfigMixin)``.
    ``finalize()`` validates the VWN fields before Bridge's own validation; ``provide()`` runs the
    base provider's ``provide()`` with ``VWNGPTModel`` in place of megatron's ``GPTModel``.
    """

    def finalize(self) -> None:
        self.validate_vwn()
        check_tied_embeddings(self, self.share_embeddings_and_output_weights)
        super().finalize()

    def provide(self, pre_process=None, post_process=None, vp_stage=None) -> VWNGPTModel:
        if self.pipeline_model_parallel_size > 1:
            runtime.apply_pipeline_shapes()  # stage boundaries carry the wide state
        with runtime.bridge_provides(VWNGPTModel), without_upstream_mtp_spec():
            model = super().provide(pre_process=pre_process, post_process=post_process,
                                    vp_stage=vp_stage)
        if not isinstance(model, VWNGPTModel):
            bases = [c.__name__ for c in type(self).__bases__
                     if c not in (VWNProviderMixin, VWNConfigMixin)]
            raise VWNConfigError(
                f"{type(self).__name__}.provide() built a {type(model).__name__}, not a "
                "VWNGPTModel: "
                f"{'/'.join(bases)}.provide() does not build its model through "
                "GPTModelProvider.provide(), so VWN cannot be applied to this provider"
            )
        return model


@dataclass
class VWNModelProvider(VWNProviderMixin, GPTModelProvider, VWNConfigMixin):
    """GPTModelProvider + VWN fields (``virtual_width_n/m``, ``ghc_dynamic``, ``vwn_embedding``,
    ``vwn_collapse`` ...). ``provide()`` returns a ``VWNGPTModel``."""

    transformer_layer_spec: Union[ModuleSpec, Callable] = vwn_layer_spec
    # A D'-wide embedding table cannot be the D-wide LM head (set True only with "factorized").
    share_embeddings_and_output_weights: bool = False
