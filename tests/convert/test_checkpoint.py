"""Conversion inputs/outputs: clear errors for bad checkpoints, never a half-written output."""

import os

import pytest

from nemo_vwn.convert.checkpoint import (
    CheckpointError,
    atomic_output,
    check_matches,
    resolve_checkpoint,
)


def fake_checkpoint(root, iteration=5, files=("metadata.json", "run_config.yaml")):
    """An iteration directory laid out as Bridge writes one: torch DCP shards + .metadata and the
    given small files (the model itself does not matter to these checks)."""
    import torch
    import torch.distributed.checkpoint as dcp

    it = root / f"iter_{iteration:07d}"
    it.mkdir(parents=True)
    dcp.save({"w": torch.arange(2048, dtype=torch.float32)},
             storage_writer=dcp.FileSystemWriter(str(it)), no_dist=True)
    torch.save({"iteration": iteration}, str(it / "train_state.pt"))
    for name in files:
        (it / name).write_text("{}")
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return it


def test_resolves_latest_and_iteration_dirs(tmp_path):
    it = fake_checkpoint(tmp_path / "ckpt")
    assert resolve_checkpoint(str(tmp_path / "ckpt")) == str(it)
    assert resolve_checkpoint(str(it)) == str(it)


@pytest.mark.parametrize("problem,message", [
    ("missing", "checkpoint not found"),
    ("file", "must be a directory"),
    ("empty", "is not a Megatron checkpoint"),
    ("no_metadata", "corrupted or incomplete checkpoint: .*metadata.json is missing"),
    ("bad_tracker", "corrupted checkpoint: .*holds 'x'"),
])
def test_bad_checkpoints(tmp_path, problem, message):
    path = tmp_path / "ckpt"
    if problem == "file":
        path.write_text("x")
    elif problem == "empty":
        path.mkdir()
    elif problem == "no_metadata":
        fake_checkpoint(path, files=("run_config.yaml",))
    elif problem == "bad_tracker":
        fake_checkpoint(path)
        (path / "latest_checkpointed_iteration.txt").write_text("x")
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint(str(path))


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_shard_is_named_before_anything_is_loaded(tmp_path, damage):
    it = fake_checkpoint(tmp_path / "ckpt")
    shard = sorted(p for p in it.iterdir() if p.suffix == ".distcp")[0]
    if damage == "truncated":
        with open(shard, "r+b") as handle:
            handle.truncate(8)
    else:
        shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        resolve_checkpoint(str(tmp_path / "ckpt"))


def test_output_is_atomic_and_protected(tmp_path):
    out = tmp_path / "out"
    with atomic_output(str(out)) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        with atomic_output(str(out)):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(str(out), overwrite=True) as tmp:
            open(os.path.join(tmp, "b"), "w").write("2")
            raise RuntimeError("conversion failed")
    assert (out / "a").exists() and not (out / "b").exists()  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left


def test_config_mismatch_names_the_fields():
    class Provider:
        virtual_width_n, virtual_width_m, hidden_size = 4, 2, 64

    check_matches(Provider(), {"virtual_width_n": 4, "hidden_size": None})
    with pytest.raises(CheckpointError, match="virtual_width_n: checkpoint 4 != requested 6"):
        check_matches(Provider(), {"virtual_width_n": 6, "virtual_width_m": 2})
