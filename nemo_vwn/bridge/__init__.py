"""Megatron-Bridge (NeMo framework) integration: the VWN model provider and training helpers.

Submodules import Megatron-Bridge; on a machine without Transformer Engine call
``nemo_vwn.runtime.prepare_runtime()`` first (the CLI does). This package itself imports nothing.

    VWNModelProvider, vwn_layer_spec          nemo_vwn.bridge.provider
    apply_vwn, vwn_provider_class,            nemo_vwn.bridge.apply  (VWN variant of any Bridge
      VWNSpecAdapter, UnsupportedRecipeError                          GPT / GPT-MoE recipe)
    LocalGPTModelProvider                     nemo_vwn.bridge.baseline (the CPU baseline twins)
    count_parameters, ParameterCount          nemo_vwn.bridge.params (sizes without allocation)
    run_pretrain, apply_overrides             nemo_vwn.bridge.training
    nemo_vwn.bridge.launch                    NeMo-Run launchers (optional extra ``[run]``; imports
                                              neither megatron nor the recipes)
    nemo_vwn.bridge.console, .progress        what a training run prints, and where

Nothing here imports ``nemo_vwn.recipes`` (the recipes sit above this package; recipe names,
sizes and GPU counts without megatron: ``nemo_vwn.recipes.catalog``).
"""

_EXPORTS = {
    "VWNModelProvider": "provider",
    "VWNProviderMixin": "provider",
    "vwn_layer_spec": "provider",
    "apply_vwn": "apply",
    "vwn_provider_class": "apply",
    "VWNSpecAdapter": "apply",
    "UnsupportedRecipeError": "apply",
    "LocalGPTModelProvider": "baseline",
    "count_parameters": "params",
    "ParameterCount": "params",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f"nemo_vwn.bridge.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(name)
