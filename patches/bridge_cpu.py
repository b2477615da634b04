"""Megatron-Bridge training on CPU: the three CUDA-only steps of its setup.

``megatron.bridge.training.setup`` calls ``initialize_megatron`` without ``allow_no_cuda`` (it
asserts CUDA), ``initialize_megatron`` runs ``make`` to compile megatron's dataset index helper
(the wheel ships the compiled ``helpers_cpp`` extension but no Makefile), and it warms up CUDA JIT
fusions with literal CUDA tensors. On CPU: allow no CUDA, keep the shipped helper, skip the warm-up
(the fusions are off in CPU configs). Requires ``cpu_runtime`` and ``bridge_imports`` applied
first (``nemo_vwn.runtime.prepare_runtime`` does the ordering).
"""

from __future__ import annotations

import functools
import importlib.util

from nemo_vwn.patches import bridge_imports, cpu_runtime, versions

REASON = (
    "Bridge setup asserts CUDA, compiles the dataset helper with make (no Makefile in the wheel) "
    "and warms up CUDA JIT fusions; on CPU allow no CUDA, use the shipped helper, skip the warm-up"
)
APPLIES_TO = {"megatron-bridge": ">=0.6,<0.7"}

_state = {"applied": False}


def _noop_compile_helpers():
    if importlib.util.find_spec("megatron.core.datasets.helpers_cpp") is None:
        raise RuntimeError(
            "megatron.core.datasets.helpers_cpp is not built; it ships with megatron-core wheels"
        )


def apply() -> None:
    if _state["applied"]:
        return
    if not (cpu_runtime.is_applied() and bridge_imports.is_applied()):
        raise RuntimeError(
            "nemo_vwn.patches.bridge_cpu needs cpu_runtime and bridge_imports applied first; "
            "call nemo_vwn.runtime.prepare_runtime()"
        )
    versions.check_installed("bridge_cpu", APPLIES_TO)
    from megatron.bridge.training import initialize, setup

    versions.require_attributes("bridge_cpu", initialize,
                                ("initialize_megatron", "compile_helpers", "_warmup_jit_function"))
    versions.require_attributes("bridge_cpu", setup, ("initialize_megatron",))

    original = initialize.initialize_megatron

    @functools.wraps(original)
    def initialize_megatron_without_cuda(*args, **kwargs):
        kwargs["allow_no_cuda"] = True
        return original(*args, **kwargs)

    setup.initialize_megatron = initialize_megatron_without_cuda
    initialize.initialize_megatron = initialize_megatron_without_cuda
    initialize.compile_helpers = _noop_compile_helpers
    initialize._warmup_jit_function = lambda *args, **kwargs: None
    _state["applied"] = True


def is_applied() -> bool:
    return bool(_state["applied"])
