"""Several workers in one process launch.

Starting the processes (spawn, importing torch and megatron, gloo rendezvous) costs more than most
parity checks, so a test module runs all its checks of one world size in one launch and each test
asserts on its own part. Every worker starts with ``init_cpu_distributed``, which keeps the process
group and re-lays megatron's groups and RNG seeds, so a worker sees no layout left by the one
before it.
"""

from __future__ import annotations

import importlib
from typing import Any


def run_jobs(rank: int, world_size: int, jobs: list[tuple[str, str, dict]]) -> dict[str, Any]:
    """``{key: worker(rank=, world_size=, **kwargs)}`` for each ``(key, "module:function", kwargs)``
    of ``jobs``, in order."""
    results = {}
    for key, target, kwargs in jobs:
        module, name = target.split(":")
        worker = getattr(importlib.import_module(module), name)
        results[key] = worker(rank=rank, world_size=world_size, **kwargs)
    return results
