"""Parallel layouts through megatron's real pipeline schedules (PP 1F1B and interleaved VPP,
TP x PP with SP, EP x PP, hybrid models) vs one process."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import causal_mask, make_batch
from nemo_vwn.testing.parallel import (
    allreduce_sequence_parallel_grads,
    load_unsharded,
    unsharded_grads,
)
from tests.workers.common import SEED, build, case_config, compare, pipeline_forward_step


def layout_parity(rank: int, world_size: int, layout: dict, cases: list[dict]) -> list[dict]:
    """A parallel layout (TP, SP, PP with 1F1B or interleaved VPP, EP) vs one process, through
    megatron's real pipeline schedules: per-microbatch loss on the last stage and every gradient.

    Every rank gets the same microbatches, so data-parallel replicas compute the reference exactly;
    experts under EP see every EP rank's (identical) tokens, so their gradient is ep x reference.
    """
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.multi_token_prediction import (
        MTPLossAutoScaler,
        MTPLossLoggingHelper,
    )

    from nemo_vwn.patches import pipeline_shapes
    from nemo_vwn.testing.parallel import global_layer_names

    pipeline_shapes.apply()
    tp, pp = layout.get("tp", 1), layout.get("pp", 1)
    ep, vpp, sp = layout.get("ep", 1), layout.get("vpp"), layout.get("sp", False)
    results = []
    for case in cases:
        case = dict(case)
        microbatches = case.pop("microbatches", 4)
        pattern = case.pop("pattern", None)  # hybrid model; "|" marks pipeline stage breaks
        seq, mbs = 16, 2
        batches = [make_batch(batch_size=mbs, seq=seq, seed=200 + i) for i in range(microbatches)]
        mask = causal_mask(seq)

        set_parallel_layout(seed=SEED)
        MTPLossLoggingHelper.tracker.clear()
        reference = build(case_config(case),
                           pattern=pattern.replace("|", "") if pattern else None)
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        ref_losses = []
        for input_ids, position_ids, labels in batches:
            # what the schedules do: MTP gradients are scaled like the main loss (1/microbatches)
            MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0 / microbatches))
            loss = reference(input_ids, position_ids, mask, labels=labels).float().mean()
            (loss / microbatches).backward()
            ref_losses.append(loss.item())
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}
        for name in ref_grads:
            if ".local_experts." in name:
                ref_grads[name] = ref_grads[name] * ep
        ref_mtp = MTPLossLoggingHelper.tracker.get("loss_values")
        ref_mtp = None if ref_mtp is None else ref_mtp.clone()
        MTPLossLoggingHelper.tracker.clear()

        set_parallel_layout(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                            expert_model_parallel_size=ep, seed=SEED,
                            virtual_pipeline_model_parallel_size=vpp)
        parallel = dict(tensor_model_parallel_size=tp, sequence_parallel=sp,
                        pipeline_model_parallel_size=pp, expert_model_parallel_size=ep)
        if pp > 1:
            parallel["pipeline_dtype"] = torch.float32
        if vpp:
            parallel["virtual_pipeline_model_parallel_size"] = vpp
        config = case_config(case, **parallel)
        pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        tp_group = parallel_state.get_tensor_model_parallel_group()
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        chunks = []
        for vp_stage in range(vpp or 1):
            first = pp_rank == 0 and vp_stage == 0
            last = pp_rank == pp - 1 and vp_stage == (vpp or 1) - 1
            chunks.append(build(config, pattern=pattern, pre_process=first, post_process=last,
                                 vp_stage=vp_stage if vpp else None))
        num_local = (config.num_moe_experts // ep) if config.num_moe_experts else None
        for chunk in chunks:
            load_unsharded(chunk, full_state, tp_rank=tp_rank, tp_size=tp, ep_rank=ep_rank,
                           num_local_experts=num_local, names=global_layer_names(chunk))
        iterators = [iter(batches) for _ in chunks]
        losses = get_forward_backward_func()(
            forward_step_func=pipeline_forward_step(mask),
            data_iterator=iterators if vpp else iterators[0],
            model=chunks, num_microbatches=microbatches, seq_length=seq, micro_batch_size=mbs,
            forward_only=False,
        )
        grads = {}
        for chunk in chunks:
            if sp:
                allreduce_sequence_parallel_grads(chunk, tp_group)
            if getattr(config, "mtp_num_layers", None) and pp > 1 and hasattr(chunk, "embedding"):
                # the first stage's table and the MTP stage's copy: summed like finalize_model_grads
                dist.all_reduce(chunk.embedding.word_embeddings.weight.grad,
                                group=parallel_state.get_embedding_group())
            grads.update(unsharded_grads(chunk, tp_group, ep_rank=ep_rank,
                                         num_local_experts=num_local,
                                         names=global_layer_names(chunk)))
        grad_abs, grad_rel, worst = compare(grads, ref_grads)
        stage_losses = [d["lm loss"].item() for d in losses] if losses else []
        mtp_logged = MTPLossLoggingHelper.tracker.get("loss_values")
        results.append(dict(
            case=case.get("name", str(case)), layout=layout, pp_rank=pp_rank, tp_rank=tp_rank,
            mtp_depths_logged=0 if mtp_logged is None else len(mtp_logged),
            mtp_loss_max_abs_diff=(None if mtp_logged is None or ref_mtp is None
                                   else (mtp_logged - ref_mtp).abs().max().item()),
            layers=sorted({n.split(".")[2] for n in grads if n.startswith("decoder.layers.")}),
            loss_max_abs_diff=max((abs(a - b) for a, b in zip(stage_losses, ref_losses)),
                                  default=None),
            n_losses=len(stage_losses), grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel,
            worst_param=worst, n_params=len(grads),
        ))
        del reference, chunks
    return results
