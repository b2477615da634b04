"""Functions run on several CPU processes by tests/test_parallel.py (via run_distributed).

Each worker builds the unsharded reference model and the parallel model from the same weights,
runs the same data through both, and returns the measured differences; the pytest side asserts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_vwn.testing.cpu import init_cpu_distributed, set_parallel_layout
from nemo_vwn.testing.models import (
    build_stock_gpt,
    build_stock_hybrid,
    build_vwn_gpt,
    build_vwn_hybrid,
    causal_mask,
    make_batch,
    stock_config,
    vwn_config,
)
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
    kwargs.pop("name", None)
    moe = kwargs.pop("moe", False)
    if kwargs.pop("stock", False):  # control case: megatron's own GPTModel
        return stock_config(moe=moe, **kwargs, **parallel)
    n, m = kwargs.pop("n"), kwargs.pop("m")
    return vwn_config(n=n, m=m, moe=moe, **kwargs, **parallel)


def _build(config, pattern=None, **kwargs):
    """A VWN or stock GPT model; a hybrid model when a layer ``pattern`` is given."""
    vwn = hasattr(config, "virtual_width_n")
    if pattern:
        kwargs.pop("vp_stage", None)
        return (build_vwn_hybrid if vwn else build_stock_hybrid)(config, pattern, **kwargs)
    return (build_vwn_gpt if vwn else build_stock_gpt)(config, **kwargs)


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


def _pipeline_forward_step(mask):
    def forward_step(data_iterator, model):
        input_ids, position_ids, labels = next(data_iterator)
        output = model(input_ids, position_ids, mask, labels=labels)

        def loss_func(output_tensor):
            loss = output_tensor.float().mean()
            return loss, {"lm loss": loss.detach().clone()}  # the schedule divides loss in place

        return output, loss_func

    return forward_step


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
        reference = _build(_case_config(case),
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
        config = _case_config(case, **parallel)
        pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        tp_group = parallel_state.get_tensor_model_parallel_group()
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        chunks = []
        for vp_stage in range(vpp or 1):
            first = pp_rank == 0 and vp_stage == 0
            last = pp_rank == pp - 1 and vp_stage == (vpp or 1) - 1
            chunks.append(_build(config, pattern=pattern, pre_process=first, post_process=last,
                                 vp_stage=vp_stage if vpp else None))
        num_local = (config.num_moe_experts // ep) if config.num_moe_experts else None
        for chunk in chunks:
            load_unsharded(chunk, full_state, tp_rank=tp_rank, tp_size=tp, ep_rank=ep_rank,
                           num_local_experts=num_local, names=global_layer_names(chunk))
        iterators = [iter(batches) for _ in chunks]
        losses = get_forward_backward_func()(
            forward_step_func=_pipeline_forward_step(mask),
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
        grad_abs, grad_rel, worst = _compare(grads, ref_grads)
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
    config = _case_config(case, **parallel)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    return _build(config, pre_process=pp_rank == 0, post_process=pp_rank == pp - 1)


def _forward_losses(model, batches, mask):
    """Per-microbatch loss through megatron's schedule (forward only), gathered to every rank."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=_pipeline_forward_step(mask), data_iterator=iter(batches),
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


def cp_parity(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """CP=2 vs CP=1: the wide state is sharded along the sequence (megatron's zig-zag chunks);
    per-token losses of this rank's tokens and the CP-summed gradients must match. Attention under
    CP is the CPU test scaffold (all-gathered K/V); the reference uses megatron's attention."""
    init_cpu_distributed(rank, world_size, seed=SEED)
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_cp_rank

    from megatron.core.transformer.multi_token_prediction import (
        MTPLossAutoScaler,
        MTPLossLoggingHelper,
    )

    from nemo_vwn import VWNGPTModel, get_vwn_decoder_block_spec
    from nemo_vwn.testing.cp_attention import CPUContextParallelAttention, zigzag_positions
    from nemo_vwn.testing.mtp_reference import mtp_reference_terms

    results = []
    for case in cases:
        case = dict(case)
        seq = 16
        input_ids, position_ids, labels = make_batch(batch_size=2, seq=seq, seed=500)
        set_parallel_layout(seed=SEED)
        reference = build_vwn_gpt(_case_config(case))
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
        config = _case_config(case, context_parallel_size=2)
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
        grad_abs, grad_rel, worst = _compare(grads, ref_grads)
        results.append(dict(
            case=case.get("name"), local_tokens=int(batch["tokens"].shape[1]),
            mtp_loss_max_abs_diff=mtp_diff,
            loss_max_abs_diff=(loss.detach() - ref_loss.detach()[:, positions]).abs().max().item(),
            grad_max_abs_diff=grad_abs, grad_max_rel_diff=grad_rel, worst_param=worst,
        ))
        del reference, model
    return results
