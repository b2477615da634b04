"""Expert parallelism (MoE) vs one process, each rank with its own data."""

from __future__ import annotations

import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import build_vwn_gpt, make_batch
from nemo_vwn.testing.parallel import load_unsharded, unsharded_grads
from tests.workers.common import SEED, case_config, compare, forward_backward


def ep_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """MoE with EP=2 vs EP=1 (each rank its own batch): per-rank loss, non-expert grads per rank,
    expert grads against the sum over ranks of the EP=1 expert grads."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state

    results = []
    for case in cases:
        set_parallel_layout(seed=SEED)
        reference = build_vwn_gpt(case_config(case))
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        batch = make_batch(batch_size=2, seed=100 + rank)  # different data per rank
        ref_loss = forward_backward(reference, batch)
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}
        for name, grad in ref_grads.items():
            if ".local_experts." in name:  # experts see every rank's tokens under EP
                dist.all_reduce(grad)

        set_parallel_layout(expert_model_parallel_size=world_size, seed=SEED)
        model = build_vwn_gpt(case_config(case, expert_model_parallel_size=world_size))
        num_local = case_num_local = model.config.num_moe_experts // world_size
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        load_unsharded(model, full_state, ep_rank=ep_rank, num_local_experts=num_local)
        loss = forward_backward(model, batch)
        grads = unsharded_grads(model, None, ep_rank=ep_rank, num_local_experts=case_num_local)
        grad_abs, grad_rel, worst = compare(grads, ref_grads)
        results.append(dict(
            case=case.get("name", str(case)), loss=ref_loss.mean().item(),
            loss_max_abs_diff=(loss - ref_loss).abs().max().item(),
            grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel, worst_param=worst,
            local_experts=sorted({n.split("local_experts.")[1].split(".")[0]
                                  for n in grads if "local_experts." in n}),
        ))
        del reference, model
    return results
