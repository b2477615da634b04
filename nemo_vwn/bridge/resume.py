"""Resume by default: a rerun of the same command continues from the newest intact checkpoint.

``prepare_resume(cfg, output_dir, fresh)`` runs before Bridge's ``pretrain()`` on every rank. It
reads the save directory (``nemo_vwn.bridge.checkpoints``), decides where training starts and
points Bridge at that iteration directory (``checkpoint.load = <save>/iter_N``: Bridge then restores
model, optimizer, scheduler, RNG and data position from it, reading no tracker file). Decisions:

* no checkpoint: start at iteration 0;
* newest intact iteration >= ``train.train_iters``: the run is finished, nothing is trained;
* iterations newer than the newest intact one that have no manifest (an interrupted save: the
  process died while writing them) are moved to ``<save>/interrupted/`` -- never deleted -- and
  training falls back to the newest intact iteration, with a warning;
* an iteration that was complete (it has a manifest) but is damaged now, or a tracker naming an
  iteration that has no directory, newer than every intact iteration: a ``CheckpointError``
  naming the file and the newest intact iteration. That is storage damage, not a crash, and a
  person should see it; ``checkpoint.ckpt_step=N`` resumes from iteration N (the newer ones are
  moved to ``<save>/superseded/``);
* ``fresh``: the previous run's checkpoints, loss records, TensorBoard logs and ``run.json`` are
  moved to ``<output>/superseded-<UTC time>/`` and training starts at iteration 0.

Only rank 0 moves anything, before any rank can write (writes follow a barrier with rank 0).
Why a fall-back for interrupted saves but an error for damage: a job requeued after preemption
must restart without a person; a checkpoint that changed after it was completed means the
storage is unreliable, and training on silently would hide it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

from nemo_vwn.bridge.checkpoints import (
    CheckpointError,
    check_iteration,
    iteration_dir,
    verify_checkpoint_dir,
    write_manifest,
)


@dataclass
class ResumePlan:
    iteration: int = 0  # where training starts (0: from scratch)
    load_dir: Optional[str] = None  # the iter_* directory Bridge loads
    finished: bool = False
    save_dir: Optional[str] = None
    messages: list = field(default_factory=list)  # printed on rank 0


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _move_aside(path: str, folder: str, plan: ResumePlan, why: str) -> None:
    """Rank 0: rename ``path`` into ``folder`` (a unique name; nothing is deleted)."""
    target = os.path.join(folder, f"{os.path.basename(path)}.{_stamp()}")
    plan.messages.append(f"{why}: moved {path} to {target}")
    if _rank() == 0:
        os.makedirs(folder, exist_ok=True)
        os.rename(path, target)


def move_previous_run(output_dir: str, save_dir: Optional[str]) -> ResumePlan:
    """``--fresh``: move the previous run's files aside (rank 0); say what was moved."""
    plan = ResumePlan(save_dir=save_dir)
    output_dir = os.path.abspath(output_dir)
    target = os.path.join(output_dir, f"superseded-{_stamp()}")
    names = ["run.json", "records", "tb"]
    paths = [os.path.join(output_dir, n) for n in names]
    if save_dir:
        paths.append(os.path.abspath(save_dir))
    moved = []
    for path in dict.fromkeys(paths):
        if not os.path.exists(path):
            continue
        inside = os.path.dirname(path) == output_dir
        dest = (os.path.join(target, os.path.basename(path)) if inside
                else f"{path}.superseded-{_stamp()}")
        moved.append(f"{path} -> {dest}")
        if _rank() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(path, dest)
    plan.messages.append("--fresh: " + ("moved the previous run aside (nothing deleted): "
                                        + "; ".join(moved) if moved else "no previous run found")
                         + "; training starts at iteration 0")
    return plan


def plan_resume(save_dir: str, train_iters: int, requested: Optional[int] = None,
                move: bool = True) -> ResumePlan:
    """Where a run saving to ``save_dir`` continues (see the module docstring); ``requested``: a
    ``checkpoint.ckpt_step`` the user chose. ``move``: whether this save directory is the run's
    own (stray iterations are moved aside) or someone else's (``checkpoint.load``: read only)."""
    plan = ResumePlan(save_dir=save_dir)
    if not os.path.isdir(save_dir):
        if requested is not None:
            raise CheckpointError(f"checkpoint.ckpt_step={requested}: {save_dir} does not exist")
        return plan
    report = verify_checkpoint_dir(save_dir)
    intact = report.newest_intact
    hint = (f"the newest intact iteration is {intact.iteration} ({intact.path}); to resume "
            f"from it rerun with checkpoint.ckpt_step={intact.iteration}" if intact
            else "no intact iteration remains; `--fresh` starts over (the old run is kept)")
    if requested is not None:
        chosen = report.status(requested)
        if chosen is None or not chosen.intact:
            why = chosen.problems[0] if chosen else f"{iteration_dir(save_dir, requested)} missing"
            raise CheckpointError(f"checkpoint.ckpt_step={requested} is not an intact checkpoint: "
                                  f"{why}; {hint}")
        newer = [s for s in report.iterations if s.iteration > requested]
        for status in newer if move else []:
            _move_aside(status.path, os.path.join(save_dir, "superseded"), plan,
                        f"checkpoint.ckpt_step={requested}: iteration {status.iteration} "
                        f"({status.state}) would be overwritten")
    else:
        floor = intact.iteration if intact else 0
        for status in report.iterations:
            if status.iteration > floor and status.state == "damaged":
                raise CheckpointError(f"checkpoint iteration {status.iteration} is damaged (it "
                                      f"was complete when saved): {status.problems[0]}; {hint}")
            if status.iteration < floor and not status.intact:
                plan.messages.append(f"warning: older iteration {status.iteration} is "
                                     f"{status.state}: {status.problems[0]}")
        named = report.tracker_iteration
        if named is not None and named > floor and report.status(named) is None:
            raise CheckpointError(f"the tracker in {save_dir} names iteration {named}, whose "
                                  f"directory {iteration_dir(save_dir, named)} is missing; {hint}")
        for status in report.iterations:
            if status.iteration > floor:  # incomplete: an interrupted save
                plan.messages.append(f"warning: iteration {status.iteration} is an interrupted "
                                     f"save ({status.problems[0]})")
                if move:
                    _move_aside(status.path, os.path.join(save_dir, "interrupted"), plan,
                                "interrupted save kept for inspection")
        if report.tracker_problems and intact:
            plan.messages.append(f"warning: {report.tracker_problems[0]}; the iteration "
                                 "directories were checked instead")
        chosen = intact
    if chosen is None:
        plan.messages.append(f"no intact checkpoint in {save_dir}: training starts at "
                             "iteration 0")
    else:
        plan.iteration, plan.load_dir = chosen.iteration, chosen.path
        if not chosen.has_manifest and move and _rank() == 0:
            write_manifest(chosen.path)  # complete but unrecorded (stopped right after the save)
        plan.finished = chosen.iteration >= train_iters
        plan.messages.append(
            f"resuming from {chosen.path} (iteration {chosen.iteration} of {train_iters})"
            if not plan.finished else
            f"already trained to iteration {chosen.iteration} (train.train_iters={train_iters}):"
            " nothing to do; `--fresh` retrains from scratch (the old run is moved aside)")
    return plan


def prepare_resume(cfg, output_dir: Optional[str], fresh: bool = False) -> ResumePlan:
    """Decide where ``cfg`` starts and set its ``checkpoint.load``; print the plan on rank 0."""
    ckpt = cfg.checkpoint
    save_dir = os.path.abspath(ckpt.save) if ckpt.save else None
    load_dir = os.path.abspath(ckpt.load) if ckpt.load else None
    if fresh:
        plan = move_previous_run(output_dir, save_dir) if output_dir else ResumePlan()
        ckpt.load = load_dir if load_dir != save_dir else None
        ckpt.ckpt_step = None
    elif load_dir and load_dir != save_dir:
        # Another run's checkpoint, chosen explicitly (e.g. a branch off it): checked, not moved.
        if os.path.basename(load_dir).startswith("iter_"):
            status = check_iteration(load_dir)
            if not status.intact:
                raise CheckpointError(f"checkpoint.load={load_dir} is {status.state}: "
                                      f"{status.problems[0]}")
            plan = ResumePlan(iteration=status.iteration, load_dir=load_dir)
        else:
            plan = plan_resume(load_dir, cfg.train.train_iters, ckpt.ckpt_step, move=False)
            plan.finished = False  # a new run, only initialised from that checkpoint
    elif save_dir:
        plan = plan_resume(save_dir, cfg.train.train_iters, ckpt.ckpt_step)
    else:
        plan = ResumePlan()
    if not fresh:
        ckpt.load = plan.load_dir
        ckpt.ckpt_step = None
        if plan.load_dir and not plan.finished:
            plan.messages += check_compatible(cfg, plan.load_dir)
    plan.messages += pretrained_messages(ckpt.pretrained_checkpoint, plan, fresh)
    if _rank() == 0:
        for line in plan.messages:  # "[nemo-vwn] " lines reach the terminal (bridge/console.py)
            print(f"[nemo-vwn] {line}", flush=True)
    return plan


def pretrained_messages(pretrained: Optional[str], plan: ResumePlan, fresh: bool) -> list:
    """What a run with ``checkpoint.pretrained_checkpoint`` (``--from``) starts from: the run's
    own checkpoint wins (Bridge loads ``checkpoint.load`` when it holds one); without one, Bridge
    loads only the pretrained model weights and training starts at iteration 0."""
    if not pretrained:
        return []
    if plan.load_dir and not fresh:
        return [f"the run's own checkpoint is resumed, not the pretrained one ({pretrained}); "
                "`--fresh` starts over from the pretrained weights"]
    return [f"starting from the pretrained weights of {pretrained} at iteration 0 (new "
            "optimizer and learning-rate schedule)"]


# Fields a resumed run must share with its checkpoint: megatron stops with an assertion (scheduler)
# or a shape error deep in the loader otherwise.
SCHEDULE_FIELDS = (("scheduler", "lr_decay_iters"), ("scheduler", "lr_warmup_iters"),
                   ("scheduler", "lr_decay_style"), ("optimizer", "lr"), ("optimizer", "min_lr"))
MODEL_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_moe_experts", "virtual_width_m", "virtual_width_n", "ghc_dynamic",
                "vwn_embedding", "vwn_collapse", "mtp_num_layers")


def check_compatible(cfg, iter_dir: str) -> list:
    """A ``CheckpointError`` naming the fields in which ``cfg`` differs from the run that wrote
    ``iter_dir`` (its ``run_config.yaml``), with what to do, before anything is loaded.

    Only ``train.train_iters`` changed (the same command, extended): megatron would stop on the
    weight-decay step count it derives from it, so this run's schedule is used
    (``scheduler.override_opt_param_scheduler``; the schedule fields above are equal, so the
    learning rates are the saved run's). Returns the messages to print."""
    import yaml

    try:
        with open(os.path.join(iter_dir, "run_config.yaml")) as handle:
            saved = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return []  # checked by the integrity check; an unusual file is left to Bridge
    model = [f"model.{f}={saved['model'].get(f)!r} (now {getattr(cfg.model, f)!r})"
             for f in MODEL_FIELDS if f in saved.get("model", {}) and hasattr(cfg.model, f)
             and saved["model"][f] != getattr(cfg.model, f)]
    if model:
        raise CheckpointError(f"{iter_dir} holds a different model: {', '.join(model)}; resume "
                              "with the same model fields, or `--fresh` to start over (the "
                              "old run is moved aside)")
    sched = cfg.scheduler
    if sched.override_opt_param_scheduler or sched.use_checkpoint_opt_param_scheduler:
        return []
    schedule = [f"{sec}.{f}={saved[sec].get(f)!r} (now {getattr(getattr(cfg, sec), f)!r})"
                for sec, f in SCHEDULE_FIELDS if f in saved.get(sec, {})
                and saved[sec][f] != getattr(getattr(cfg, sec), f)]
    if schedule:
        raise CheckpointError(
            f"{iter_dir} was trained with another learning-rate schedule: {', '.join(schedule)};"
            " add scheduler.override_opt_param_scheduler=true to continue with the new one, "
            "scheduler.use_checkpoint_opt_param_scheduler=true to keep the saved one, or "
            "`--fresh` to start over")
    before = saved.get("train", {}).get("train_iters")
    if before is not None and before != cfg.train.train_iters:
        sched.override_opt_param_scheduler = True
        return [f"train.train_iters changed from {before} to {cfg.train.train_iters}: the "
                "schedule of this run is used from here (same learning-rate fields)"]
    return []


def shield_checkpoint_writer(cfg) -> bool:
    """Start megatron's checkpoint-writer Manager now, with the exit signal ignored in it.

    Every synchronous ``torch_dist`` save passes its write results through a multiprocessing
    Manager (a ``spawn`` child that megatron starts at the first save and keeps). A scheduler that
    stops a job (``scancel``, a preemption) sends SIGTERM to every process of the job: the Manager
    dies of it, while Bridge's exit-signal handler in the trainer goes on to save a checkpoint --
    through the dead Manager, and the save fails (BrokenPipeError). A signal ignored in the
    parent stays ignored in the spawned child, so the Manager is started here with the signal
    ignored for that moment; it still ends with the run (multiprocessing's finalizer asks it to
    shut down, then sends SIGKILL). Returns whether the Manager was started."""
    import signal

    ckpt, train = cfg.checkpoint, cfg.train
    if not (ckpt.save and train.exit_signal_handler and not ckpt.async_save
            and ckpt.ckpt_format == "torch_dist"):
        return False
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    exit_signal = getattr(train, "exit_signal", signal.SIGTERM)
    previous = signal.signal(exit_signal, signal.SIG_IGN)
    try:
        filesystem_async.get_write_results_queue()
    finally:
        signal.signal(exit_signal, previous)
    return True


class TrainingStopped(SystemExit):
    """Training stopped before ``train.train_iters`` (a signal): exit status 143, as SIGTERM's."""


def checkpoint_callbacks(plan: ResumePlan, recorder=None) -> list:
    """Bridge callbacks: after every save, rank 0 records the manifest (marking the save complete)
    and every rank flushes its loss records, so a run killed later keeps them up to the save; at
    the end, the iteration reached goes to ``plan.iteration``."""
    from megatron.bridge.training.callbacks import Callback

    class AfterSave(Callback):
        def on_checkpoint_save(self, context):
            step = int(context.state.train_state.step)
            plan.iteration = max(plan.iteration, step)
            target = iteration_dir(plan.save_dir, step) if plan.save_dir else None
            if target and _rank() == 0 and os.path.isdir(target):
                write_manifest(target)
            if recorder is not None:
                recorder.write()

        def on_train_end(self, context):
            plan.iteration = int(context.state.train_state.step)

    return [AfterSave()]


def run_until_stopped(pretrain, *args, **kwargs) -> None:
    """``pretrain(*args, **kwargs)``; Bridge ends a run stopped by an exit signal (its checkpoint
    saved) with ``sys.exit(0)``, which is let through here so that the caller can tell."""
    try:
        pretrain(*args, **kwargs)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise


def raise_if_stopped(plan: ResumePlan, train_iters: int) -> None:
    """After ``pretrain()`` returned: a ``TrainingStopped`` if it stopped short of the end
    (``plan.iteration``: the last save, or the end of training, by ``checkpoint_callbacks``)."""
    if plan.iteration < train_iters:
        if _rank() == 0:
            print(f"[nemo-vwn] stopped at iteration {plan.iteration} of {train_iters} (exit "
                  "signal; checkpoint saved): rerun the same command to resume",
                  flush=True)
        raise TrainingStopped(143)
