"""Stage (e): a few iterations of Megatron-Bridge's own ``pretrain()`` on a recipe's mock data.

Runs only where Megatron-Bridge is importable (scripts/gpu_wheels.sh does not carry it: its
dependencies do not fit the 60 MiB the GPU run may carry). On the GPU nothing CPU-specific is
patched: ``runtime.prepare_runtime`` applies only the pipeline shapes and Bridge's import guard.
Records every training microbatch's loss through Bridge's GPT forward step (wrapped, same
signature) and checks they are finite.
"""

from __future__ import annotations

import functools
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

    from nemo_vwn.bridge.training import build_recipe

    losses = []

    @functools.wraps(forward_step)
    def recording_forward_step(state, data_iterator, model, return_schedule_plan=False):
        output, loss_func = forward_step(state, data_iterator, model, return_schedule_plan)
        training = model.training

        def recording_loss(*args, **kwargs):
            result = loss_func(*args, **kwargs)
            if training:
                losses.append(result[0].item() / max(int(result[1].item()), 1))
            return result

        return output, recording_loss

    run_dir = os.path.join(out_dir, "bridge_run")
    overrides = [f"train.train_iters={cfg['iters']}", f"dataset.seq_length={cfg['seq']}",
                 f"model.seq_length={cfg['seq']}", f"train.micro_batch_size={cfg['mbs']}",
                 "train.global_batch_size=" + str(cfg["mbs"])]
    cfg_container = build_recipe(cfg["recipe"], run_dir, overrides)
    rec.info(recipe=cfg["recipe"], overrides=overrides, model=type(cfg_container.model).__name__,
             device=device)
    pretrain(cfg_container, recording_forward_step)
    rec.row(losses=losses)
    rec.check("pretrain() trained", len(losses) >= cfg["iters"], f"{len(losses)} microbatches")
    rec.check("every loss finite", all(math.isfinite(v) for v in losses))
