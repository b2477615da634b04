"""Functions run in fresh processes by the Megatron-Bridge tests (via run_distributed)."""

from __future__ import annotations

import functools


def pretrain_and_record(rank: int, world_size: int, recipe: str, output_dir: str,
                        overrides: list) -> dict:
    """Run Bridge's pretrain() on a recipe; return every training microbatch's raw loss.

    The forward step is Bridge's ``gpt_step.forward_step``, wrapped (same signature) only to
    record the (loss sum, token count) its loss function returns while the model trains.
    """
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_vwn.recipes import build_recipe

    records = []

    @functools.wraps(forward_step)
    def recording_forward_step(state, data_iterator, model, return_schedule_plan=False):
        output, loss_func = forward_step(state, data_iterator, model, return_schedule_plan)
        training = model.training

        def recording_loss(*args, **kwargs):
            result = loss_func(*args, **kwargs)
            if training:
                records.append((result[0].item(), int(result[1].item())))
            return result

        return output, recording_loss

    cfg = build_recipe(recipe, output_dir, overrides)
    pretrain(cfg, recording_forward_step)
    model_type = type(cfg.model).__name__
    return dict(rank=rank, records=records, model_type=model_type)
