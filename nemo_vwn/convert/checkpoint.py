"""Megatron-Bridge checkpoints as conversion inputs and outputs.

* ``resolve_checkpoint(path)``: a ``checkpoints/`` directory (its latest iteration) or an
  ``iter_XXXXXXX`` directory -> the iteration directory, with clear errors for a missing path, a
  directory that is not a checkpoint, a checkpoint missing its metadata/run config, or one whose
  shards are missing, short or fail their manifest's checksums (the integrity check resuming uses,
  ``nemo_vwn.bridge.checkpoints.require_intact``).
* ``atomic_output(path, overwrite)``: conversions write into a temporary sibling directory that is
  renamed into place only when complete, so a failed conversion never leaves a half-written output;
  an existing output is replaced only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from nemo_vwn.bridge.checkpoints import CheckpointError, require_intact

__all__ = ["CheckpointError", "atomic_output", "check_matches", "load_provider",
           "resolve_checkpoint"]


def resolve_checkpoint(path: str) -> str:
    """The iteration directory a checkpoint path refers to (validated)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint must be a directory, got a file: {path}")
    tracker = os.path.join(path, "latest_checkpointed_iteration.txt")
    if os.path.exists(tracker):
        iteration = open(tracker).read().strip()
        if not iteration.isdigit():
            raise CheckpointError(f"corrupted checkpoint: {tracker} holds {iteration!r}")
        path = os.path.join(path, f"iter_{int(iteration):07d}")
    elif not os.path.basename(os.path.normpath(path)).startswith("iter_"):
        iterations = sorted(d for d in os.listdir(path) if d.startswith("iter_"))
        if not iterations:
            raise CheckpointError(
                f"{path} is not a Megatron checkpoint (no iter_* directory and no "
                "latest_checkpointed_iteration.txt)")
        path = os.path.join(path, iterations[-1])
    for required in ("metadata.json", "run_config.yaml"):
        if not os.path.exists(os.path.join(path, required)):
            raise CheckpointError(
                f"corrupted or incomplete checkpoint: {os.path.join(path, required)} is missing")
    return require_intact(path)


@contextlib.contextmanager
def atomic_output(path: str, overwrite: bool = False):
    """Yield a temporary directory; on success it becomes ``path`` (replacing it only with
    ``overwrite``); on failure it is removed and ``path`` is untouched."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise CheckpointError(f"output {path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_provider(path: str):
    """The model provider a Bridge checkpoint was trained with (after ``prepare_runtime()``)."""
    from megatron.bridge.training.model_load_save import load_model_config

    try:
        provider, _ = load_model_config(resolve_checkpoint(path))
    except CheckpointError:
        raise
    except Exception as exc:  # yaml/instantiation problems: name the checkpoint
        raise CheckpointError(f"cannot read the model config of {path}: {exc}") from exc
    return provider


def check_matches(provider, expected: dict) -> None:
    """Raise naming every field where a checkpoint's provider differs from what is expected."""
    wrong = {k: (getattr(provider, k, None), v) for k, v in expected.items()
             if v is not None and getattr(provider, k, None) != v}
    if wrong:
        details = ", ".join(f"{k}: checkpoint {got!r} != requested {want!r}"
                            for k, (got, want) in sorted(wrong.items()))
        raise CheckpointError(f"config mismatch: {details}")
