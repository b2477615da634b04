"""Megatron's distributed optimizer (DP=2) vs the plain optimizer on the full batch."""

from __future__ import annotations

import torch

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch, vwn_config
from tests.workers.common import SEED


def distributed_optimizer_parity(rank: int, world_size: int, steps: int = 3) -> dict:
    """DP=2 with megatron's distributed optimizer (each rank half the batch) vs the same training
    on the full batch with the plain optimizer: parameters after `steps` Adam steps with weight
    decay and the VWN groups must agree."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from nemo_vwn.optim import get_vwn_megatron_optimizer

    batches = [make_batch(batch_size=4, seed=300 + i) for i in range(steps)]
    mask = causal_mask()

    def train(distributed: bool):
        set_parallel_layout(seed=SEED)
        model = build_vwn_gpt(vwn_config(n=3, m=2, moe=True, vwn_collapse="linear"))
        ddp = DistributedDataParallel(
            config=model.config, module=model,
            ddp_config=DistributedDataParallelConfig(use_distributed_optimizer=distributed,
                                                     grad_reduce_in_fp32=False),
        )
        model.config.finalize_model_grads_func = finalize_model_grads
        # Adam (the only optimizer the distributed optimizer shards) with a large eps: updates
        # are ~linear in small gradients, so DP=2 vs DP=1 compares at rounding level (with the
        # usual eps=1e-8 the first steps normalise tiny gradients and amplify rounding).
        opt_config = OptimizerConfig(optimizer="adam", lr=0.5, adam_eps=1.0, weight_decay=0.1,
                                     bf16=False, use_distributed_optimizer=distributed,
                                     clip_grad=0.0)
        optimizer = get_vwn_megatron_optimizer(opt_config, [ddp])
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.5, max_lr=0.5, min_lr=0.5, lr_warmup_steps=0,
            lr_decay_steps=steps, lr_decay_style="constant", start_wd=0.1, end_wd=0.1,
            wd_incr_steps=steps, wd_incr_style="constant")
        static_before = model.decoder.layers[0].mlp_ghc.static_alpha.detach().clone()
        losses = []
        for input_ids, position_ids, labels in batches:
            if distributed:  # each DP rank its half of the global batch
                input_ids, position_ids, labels = (t[2 * rank:2 * rank + 2]
                                                   for t in (input_ids, position_ids, labels))
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            loss = ddp(input_ids, position_ids, mask, labels=labels).float().mean()
            loss.backward()
            finalize_model_grads([ddp])
            optimizer.step()
            scheduler.step(1)
            losses.append(loss.item())
        state = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads_zero = model.decoder.layers[0].mlp_ghc.static_alpha.main_grad.abs().sum().item() == 0
        return state, losses, optimizer, static_before, grads_zero

    ref_state, ref_losses, _, _, _ = train(distributed=False)
    state, losses, optimizer, _, _ = train(distributed=True)
    diff = max((state[n] - ref_state[n]).abs().max().item() for n in ref_state)
    shards = sum(1 for inner in optimizer.chained_optimizers
                 if type(inner).__name__ == "DistributedOptimizer")
    # A no-decay parameter with zero gradient must not move (decay would shrink it toward 0).
    set_parallel_layout(seed=SEED)
    probe = build_vwn_gpt(vwn_config(n=4, m=2))
    ddp = DistributedDataParallel(config=probe.config, module=probe,
                                  ddp_config=DistributedDataParallelConfig())
    opt = get_vwn_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.5,
                                                     bf16=False), [ddp])
    OptimizerParamScheduler(opt, init_lr=1e-2, max_lr=1e-2, min_lr=1e-2, lr_warmup_steps=0,
                            lr_decay_steps=1, lr_decay_style="constant", start_wd=0.5,
                            end_wd=0.5, wd_incr_steps=1, wd_incr_style="constant")
    before = {n: p.detach().clone() for n, p in probe.named_parameters()}
    ddp.zero_grad_buffer()
    opt.zero_grad()
    opt.step()  # all gradients are zero: only weight decay can move parameters
    after = dict(probe.named_parameters())
    static_kept = torch.equal(after["decoder.layers.0.mlp_ghc.static_alpha"],
                              before["decoder.layers.0.mlp_ghc.static_alpha"])
    proj_decayed = not torch.equal(after["decoder.final_layernorm.collapse.reduce_weight"],
                                   before["decoder.final_layernorm.collapse.reduce_weight"])
    return dict(rank=rank, loss_first=losses[0], loss_last=losses[-1],
                ref_losses=ref_losses, losses=losses, param_max_abs_diff=diff,
                distributed_optimizer_shards=shards,
                no_decay_param_moved_only_by_grad=static_kept and proj_decayed)
