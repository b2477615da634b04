"""Run the nemo-vwn CLI with one fault injected at a chosen point (a real process, CPU/gloo).

    python -m tests.reliability.fault_driver FAULT -- pretrain --recipe NAME ...   (or torchrun -m)

FAULT is ``none`` or ``KIND@ITERATION`` (the save of that iteration, or that training
iteration), or several of them separated by commas:

    kill-shard      SIGKILL after the first item of a shard file is written (shards partial)
    kill-metadata   SIGKILL when every shard is written, before torch writes ``.metadata``
    kill-state      SIGKILL after ``.metadata``, before ``train_state.pt`` and the trackers
    kill-tracker    SIGKILL half-way through copying ``latest_train_state.pt`` (a torn tracker)
    kill-config     SIGKILL after the trackers, before ``run_config.yaml``
    kill-manifest   SIGKILL after the save, before nemo-vwn's callback writes the manifest
    oserror-ENOSPC  OSError(ENOSPC) raised while a shard is written (disk full)
    oserror-EROFS   OSError(EROFS) raised while a shard is written (read-only file system)
    nan             the loss of that training iteration (and later ones) is NaN
    kill-rank1      rank 1 SIGKILLs itself when that training iteration starts (DP=2 under torchrun)

``snap-KIND@ITERATION`` (KIND one of the kill-* above): instead of dying at that point, copy the
save directory to ``<save>.snapshots/KIND`` -- what a SIGKILL there would leave on disk (written
bytes are in the files whether or not the process lives on) -- and go on. One uninterrupted run
thus yields every kill point's leftovers and the reference losses.

The patches wrap upstream functions around their own call; nothing else changes.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import time


def _die() -> None:
    print(f"[fault] SIGKILL rank {os.environ.get('RANK', 0)} at {time.time():.3f}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _snapshot(save_dir: str, kind: str) -> None:
    """What a SIGKILL at this point would leave: the save directory as it is on disk now."""
    import shutil

    target = os.path.join(f"{save_dir}.snapshots", kind)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(save_dir, target)
    print(f"[fault] snapshot {kind} -> {target}", flush=True)


def install(fault: str) -> None:
    if fault == "none":
        return
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from megatron.bridge.training import checkpointing

    saving = {"step": None, "dir": None}
    original_save = checkpointing.save_checkpoint

    @functools.wraps(original_save)
    def save_checkpoint(state, *args, **kwargs):
        saving["step"] = int(state.train_state.step)
        saving["dir"] = state.cfg.checkpoint.save
        try:
            return original_save(state, *args, **kwargs)
        finally:
            saving["step"] = None

    checkpointing.save_checkpoint = save_checkpoint
    for one in fault.split(","):
        kind, at = one.split("@")
        snap = kind.startswith("snap-")
        kind = kind[len("snap-"):] if snap else kind

        def act(kind=kind, snap=snap):
            if snap:
                _snapshot(saving["dir"], kind)
            else:
                _die()

        _install_one(kind, int(at), saving, act)


def _install_one(kind: str, at: int, saving: dict, act) -> None:
    from megatron.bridge.training import checkpointing, gpt_step
    from megatron.bridge.training.config import ConfigContainer
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    fired = []

    def armed() -> bool:  # once per fault (a snapshot fault lets the save go on)
        return saving["step"] == at and not fired

    if kind in ("kill-shard", "oserror-ENOSPC", "oserror-EROFS"):
        original_write = filesystem_async._write_item

        @functools.wraps(original_write)
        def write_item(*args, **kwargs):
            if armed() and kind.startswith("oserror"):
                code = getattr(errno, kind.split("-")[1])
                raise OSError(code, os.strerror(code))
            result = original_write(*args, **kwargs)
            if armed():
                for arg in args:
                    if hasattr(arg, "flush"):
                        arg.flush()
                fired.append(True)
                act()
            return result

        filesystem_async._write_item = write_item
    elif kind in ("kill-metadata", "kill-state"):
        writer = filesystem_async.FileSystemWriterAsync
        original_finish = writer.finish

        def finish(self, *args, **kwargs):
            if armed() and kind == "kill-metadata":
                fired.append(True)
                act()
            result = original_finish(self, *args, **kwargs)
            if armed() and kind == "kill-state":
                fired.append(True)
                act()
            return result

        writer.finish = finish
    elif kind == "kill-tracker":
        import shutil

        original_copy = shutil.copy

        def copy(src, dst, *args, **kwargs):
            if armed() and str(dst).endswith(checkpointing.TRACKER_PREFIX + "_train_state.pt"):
                with open(src, "rb") as source, open(dst, "wb") as target:
                    data = source.read()
                    target.write(data[: len(data) // 2])
                fired.append(True)
                act()
            return original_copy(src, dst, *args, **kwargs)

        shutil.copy = copy
    elif kind == "kill-config":
        original_yaml = ConfigContainer.to_yaml

        def to_yaml(self, *args, **kwargs):
            if armed():
                fired.append(True)
                act()
            return original_yaml(self, *args, **kwargs)

        ConfigContainer.to_yaml = to_yaml
    elif kind == "kill-manifest":
        from nemo_vwn.bridge import resume

        original_manifest = resume.write_manifest

        def write_manifest(path, *args, **kwargs):
            if armed():
                fired.append(True)
                act()
            return original_manifest(path, *args, **kwargs)

        resume.write_manifest = write_manifest
    elif kind in ("nan", "kill-rank1"):
        original_step = gpt_step.forward_step

        @functools.wraps(original_step)
        def forward_step(state, data_iterator, model, return_schedule_plan=False):
            iteration = int(state.train_state.step) + 1
            if kind == "kill-rank1" and iteration == at and int(os.environ["RANK"]) == 1:
                _die()
            output, loss_func = original_step(state, data_iterator, model, return_schedule_plan)
            if kind == "nan" and model.training and iteration >= at:
                output = output * float("nan")
            return output, loss_func

        gpt_step.forward_step = forward_step
    else:
        raise SystemExit(f"unknown fault {kind!r}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fault, rest = argv[0], argv[argv.index("--") + 1:]
    install(fault)
    from nemo_vwn.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main())
