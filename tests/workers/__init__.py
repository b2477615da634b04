"""Functions run on several CPU processes by the parallelism tests (via run_distributed).

One module per topic: tp (tensor + sequence parallel), ep (expert parallel), pipeline (layouts
through megatron's schedules: PP/VPP, TP x PP, EP x PP, hybrid), cp (context parallel),
optimizer (distributed optimizer), checkpoint (save in one layout, load in another), rendezvous
(the launcher's own port handling); common holds what they share, batch runs several of them in
one launch. Each worker builds the unsharded reference model and the parallel model from the same
weights, runs the same data through both, and returns the measured differences; the pytest side
asserts.

Tests import the worker function itself and pass ``target(fn)`` to run_distributed, so a renamed
or mistyped worker fails when the test module is collected, not inside a child process.
"""

from __future__ import annotations

from typing import Callable


def target(fn: Callable) -> str:
    """The "module:function" name run_distributed's child processes import."""
    return f"{fn.__module__}:{fn.__name__}"
