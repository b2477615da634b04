"""The provider of the CPU baseline twins: megatron's GPTModel, with a local-module MTP block.

A baseline twin is a VWN recipe with VWN off (``nemo_vwn.recipes``). Bridge's own
``GPTModelProvider`` builds the upstream MTP block with Transformer Engine modules hard-coded; with
``transformer_impl="local"`` this provider builds it from megatron's local modules instead, so a
baseline with ``mtp_num_layers`` trains on a machine without TE. ``nemo_vwn.bridge.apply`` maps this
class to ``VWNModelProvider`` (a VWN model replaces the upstream MTP block anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.bridge.models.gpt_provider import GPTModelProvider


@dataclass
class LocalGPTModelProvider(GPTModelProvider):
    """GPTModelProvider for baseline twins: with ``transformer_impl="local"`` its upstream MTP
    block is built from local modules too (Bridge's default MTP spec needs TE)."""

    def provide(self, pre_process=None, post_process=None, vp_stage=None):
        if getattr(self, "transformer_impl", None) == "local" and self.mtp_num_layers:
            from nemo_vwn import runtime

            with runtime.bridge_local_mtp_spec():
                return super().provide(pre_process, post_process, vp_stage)
        return super().provide(pre_process, post_process, vp_stage)
