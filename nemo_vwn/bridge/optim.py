"""Megatron-Bridge hook for the VWN weight-decay groups (see nemo_vwn.optim)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.bridge.training.config import OptimizerConfigOverrideProvider
from megatron.core.optimizer import ParamKey

from nemo_vwn.ghc import NO_WEIGHT_DECAY_ATTR


@dataclass
class VWNOptimizerConfigOverrideProvider(OptimizerConfigOverrideProvider):
    """Bridge's standard overrides (or ``base``'s) plus: no weight decay for parameters VWN tagged.

    Set as ``ConfigContainer.optimizer_config_override_provider`` (VWN recipes and ``apply_vwn``
    do); Bridge's ``setup_optimizer`` passes the result to ``get_megatron_optimizer``.

    ``base``: a recipe's own override provider (a custom subclass); its overrides are kept and
    the VWN no-decay group is added on top. ``None``: Bridge's standard overrides.
    """

    base: Optional[OptimizerConfigOverrideProvider] = None

    def build_config_overrides(self, context):
        if self.base is not None:
            overrides = dict(self.base.build_config_overrides(context) or {})
        else:
            overrides = dict(super().build_config_overrides(context) or {})
        overrides[ParamKey(attr=NO_WEIGHT_DECAY_ATTR)] = {"wd_mult": 0.0}
        return overrides
