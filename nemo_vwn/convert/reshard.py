"""Reshard a Megatron-Bridge (VWN or baseline) checkpoint to another parallel layout, verified.

Megatron's ``torch_dist`` checkpoints are layout-independent on disk, so resharding means: load
the checkpoint into the target layout (TP x PP x EP processes), save it from there (model weights
and run config, as Bridge's ``save_megatron_model``; optimizer state is not carried over), and
*verify*: the logits of a fixed probe batch from the source loaded in one process must equal
the logits of the target layout before saving and after re-loading the saved output. The output is
written atomically: a failed verification leaves no output behind.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from nemo_vwn.convert.checkpoint import CheckpointError, atomic_output, resolve_checkpoint

PROBE_TOKENS = 32


def _probe_batch(vocab_size: int, seq: int):
    gen = torch.Generator().manual_seed(2024)
    tokens = torch.randint(0, vocab_size, (2, seq), generator=gen)
    return tokens, torch.arange(seq).unsqueeze(0).expand(2, -1)


def _init_layout(rank, world_size, tp, pp, ep):
    from megatron.core import parallel_state, tensor_parallel

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                             pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=ep)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


def _load(path, tp, pp, ep):
    from megatron.bridge.training.model_load_save import load_megatron_model

    overrides = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                 "expert_model_parallel_size": ep}
    if pp > 1:
        overrides["pipeline_dtype"] = torch.float32
    models = load_megatron_model(path, use_cpu_init=not torch.cuda.is_available(),
                                 skip_temp_dist_context=True, mp_overrides=overrides)
    models = models if isinstance(models, list) else [models]
    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return models


def clear_training_hooks(config) -> None:
    """A restored run config still names the training loop's hooks (loss scaling, grad sync);
    they are meaningless outside that loop."""
    for hook in ("grad_scale_func", "no_sync_func", "grad_sync_func", "param_sync_func",
                 "finalize_model_grads_func", "mtp_grad_scale_func", "moe_grad_scale_func"):
        if hasattr(config, hook):
            setattr(config, hook, None)


def _logits(models, seq: int):
    """Full (vocab-gathered) logits of the probe batch on every rank (forward-only schedule)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = models[0].config
    tokens, positions = _probe_batch(min(config.vocab_size or 0, 256) or 256, seq)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]

    def forward_step(data_iterator, model):
        out = model(tokens, positions, mask, runtime_gather_output=True)
        return out, lambda output: (output.float().sum() * 0, {"logits": output.detach().clone()})

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=models,
            num_microbatches=1, seq_length=seq, micro_batch_size=2, forward_only=True)
    mine = outputs[0]["logits"] if outputs else None
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return next(g for g in gathered if g is not None)


def reshard_rank(rank: int, world_size: int, source: str, output: Optional[str], tp: int, pp: int,
                 ep: int, seq: int = PROBE_TOKENS) -> dict:
    """One rank of a resharding (or, without ``output``, of a probe-logits run)."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    _init_layout(rank, world_size, tp, pp, ep)
    models = _load(source, tp, pp, ep)
    before = _logits(models, seq)
    after = None
    if output:
        from megatron.bridge.training.model_load_save import save_megatron_model

        save_megatron_model(models, output)
        torch.distributed.barrier()
        after = _logits(_load(_iteration_dir(output), tp, pp, ep), seq)
    return {"rank": rank, "before": before, "after": after}


def _iteration_dir(path: str) -> str:
    return resolve_checkpoint(path)


def reshard(source: str, output: str, tp: int = 1, pp: int = 1, ep: int = 1,
            overwrite: bool = False, tolerance: float = 1e-4) -> dict:
    """Reshard ``source`` into ``output`` for TP x PP x EP processes; returns the verification."""
    from nemo_vwn.distributed import run_distributed

    source = resolve_checkpoint(source)
    for name, value in (("tp", tp), ("pp", pp), ("ep", ep)):
        if not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{name} must be a positive integer, got {value!r}")
    with atomic_output(output, overwrite=overwrite) as tmp:
        reference = run_distributed("nemo_vwn.convert.reshard:reshard_rank", 1,
                                    kwargs=dict(source=source, output=None, tp=1, pp=1, ep=1))[0]
        ranks = run_distributed("nemo_vwn.convert.reshard:reshard_rank", tp * pp * ep,
                                kwargs=dict(source=source, output=tmp, tp=tp, pp=pp, ep=ep))
        ref = reference["before"]
        report = {
            "layout": {"tp": tp, "pp": pp, "ep": ep},
            "target_vs_source_max_abs_diff": (ranks[0]["before"] - ref).abs().max().item(),
            "saved_vs_source_max_abs_diff": (ranks[0]["after"] - ref).abs().max().item(),
            "logits_shape": list(ref.shape),
        }
        worst = max(report["target_vs_source_max_abs_diff"], report["saved_vs_source_max_abs_diff"])
        if not worst <= tolerance:
            raise CheckpointError(f"verification failed: logits differ by {worst:.3g} "
                                  f"(tolerance {tolerance:g}); no output written")
    report["output"] = os.path.abspath(output)
    return report
