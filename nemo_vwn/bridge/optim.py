"""Megatron-Bridge hook for the VWN weight-decay groups (see nemo_vwn.optim)."""

from __future__ import annotations

from megatron.bridge.training.config import OptimizerConfigOverrideProvider
from megatron.core.optimizer import ParamKey

from nemo_vwn.ghc import NO_WEIGHT_DECAY_ATTR


class VWNOptimizerConfigOverrideProvider(OptimizerConfigOverrideProvider):
    """Bridge's standard overrides plus: no weight decay for parameters VWN tagged.

    Set as ``ConfigContainer.optimizer_config_override_provider`` (VWN recipes and ``apply_vwn``
    do); Bridge's ``setup_optimizer`` passes the result to ``get_megatron_optimizer``.
    """

    def build_config_overrides(self, context):
        overrides = dict(super().build_config_overrides(context) or {})
        overrides[ParamKey(attr=NO_WEIGHT_DECAY_ATTR)] = {"wd_mult": 0.0}
        return overrides
