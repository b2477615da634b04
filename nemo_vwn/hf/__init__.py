"""Hugging Face ``transformers`` model of a Virtual Width Network (``model_type = "vwn"``).

Importing this package registers ``VWNHFConfig`` / ``VWNForCausalLM`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(dir)`` loads an exported
directory without ``trust_remote_code``. Exported directories also carry copies of
``configuration_vwn.py`` and ``modeling_vwn.py`` with an ``auto_map``, so
``trust_remote_code=True`` loads them where nemo_vwn is not installed.

The Megatron-Bridge conversion is in ``nemo_vwn.hf.bridge`` (the ``MegatronModelBridge``
registration), ``nemo_vwn.hf.config_mapping`` (provider <-> HF config) and
``nemo_vwn.hf.param_mapping`` (parameter mappings); they import megatron, this package does not.
Checkpoint-level export and import with validation: ``nemo_vwn.convert.hf``
(``nemo-vwn convert export-hf|import-hf``).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from nemo_vwn.hf.configuration_vwn import VWNHFConfig
from nemo_vwn.hf.modeling_vwn import VWNForCausalLM, VWNModel

MODELING_FILES = ("configuration_vwn.py", "modeling_vwn.py")
"""The files an exported directory carries (``auto_map`` points into them)."""

AUTO_MAP = {
    "AutoConfig": "configuration_vwn.VWNHFConfig",
    "AutoModelForCausalLM": "modeling_vwn.VWNForCausalLM",
}


def _register() -> None:
    try:
        AutoConfig.register(VWNHFConfig.model_type, VWNHFConfig)
    except ValueError:  # already registered (module re-imported)
        pass
    try:
        AutoModelForCausalLM.register(VWNHFConfig, VWNForCausalLM)
    except ValueError:
        pass


_register()

__all__ = ["AUTO_MAP", "MODELING_FILES", "VWNForCausalLM", "VWNHFConfig", "VWNModel"]
