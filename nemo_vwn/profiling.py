"""Deterministic cost measurements: parameter counts and activation bytes saved for backward.

``saved_activation_bytes`` counts the distinct storages autograd keeps for the backward pass of one
forward (parameters excluded): the activation memory a training step holds at its peak, minus
transient buffers. It needs no GPU and gives the same number every run, so VWN vs baseline and
recompute on vs off can be compared exactly (wall-clock and peak-allocator numbers come from the
benchmarks on real hardware).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def count_saved_tensors(model: torch.nn.Module):
    """Within the block, record {storage pointer: bytes} of every tensor saved for backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen[key] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield seen


def saved_activation_bytes(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of activations saved for backward by ``forward()`` (run once, then backward)."""
    with count_saved_tensors(model) as seen:
        loss = forward()
    total = sum(seen.values())
    loss.float().sum().backward()
    return total
