"""Tensor parallelism (optionally with sequence parallelism) vs one process."""

from __future__ import annotations

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import build_vwn_gpt, make_batch
from nemo_vwn.testing.parallel import (
    allreduce_sequence_parallel_grads,
    load_unsharded,
    unsharded_grads,
)
from tests.workers.common import SEED, case_config, compare, forward_backward


def tp_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """TP=2 (optionally +SP) vs TP=1 on the same weights and data: loss and every gradient."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state

    results = []
    for case in cases:
        sp = case.pop("sequence_parallel", False)
        set_parallel_layout(tensor_model_parallel_size=1, seed=SEED)
        reference = build_vwn_gpt(case_config(case))
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        batch = make_batch(batch_size=2, seed=17)  # TP ranks see the same data
        ref_loss = forward_backward(reference, batch)
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}

        set_parallel_layout(tensor_model_parallel_size=2, seed=SEED)
        tp_group = parallel_state.get_tensor_model_parallel_group()
        config = case_config(case, tensor_model_parallel_size=2, sequence_parallel=sp)
        model = build_vwn_gpt(config)
        load_unsharded(model, full_state, tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                       tp_size=2)
        loss = forward_backward(model, batch)
        reduced = allreduce_sequence_parallel_grads(model, tp_group) if sp else 0
        grad_abs, grad_rel, worst = compare(unsharded_grads(model, tp_group), ref_grads)
        results.append(dict(
            case=case.get("name", str(case)), sequence_parallel=sp,
            loss_max_abs_diff=(loss - ref_loss).abs().max().item(),
            loss=ref_loss.mean().item(), grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel,
            worst_param=worst, sp_params_reduced=reduced,
            n_sharded=sum(1 for p in model.parameters()
                          if getattr(p, "tensor_model_parallel", False)),
        ))
        del reference, model
    return results
