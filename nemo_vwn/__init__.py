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

from nemo_vwn.config import VWNConfig, VWNConfigError, VWNConfigMixin
from nemo_vwn.layer_specs import get_vwn_decoder_block_spec, get_vwn_layer_spec
from nemo_vwn.hybrid_model import VWNHybridModel
from nemo_vwn.hybrid_specs import get_vwn_hybrid_stack_spec
from nemo_vwn.model import VWNGPTModel

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
