"""Build a GPTModel subclass through Megatron-Bridge's own ``GPTModelProvider.provide()``.

``GPTModelProvider.provide()`` (vocab padding, meta-device init, pre/post-process per pipeline
stage, vp stage, MTP spec) instantiates the module-level name ``MCoreGPTModel`` directly, with no
hook for a subclass. ``gpt_model_class(cls)`` rebinds that name for the duration of one
``provide()`` call so VWNModelProvider reuses all of that logic instead of copying it.

Bridge's module-level ``mtp_block_spec`` (called by ``provide()``) builds the upstream MTP block
with ``use_transformer_engine=True`` unconditionally; ``local_mtp_block_spec()`` rebinds it for one
call to the same spec built from megatron's local modules (baseline twins with MTP on CPU).
"""

from __future__ import annotations

import contextlib
import threading

from nemo_vwn.patches import versions

REASON = (
    "GPTModelProvider.provide() hard-codes megatron's GPTModel and a TE-only MTP spec; rebind "
    "them for one call (VWNGPTModel; local-module MTP for CPU baselines)"
)
APPLIES_TO = {"megatron-bridge": ">=0.6,<0.7"}

_lock = threading.Lock()


def _gpt_provider(name: str):
    """Bridge's gpt_provider module, after checking the versions and that ``name`` still exists."""
    import megatron.bridge.models.gpt_provider as gpt_provider

    versions.check_installed("bridge_provider", APPLIES_TO)
    versions.require_attributes("bridge_provider", gpt_provider, (name,))
    return gpt_provider


@contextlib.contextmanager
def gpt_model_class(model_class):
    """Within the block, GPTModelProvider.provide() builds ``model_class``."""
    gpt_provider = _gpt_provider("MCoreGPTModel")
    with _lock:
        original = gpt_provider.MCoreGPTModel
        gpt_provider.MCoreGPTModel = model_class
        try:
            yield
        finally:
            gpt_provider.MCoreGPTModel = original


def _local_mtp_block_spec(config, vp_stage=None):
    """Bridge's ``mtp_block_spec`` with megatron's local (non-TE) modules."""
    import inspect

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    if not getattr(config, "mtp_num_layers", None):
        return None
    spec = config.transformer_layer_spec
    if callable(spec) and not hasattr(spec, "module"):
        params = inspect.signature(spec).parameters
        spec = spec(config, vp_stage=vp_stage) if "vp_stage" in params else spec(config)
    return get_gpt_mtp_block_spec(config, spec, use_transformer_engine=False, vp_stage=vp_stage)


@contextlib.contextmanager
def local_mtp_block_spec():
    """Within the block, GPTModelProvider.provide() builds the upstream MTP block from local
    modules (Bridge's ``mtp_block_spec`` hard-codes ``use_transformer_engine=True``)."""
    gpt_provider = _gpt_provider("mtp_block_spec")
    with _lock:
        original = gpt_provider.mtp_block_spec
        gpt_provider.mtp_block_spec = _local_mtp_block_spec
        try:
            yield
        finally:
            gpt_provider.mtp_block_spec = original
