"""Megatron distributed checkpoints: save in one parallel layout, load in another."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import causal_mask, make_batch
from tests.workers.common import SEED, build, case_config, pipeline_forward_step


def _set_layout(layout):
    set_parallel_layout(tensor_model_parallel_size=layout.get("tp", 1),
                        pipeline_model_parallel_size=layout.get("pp", 1),
                        expert_model_parallel_size=layout.get("ep", 1), seed=SEED)


def _layout_model(case, layout, seed):
    from megatron.core import parallel_state

    pp = layout.get("pp", 1)
    parallel = dict(tensor_model_parallel_size=layout.get("tp", 1),
                    sequence_parallel=layout.get("sp", False), pipeline_model_parallel_size=pp,
                    expert_model_parallel_size=layout.get("ep", 1))
    if pp > 1:
        parallel["pipeline_dtype"] = torch.float32
    torch.manual_seed(seed)
    config = case_config(case, **parallel)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    return build(config, pre_process=pp_rank == 0, post_process=pp_rank == pp - 1)


def _forward_losses(model, batches, mask):
    """Per-microbatch loss through megatron's schedule (forward only), gathered to every rank."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=pipeline_forward_step(mask), data_iterator=iter(batches),
        model=[model], num_microbatches=len(batches), seq_length=batches[0][0].shape[1],
        micro_batch_size=batches[0][0].shape[0], forward_only=True,
    )
    mine = [d["lm loss"].item() for d in losses] if losses else []
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return next(g for g in gathered if g)


def checkpoint_resharding(rank: int, world_size: int, ckpt_root: str, cases: list[dict]) -> list:
    """Save a megatron distributed checkpoint in one layout, load it into a differently seeded
    model in another layout: the per-microbatch losses must be the same."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    import os

    from megatron.core import dist_checkpointing

    from nemo_vwn.patches import pipeline_shapes

    pipeline_shapes.apply()
    batches = [make_batch(batch_size=2, seed=400 + i) for i in range(2)]
    mask = causal_mask()
    results = []
    for index, case in enumerate(cases):
        case = dict(case)
        save_layout, load_layout = case.pop("save"), case.pop("load")
        ckpt_dir = os.path.join(ckpt_root, f"case{index}")
        _set_layout(save_layout)
        model = _layout_model(case, save_layout, seed=1)
        model.eval()
        saved_losses = _forward_losses(model, batches, mask)
        if rank == 0:
            os.makedirs(ckpt_dir, exist_ok=True)
        dist.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
        keys = sorted(model.sharded_state_dict().keys())
        del model

        _set_layout(load_layout)
        fresh = _layout_model(case, load_layout, seed=2)  # other init: loading must overwrite
        fresh.eval()
        before = _forward_losses(fresh, batches, mask)
        state = dist_checkpointing.load(fresh.sharded_state_dict(), ckpt_dir)
        fresh.load_state_dict(state)
        loaded_losses = _forward_losses(fresh, batches, mask)
        results.append(dict(
            case=case.get("name"), save=save_layout, load=load_layout,
            loss_max_abs_diff=max(abs(a - b) for a, b in zip(saved_losses, loaded_losses)),
            fresh_init_differed=max(abs(a - b) for a, b in zip(saved_losses, before)) > 1e-3,
            n_keys=len(keys), ghc_keys=sum("_ghc." in k for k in keys),
            mtp_keys=sum(k.startswith("mtp.") for k in keys),
        ))
        del fresh
    return results
