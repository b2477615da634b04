"""Build a GPTModel subclass through Megatron-Bridge's own ``GPTModelProvider.provide()``.

``GPTModelProvider.provide()`` (vocab padding, meta-device init, pre/post-process per pipeline
stage, vp stage, MTP spec) instantiates the module-level name ``MCoreGPTModel`` directly, with no
hook for a subclass. ``gpt_model_class(cls)`` rebinds that name for the duration of one
``provide()`` call so VWNModelProvider reuses all of that logic instead of copying it.
"""

from __future__ import annotations

import contextlib
import threading

REASON = (
    "GPTModelProvider.provide() hard-codes megatron's GPTModel; rebind it for one call so a "
    "subclass (VWNGPTModel) is built by Bridge's own provide() logic"
)
APPLIES_TO = "megatron-bridge 0.4-0.6"

_lock = threading.Lock()


@contextlib.contextmanager
def gpt_model_class(model_class):
    """Within the block, GPTModelProvider.provide() builds ``model_class``."""
    import megatron.bridge.models.gpt_provider as gpt_provider

    with _lock:
        original = gpt_provider.MCoreGPTModel
        gpt_provider.MCoreGPTModel = model_class
        try:
            yield
        finally:
            gpt_provider.MCoreGPTModel = original
