"""The smallest multi-process job (tests/test_distributed.py): meet, all-reduce, report the port."""

from __future__ import annotations

import os


def sum_of_ranks(rank: int, world_size: int) -> dict:
    """All-reduce rank + 1 over the world; returns the sum and the MASTER_PORT the ranks met at."""
    import torch
    import torch.distributed as dist

    from nemo_vwn.runtime import init_process_group

    init_process_group(rank=rank, world_size=world_size)
    value = torch.tensor([rank + 1.0])
    dist.all_reduce(value)
    return {"sum": value.item(), "port": int(os.environ["MASTER_PORT"])}


def fail_plainly(rank: int, world_size: int) -> None:
    """A failure that has nothing to do with the rendezvous."""
    raise ValueError(f"rank {rank} of {world_size}: not a port problem")
