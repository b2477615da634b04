"""Stage (e): a few iterations of Megatron-Bridge's own ``pretrain()`` on a recipe's mock data.

Runs only where Megatron-Bridge is importable (scripts/gpu_wheels.sh does not carry it: its
dependencies do not fit the 60 MiB the GPU run may carry). On the GPU nothing CPU-specific is
patched: ``runtime.prepare_runtime`` applies only the pipeline shapes and Bridge's import guard.
Records every training microbatch's loss through Bridge's GPT forward step (wrapped, same
signature, by the ``ProgressRecorder`` that ``nemo-vwn pretrain`` uses) and checks they are
finite.
"""

from __future__ import annotations

import importlib.util
import math


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("megatron.bridge") is None:
        return False, "megatron.bridge is not importable (not carried: see docs/gpu.md)"
    return True, ""


def run(rec, cfg: dict, device: str, out_dir: str) -> None:
    import os

    from nemo_vwn import runtime

    runtime.ensure_process_env()
    runtime.prepare_runtime(bridge=True)
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_vwn.bridge.progress import ProgressRecorder
    from nemo_vwn.recipes import build_recipe

    run_dir = os.path.join(out_dir, "bridge_run")
    overrides = [f"train.train_iters={cfg['iters']}", f"dataset.seq_length={cfg['seq']}",
                 f"model.seq_length={cfg['seq']}", f"train.micro_batch_size={cfg['mbs']}",
                 "train.global_batch_size=" + str(cfg["mbs"])]
    cfg_container = build_recipe(cfg["recipe"], run_dir, overrides)
    rec.info(recipe=cfg["recipe"], overrides=overrides, model=type(cfg_container.model).__name__,
             device=device)
    recorder = ProgressRecorder(forward_step, cfg["iters"], record_dir=None,
                                interval=cfg["iters"])
    pretrain(cfg_container, recorder.wrapped)
    losses = [loss_sum / max(tokens, 1) for _, loss_sum, tokens in recorder.train_records]
    rec.row(losses=losses)
    rec.check("pretrain() trained", len(losses) >= cfg["iters"], f"{len(losses)} microbatches")
    rec.check("every loss finite", all(math.isfinite(v) for v in losses))
