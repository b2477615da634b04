"""Megatron-Bridge conversion between ``VWNGPTModel`` and the HF ``VWNForCausalLM``.

``VWNBridge`` is registered with ``@MegatronModelBridge.register_bridge`` (source: the HF class,
also by name, so a class loaded from an exported directory with ``trust_remote_code`` dispatches
here too; target: ``VWNGPTModel``; provider: ``VWNModelProvider``). Importing this module is what
registers it; Bridge's ``AutoBridge`` then handles VWN checkpoints like any other architecture
(``AutoBridge.from_hf_pretrained(dir)``).

The bridge is thin: the config translation is ``nemo_vwn.hf.config_mapping``, the parameter
mappings ``nemo_vwn.hf.param_mapping`` (both re-exported here).
"""

from __future__ import annotations

from megatron.bridge.models.conversion.mapping_registry import MegatronMappingRegistry
from megatron.bridge.models.conversion.model_bridge import (
    MegatronModelBridge,
    register_bridge_implementation,
)

from nemo_vwn.bridge.provider import VWNModelProvider
from nemo_vwn.hf.config_mapping import (
    UnsupportedFeatureError,
    hf_config_from_provider,
    provider_from_hf_config,
)
from nemo_vwn.hf.configuration_vwn import VWNHFConfig
from nemo_vwn.hf.modeling_vwn import VWNForCausalLM
from nemo_vwn.hf.param_mapping import mapping_registry_for
from nemo_vwn.model import VWNGPTModel

MODEL_TYPE = "vwn"


@MegatronModelBridge.register_bridge(source=VWNForCausalLM, target=VWNGPTModel,
                                     provider=VWNModelProvider, model_type=MODEL_TYPE)
class VWNBridge(MegatronModelBridge):
    """Megatron-Bridge bridge for Virtual Width Networks (HF ``VWNForCausalLM`` <->
    ``VWNGPTModel``); see the module docstring."""

    def provider_bridge(self, hf_pretrained) -> VWNModelProvider:
        config = getattr(hf_pretrained, "config", hf_pretrained)
        if getattr(config, "model_type", None) != MODEL_TYPE:
            raise UnsupportedFeatureError(
                f"VWNBridge converts model_type 'vwn', got {getattr(config, 'model_type', None)!r}")
        if not isinstance(config, VWNHFConfig):  # a copy loaded from an exported dir's code
            config = VWNHFConfig(**config.to_dict())
        return provider_from_hf_config(config)

    @classmethod
    def megatron_to_hf_config(cls, provider) -> dict:
        return hf_config_from_provider(provider).to_dict()

    def mapping_registry(self) -> MegatronMappingRegistry:
        config = self.hf_config
        if config is None:
            raise ValueError("VWNBridge.mapping_registry() needs the HF config (set by AutoBridge)")
        if not isinstance(config, VWNHFConfig):
            config = VWNHFConfig(**config.to_dict())
        return mapping_registry_for(config)


# A VWNForCausalLM loaded with trust_remote_code is a different class object of the same name:
# register the name too, which is also what AutoBridge looks up for configs with an auto_map.
register_bridge_implementation(source="VWNForCausalLM", target=VWNGPTModel, bridge_class=VWNBridge)

__all__ = ["UnsupportedFeatureError", "VWNBridge", "hf_config_from_provider",
           "mapping_registry_for", "provider_from_hf_config"]
