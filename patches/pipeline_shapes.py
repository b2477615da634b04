"""Pipeline stage boundaries carry the VWN wide state [s, b, D'], not [s, b, hidden_size].

megatron-core 0.19's pipeline schedules size their send/receive buffers from ``config.hidden_size``
(``get_tensor_shapes`` for the 1F1B schedule, an inline shape in the interleaved schedule), both
reading the config through the schedules module's ``get_model_config``. In a VWN model every
boundary between decoder stages carries the wide state (the embedding is wide, the collapse sits in
the final-norm slot of the last stage), so the boundary width is ``virtual_hidden_size`` (D').

``apply()`` makes the schedules see, for VWN models only, a *view* of the model config whose
``hidden_size`` is D'; every other attribute (reads and writes) goes to the real config. Upstream's
dev branch fixes the same problem for mHC by widening ``get_tensor_shapes``; this is the same fix
for both schedules without copying them. Non-VWN models are untouched.
"""

from __future__ import annotations

from nemo_vwn.patches import versions

REASON = (
    "pipeline schedules size p2p buffers from config.hidden_size; VWN stage boundaries carry the "
    "wide state of width D' = virtual_hidden_size"
)
# schedules.get_tensor_shapes / the interleaved schedule's inline tensor_shape, both via
# schedules.get_model_config
APPLIES_TO = {"megatron-core": ">=0.19,<0.20"}

_state = {"applied": False, "original": None}


class StageBoundaryConfigView:
    """A model config as the pipeline schedules should see it: ``hidden_size`` = D'."""

    __slots__ = ("_config",)

    def __init__(self, config):
        object.__setattr__(self, "_config", config)

    @property
    def hidden_size(self) -> int:
        return self._config.virtual_hidden_size

    def __getattr__(self, name):
        return getattr(self._config, name)

    def __setattr__(self, name, value):
        setattr(self._config, name, value)

    def __repr__(self) -> str:
        return (f"StageBoundaryConfigView({type(self._config).__name__}, "
                f"hidden_size={self.hidden_size})")


def _is_vwn(config) -> bool:
    return hasattr(config, "virtual_hidden_size") and getattr(config, "virtual_width_n", None)


def apply() -> None:
    """Idempotent; affects only the pipeline schedules, only for VWN models."""
    if _state["applied"]:
        return
    from megatron.core.pipeline_parallel import schedules

    versions.check_installed("pipeline_shapes", APPLIES_TO)
    versions.require_attributes("pipeline_shapes", schedules, ("get_model_config",))
    original = schedules.get_model_config

    def get_model_config(model):
        config = original(model)
        return StageBoundaryConfigView(config) if _is_vwn(config) else config

    _state["original"] = original
    schedules.get_model_config = get_model_config
    _state["applied"] = True


def is_applied() -> bool:
    return bool(_state["applied"])
