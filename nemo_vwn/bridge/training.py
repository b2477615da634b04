"""Run a recipe with Megatron-Bridge's own ``pretrain()`` (GPU, or CPU through the patches)."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from nemo_vwn.runtime import ensure_process_env, prepare_runtime  # noqa: F401  (re-exported)


class OverrideError(ValueError):
    """A command-line override names a field that does not exist or has a bad value."""


def apply_overrides(cfg, overrides: Sequence[str]):
    """Hydra-style ``section.field=value`` overrides, as Megatron-Bridge's CLI applies them."""
    if not overrides:
        return cfg
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"override {item!r} is not of the form section.field=value")
        key = item.split("=", 1)[0].lstrip("+~")
        _check_override_key(cfg, key)
    try:
        return process_config_with_overrides(cfg, cli_overrides=list(overrides))
    except Exception as exc:  # Hydra/OmegaConf raise several types; name the overrides
        raise OverrideError(f"could not apply overrides {list(overrides)}: {exc}") from exc


def _check_override_key(cfg, key: str) -> None:
    import dataclasses
    import difflib

    node, path = cfg, []
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return  # below a dict/list: leave it to OmegaConf
        names = sorted(f.name for f in dataclasses.fields(node) if not f.name.startswith("_"))
        if part not in names:
            where = ".".join(path) or "the config"
            close = difflib.get_close_matches(part, names, n=6, cutoff=0.5)
            choices = names if len(names) <= 40 else close
            hint = ("valid fields: " if len(names) <= 40 else
                    f"{len(names)} valid fields, closest: ") + (", ".join(choices) or "none")
            raise OverrideError(
                f"unknown override key {key!r}: {where} has no field {part!r}; {hint}"
            )
        node, path = getattr(node, part), path + [part]


def run_pretrain(cfg, output_dir: Optional[str] = None, label: str = "nemo-vwn",
                 forward_step=None, fresh: bool = False) -> None:
    """Train ``cfg`` with Bridge's ``pretrain()`` and its GPT forward step.

    Progress (with ETA) is printed on rank 0; with ``output_dir`` the run is described in
    ``<output_dir>/run.json`` and every rank's losses go to ``<output_dir>/records/``.
    Resumes from the newest intact checkpoint unless ``fresh`` (``nemo_vwn.bridge.resume``).
    """
    from megatron.bridge.training.gpt_step import forward_step as gpt_forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_vwn.bridge.progress import ProgressRecorder
    from nemo_vwn.bridge.resume import (
        checkpoint_callbacks,
        prepare_resume,
        raise_if_stopped,
        run_until_stopped,
        shield_checkpoint_writer,
    )

    plan = prepare_resume(cfg, output_dir, fresh=fresh)
    if plan.finished:
        return
    train_iters = cfg.train.train_iters
    recorder = ProgressRecorder(
        forward_step or gpt_forward_step, train_iters,
        record_dir=os.path.join(output_dir, "records") if output_dir else None,
        interval=max(1, train_iters // 20), label=label, start_iteration=plan.iteration,
        flush_interval=cfg.checkpoint.save_interval if cfg.checkpoint.save else None,
    )
    if output_dir and int(os.environ.get("RANK", 0)) == 0:
        write_run_description(cfg, output_dir, label)
    shield_checkpoint_writer(cfg)
    try:
        run_until_stopped(pretrain, cfg, recorder.wrapped,
                          callbacks=checkpoint_callbacks(plan, recorder))
    finally:
        recorder.write()
    raise_if_stopped(plan, train_iters)


LAYOUT_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
               "context_parallel_size", "expert_model_parallel_size", "sequence_parallel")
"""The model-parallel layout ``run.json`` records (data parallelism is what is left)."""


def write_run_description(cfg, output_dir: str, label: str) -> str:
    """``run.json``: what nemo_vwn.results needs to turn loss records into loss-vs-tokens, and
    the model-parallel layout the run used."""
    model = cfg.model
    seq_length = cfg.dataset.seq_length if cfg.dataset is not None else model.seq_length
    vwn = {f: getattr(model, f) for f in ("virtual_width_m", "virtual_width_n", "ghc_dynamic",
                                          "vwn_embedding", "vwn_collapse") if hasattr(model, f)}
    layout = {f: getattr(model, f, None) for f in LAYOUT_KEYS}
    description = dict(
        recipe=label, provider=type(model).__name__, vwn=vwn or None,
        seq_length=seq_length, global_batch_size=cfg.train.global_batch_size,
        tokens_per_iteration=seq_length * cfg.train.global_batch_size,
        train_iters=cfg.train.train_iters, num_layers=model.num_layers,
        hidden_size=model.hidden_size, num_moe_experts=model.num_moe_experts,
        mtp_num_layers=model.mtp_num_layers, layout=layout,
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "run.json")
    with open(path, "w") as handle:
        json.dump(description, handle, indent=2)
    return path

