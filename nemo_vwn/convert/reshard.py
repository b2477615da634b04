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

from nemo_vwn.convert.checkpoint import CheckpointError, atomic_output, resolve_checkpoint
from nemo_vwn.convert.models import init_layout, load_models, probe_logits
from nemo_vwn.convert.verify import verify_logits

PROBE_TOKENS = 32


def reshard_rank(rank: int, world_size: int, source: str, output: Optional[str], tp: int, pp: int,
                 ep: int, seq: int = PROBE_TOKENS) -> dict:
    """One rank of a resharding (or, without ``output``, of a probe-logits run)."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    init_layout(rank, world_size, tp, pp, ep)
    models = load_models(source, tp, pp, ep)
    before = probe_logits(models, seq)
    after = None
    if output:
        import torch
        from megatron.bridge.training.model_load_save import save_megatron_model

        save_megatron_model(models, output)
        torch.distributed.barrier()
        after = probe_logits(load_models(resolve_checkpoint(output), tp, pp, ep), seq)
    return {"rank": rank, "before": before, "after": after}


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
        layout = f"TP={tp} x PP={pp} x EP={ep}"
        report = {
            "layout": {"tp": tp, "pp": pp, "ep": ep},
            "target_vs_source_max_abs_diff": verify_logits(
                ref, ranks[0]["before"], tolerance, subject=f"the source loaded at {layout}",
                against="the source in one process"),
            "saved_vs_source_max_abs_diff": verify_logits(
                ref, ranks[0]["after"], tolerance, subject=f"the saved output at {layout}",
                against="the source in one process"),
            "logits_shape": list(ref.shape),
        }
    report["output"] = os.path.abspath(output)
    return report
