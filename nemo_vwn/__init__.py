"""nemo_vwn: Virtual Width Networks (arXiv 2511.11238) for Megatron-core and the NeMo framework.

Public API:
    VWNConfig                    megatron TransformerConfig + VWN fields, validated
    get_vwn_layer_spec           ModuleSpec of the VWN TransformerLayer (dense or MoE)
    get_vwn_decoder_block_spec   per-stage block spec, like get_gpt_decoder_block_spec
    VWNGPTModel                  GPTModel with over-width embedding and collapse
    VWNHybridModel               HybridModel (layer pattern) with the same, one GHC per layer
    get_vwn_hybrid_stack_spec    the VWN hybrid stack spec
    nemo_vwn.ghc.GHC             one GHC/DGHC module: read() and write()

Importing this package changes nothing in megatron-core; CPU runs apply
``nemo_vwn.patches.cpu_runtime`` explicitly.
"""

# The exports are resolved on first use (PEP 562), so importing a submodule that needs no
# megatron-core (nemo_vwn.cli for ``--help``, nemo_vwn.data, nemo_vwn.runtime) does not import it.
_EXPORTS = {
    "VWNConfig": "nemo_vwn.config",
    "VWNConfigError": "nemo_vwn.config",
    "VWNConfigMixin": "nemo_vwn.config",
    "get_vwn_decoder_block_spec": "nemo_vwn.layer_specs",
    "get_vwn_layer_spec": "nemo_vwn.layer_specs",
    "VWNHybridModel": "nemo_vwn.hybrid_model",
    "get_vwn_hybrid_stack_spec": "nemo_vwn.hybrid_specs",
    "VWNGPTModel": "nemo_vwn.model",
}

__version__ = "0.1.0"

__all__ = [
    "VWNConfig",
    "VWNConfigError",
    "VWNConfigMixin",
    "VWNGPTModel",
    "VWNHybridModel",
    "get_vwn_decoder_block_spec",
    "get_vwn_hybrid_stack_spec",
    "get_vwn_layer_spec",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nemo_vwn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
