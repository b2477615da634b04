"""Context parallelism: the wide state sharded along the sequence vs one process."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch
from nemo_vwn.testing.parallel import load_unsharded
from tests.workers.common import SEED, case_config, compare


def cp_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """CP=2 vs CP=1: the wide state is sharded along the sequence (megatron's zig-zag chunks);
    per-token losses of this rank's tokens and the CP-summed gradients must match. Attention under
    CP is the CPU test scaffold (all-gathered K/V); the reference uses megatron's attention."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state
    from megatron.core.transformer.multi_token_prediction import (
        MTPLossAutoScaler,
        MTPLossLoggingHelper,
    )
    from megatron.core.utils import get_batch_on_this_cp_rank

    from nemo_vwn import VWNGPTModel, get_vwn_decoder_block_spec
    from nemo_vwn.testing.cp_attention import CPUContextParallelAttention, zigzag_positions
    from nemo_vwn.testing.mtp_reference import mtp_reference_terms

    results = []
    for case in cases:
        case = dict(case)
        seq = 16
        input_ids, position_ids, labels = make_batch(batch_size=2, seq=seq, seed=500)
        set_parallel_layout(seed=SEED)
        reference = build_vwn_gpt(case_config(case))
        full_state = {k: v.detach().clone() for k, v in reference.named_parameters()}
        ref_mtp_logged = {0: [], 1: []}
        if reference.config.mtp_num_layers:
            # megatron's CP semantics: each CP rank normalises its MTP loss by its own valid
            # tokens (roll_tensor returns the local count); the ranks' gradients are summed
            main, terms = mtp_reference_terms(reference, (input_ids, position_ids, labels),
                                              causal_mask(seq))
            scale = reference.config.mtp_loss_scaling_factor / len(terms)
            total = main.sum()
            for cp_rank in (0, 1):
                mine = zigzag_positions(seq // 2, cp_rank, 2)
                for ce, valid in terms:
                    rank_loss = (ce * valid)[:, mine].sum() / valid[:, mine].sum()
                    total = total + scale * rank_loss
                    ref_mtp_logged[cp_rank].append(rank_loss.item())
            ref_loss = main
        else:
            ref_loss = reference(input_ids, position_ids, causal_mask(seq), labels=labels)
            total = ref_loss.sum()
        total.backward()
        ref_grads = {k: v.grad.detach().clone() for k, v in reference.named_parameters()}

        set_parallel_layout(context_parallel_size=2, seed=SEED)
        cp_group = parallel_state.get_context_parallel_group()
        config = case_config(case, context_parallel_size=2)
        spec = get_vwn_decoder_block_spec(config, use_transformer_engine=False)
        for layer_spec in {id(s): s for s in spec.layer_specs}.values():
            layer_spec.submodules.self_attention.submodules.core_attention = (
                CPUContextParallelAttention)
        model = VWNGPTModel(config, spec, vocab_size=128, max_sequence_length=seq,
                            position_embedding_type="rope")
        load_unsharded(model, full_state)
        batch = get_batch_on_this_cp_rank(
            {"tokens": input_ids, "labels": labels, "position_ids": position_ids,
             "cu_seqlens": None}, is_hybrid_cp=False, cp_group=cp_group)
        MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0))
        MTPLossLoggingHelper.tracker.clear()
        loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        loss.sum().backward()
        logged = MTPLossLoggingHelper.tracker.get("loss_values")
        cp_rank = parallel_state.get_context_parallel_rank()
        mtp_diff = (None if logged is None else
                    max(abs(a - b) for a, b in zip(logged.tolist(), ref_mtp_logged[cp_rank])))
        for param in model.parameters():  # what DDP's dp_cp all-reduce does
            dist.all_reduce(param.grad, group=cp_group)
        grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
        positions = zigzag_positions(seq // 2, parallel_state.get_context_parallel_rank(), 2)
        grad_abs, grad_rel, worst = compare(grads, ref_grads)
        results.append(dict(
            case=case.get("name"), local_tokens=int(batch["tokens"].shape[1]),
            mtp_loss_max_abs_diff=mtp_diff,
            loss_max_abs_diff=(loss.detach() - ref_loss.detach()[:, positions]).abs().max().item(),
            grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel, worst_param=worst,
        ))
        del reference, model
    return results
