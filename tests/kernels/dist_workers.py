"""gloo workers for tests/kernels (run through nemo_vwn.distributed.run_distributed)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def sequence_parallel_ghc(rank: int, world_size: int, case: dict) -> dict:
    """This rank's GHC gradients (all-reduced over ranks) on its 1/world_size of the tokens."""
    from nemo_vwn.kernels import ghc_autograd, runtime
    from tests.kernels.common import make_inputs, make_pair, run_layer

    if not runtime.interpreter_active() and not runtime.cuda_usable():
        raise RuntimeError("worker cannot run the Triton kernels: " + runtime.describe())
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    ghc_autograd.BLOCK_D_MAX = 16  # as tests/kernels/conftest.py does in the parent
    ref, tri = make_pair(case["m"], case["n"], case["d"], True, seed=5)
    inputs = make_inputs(ref, case["s"], case["b"], seed=9)
    half = case["s"] // world_size  # sequence parallelism splits the sequence dimension
    local = {k: v[rank * half:(rank + 1) * half] for k, v in inputs.items()}
    got = run_layer(tri, local, torch.float32)
    for grad in got["grads"].values():
        dist.all_reduce(grad)  # what Megatron does for parameters tagged sequence_parallel
    return dict(rank=rank, grads=got["grads"], dH=got["dH"], mode=runtime.describe())
