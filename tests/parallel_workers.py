"""Functions run on several CPU processes by tests/test_parallel.py (via run_distributed).

Each worker builds the unsharded reference model and the parallel model from the same weights,
runs the same data through both, and returns the measured differences; the pytest side asserts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch, vwn_config
from nemo_vwn.testing.parallel import (
    allreduce_sequence_parallel_grads,
    load_unsharded,
    unsharded_grads,
)

SEED = 4321


def _forward_backward(model, batch):
    input_ids, position_ids, labels = batch
    loss = model(input_ids, position_ids, causal_mask(input_ids.shape[1]), labels=labels)
    loss.sum().backward()
    return loss.detach()


def _compare(grads, ref_grads):
    worst_abs, worst_rel, worst_name = 0.0, 0.0, None
    for name, grad in grads.items():
        ref = ref_grads[name]
        if grad.shape != ref.shape:
            raise AssertionError(f"{name}: shape {tuple(grad.shape)} vs reference {tuple(ref.shape)}")
        diff = (grad - ref).abs().max().item()
        rel = diff / max(ref.abs().max().item(), 1e-12)
        if diff > worst_abs:
            worst_abs, worst_name = diff, name
        worst_rel = max(worst_rel, rel)
    return worst_abs, worst_rel, worst_name


def _case_config(case, **parallel):
    kwargs = dict(case)
    n, m, moe = kwargs.pop("n"), kwargs.pop("m"), kwargs.pop("moe", False)
    kwargs.pop("name", None)
    return vwn_config(n=n, m=m, moe=moe, **kwargs, **parallel)


def tp_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """TP=2 (optionally +SP) vs TP=1 on the same weights and data: loss and every gradient."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state

    results = []
    for case in cases:
        sp = case.pop("sequence_parallel", False)
        set_parallel_layout(tensor_model_parallel_size=1, seed=SEED)
        reference = build_vwn_gpt(_case_config(case))
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        batch = make_batch(batch_size=2, seed=17)  # TP ranks see the same data
        ref_loss = _forward_backward(reference, batch)
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}

        set_parallel_layout(tensor_model_parallel_size=2, seed=SEED)
        tp_group = parallel_state.get_tensor_model_parallel_group()
        config = _case_config(case, tensor_model_parallel_size=2, sequence_parallel=sp)
        model = build_vwn_gpt(config)
        load_unsharded(model, full_state, tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                       tp_size=2)
        loss = _forward_backward(model, batch)
        reduced = allreduce_sequence_parallel_grads(model, tp_group) if sp else 0
        grad_abs, grad_rel, worst = _compare(unsharded_grads(model, tp_group), ref_grads)
        results.append(dict(
            case=case.get("name", str(case)), sequence_parallel=sp,
            loss_max_abs_diff=(loss - ref_loss).abs().max().item(),
            loss=ref_loss.mean().item(), grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel,
            worst_param=worst, sp_params_reduced=reduced,
            n_sharded=sum(1 for p in model.parameters() if getattr(p, "tensor_model_parallel", False)),
        ))
        del reference, model
    return results


def ep_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """MoE with EP=2 vs EP=1 (each rank its own batch): per-rank loss, non-expert grads per rank,
    expert grads against the sum over ranks of the EP=1 expert grads."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state

    results = []
    for case in cases:
        set_parallel_layout(seed=SEED)
        reference = build_vwn_gpt(_case_config(case))
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        batch = make_batch(batch_size=2, seed=100 + rank)  # different data per rank
        ref_loss = _forward_backward(reference, batch)
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}
        for name, grad in ref_grads.items():
            if ".local_experts." in name:  # experts see every rank's tokens under EP
                dist.all_reduce(grad)

        set_parallel_layout(expert_model_parallel_size=world_size, seed=SEED)
        model = build_vwn_gpt(_case_config(case, expert_model_parallel_size=world_size))
        num_local = case_num_local = model.config.num_moe_experts // world_size
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        load_unsharded(model, full_state, ep_rank=ep_rank, num_local_experts=num_local)
        loss = _forward_backward(model, batch)
        grads = unsharded_grads(model, None, ep_rank=ep_rank, num_local_experts=case_num_local)
        grad_abs, grad_rel, worst = _compare(grads, ref_grads)
        results.append(dict(
            case=case.get("name", str(case)), loss=ref_loss.mean().item(),
            loss_max_abs_diff=(loss - ref_loss).abs().max().item(),
            grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel, worst_param=worst,
            local_experts=sorted({n.split("local_experts.")[1].split(".")[0]
                                  for n in grads if "local_experts." in n}),
        ))
        del reference, model
    return results
