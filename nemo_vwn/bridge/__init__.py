"""Megatron-Bridge (NeMo framework) integration: the VWN model provider and training helpers.

Submodules import Megatron-Bridge; on a machine without Transformer Engine call
``nemo_vwn.runtime.prepare_runtime()`` first (the CLI does). This package itself imports nothing.
"""

__all__ = ["VWNModelProvider", "vwn_layer_spec"]


def __getattr__(name):
    if name in __all__:
        from nemo_vwn.bridge import provider

        return getattr(provider, name)
    raise AttributeError(name)
