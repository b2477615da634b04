"""Checkpoint integrity and the resume decision, on synthetic ``torch_dist`` checkpoints.

Each iteration directory is written the way Bridge lays one out (torch DCP shards + ``.metadata``
from ``torch.distributed.checkpoint``, ``metadata.json``, ``common.pt``, ``train_state.pt``,
``run_config.yaml``, the two trackers), then damaged as a crash or the storage would damage it.
The real-process faults are in test_faults.py.
"""

import json
import os

import pytest
import torch

from nemo_vwn.bridge import checkpoints as ck
from nemo_vwn.bridge import resume


def _save_iteration(save_dir, iteration, manifest=True, tracker=True):
    import torch.distributed.checkpoint as dcp

    path = ck.iteration_dir(str(save_dir), iteration)
    os.makedirs(path)
    state = {"w": torch.arange(4096, dtype=torch.float32) * iteration,
             "b": torch.ones(300) * iteration}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    with open(os.path.join(path, "metadata.json"), "w") as handle:
        json.dump({"sharded_backend": "torch_dist"}, handle)
    torch.save({"iteration": iteration}, os.path.join(path, "common.pt"))
    torch.save({"step": torch.tensor(iteration)}, os.path.join(path, "train_state.pt"))
    with open(os.path.join(path, "run_config.yaml"), "w") as handle:
        handle.write("train:\n  train_iters: 100\n")
    if tracker:
        torch.save({"step": iteration}, os.path.join(save_dir, ck.TRACKER_PT))
        with open(os.path.join(save_dir, ck.TRACKER_TXT), "w") as handle:
            handle.write(str(iteration))
    if manifest:
        ck.write_manifest(path)
    return path


def _shards(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".distcp"))


@pytest.fixture
def run(tmp_path):
    save = tmp_path / "checkpoints"
    save.mkdir()
    for iteration in (10, 20):
        _save_iteration(save, iteration)
    return save


def test_intact_checkpoints_and_tracker(run):
    report = ck.verify_checkpoint_dir(str(run))
    assert [s.iteration for s in report.iterations] == [10, 20]
    assert all(s.intact and s.has_manifest and s.checksummed for s in report.iterations)
    assert report.tracker_iteration == 20
    plan = resume.plan_resume(str(run), train_iters=30)
    assert (plan.iteration, plan.finished) == (20, False)
    assert plan.load_dir == ck.iteration_dir(str(run), 20)
    assert resume.plan_resume(str(run), train_iters=20).finished


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "deleted", "bit-flip"])
def test_damaged_shard_named_with_the_intact_iteration(run, damage):
    newest = ck.iteration_dir(str(run), 20)
    shard = os.path.join(newest, _shards(newest)[0])
    size = os.path.getsize(shard)
    if damage == "deleted":
        os.remove(shard)
    elif damage == "bit-flip":  # same length: only the manifest's CRC-32 can see it
        with open(shard, "r+b") as handle:
            handle.seek(size // 2)
            byte = handle.read(1)
            handle.seek(size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        with open(shard, "r+b") as handle:
            handle.truncate(0 if damage == "zero-byte" else size // 2)
    status = ck.check_iteration(newest)
    assert status.state == "damaged" and shard in status.problems[0], status.problems
    with pytest.raises(ck.CheckpointError) as err:
        resume.plan_resume(str(run), train_iters=30)
    message = str(err.value)
    assert shard in message and "newest intact iteration is 10" in message
    assert "checkpoint.ckpt_step=10" in message
    # the documented way on: resume from iteration 10; the damaged one is moved, not deleted
    plan = resume.plan_resume(str(run), train_iters=30, requested=10)
    assert plan.iteration == 10
    assert not os.path.exists(newest)
    assert os.listdir(os.path.join(run, "superseded"))[0].startswith("iter_0000020.")


def test_structure_checks_without_a_manifest(run):
    """Truncation is caught from torch's own .metadata even when no manifest was written."""
    newest = ck.iteration_dir(str(run), 20)
    os.remove(os.path.join(newest, ck.MANIFEST))
    shard = os.path.join(newest, _shards(newest)[0])
    with open(shard, "r+b") as handle:
        handle.truncate(os.path.getsize(shard) - 1)
    status = ck.check_iteration(newest)
    assert status.state == "incomplete"
    assert ".metadata needs" in status.problems[0] and shard in status.problems[0]


@pytest.mark.parametrize("missing", [".metadata", "train_state.pt", "run_config.yaml",
                                     "metadata.json"])
def test_interrupted_save_falls_back_with_a_warning(run, missing):
    """A save cut short (no manifest yet, a file missing): resume from the previous iteration;
    the partial directory is moved to interrupted/, not deleted."""
    newest = ck.iteration_dir(str(run), 20)
    os.remove(os.path.join(newest, ck.MANIFEST))
    os.remove(os.path.join(newest, missing))
    plan = resume.plan_resume(str(run), train_iters=30)
    assert plan.iteration == 10
    assert any("interrupted save" in m and missing in m for m in plan.messages), plan.messages
    moved = os.listdir(os.path.join(run, "interrupted"))
    assert len(moved) == 1 and moved[0].startswith("iter_0000020.")


def test_missing_metadata_of_a_complete_save_is_an_error(run):
    os.remove(os.path.join(ck.iteration_dir(str(run), 20), ".metadata"))
    with pytest.raises(ck.CheckpointError, match=r"\.metadata: missing"):
        resume.plan_resume(str(run), train_iters=30)


def test_tracker_naming_a_missing_iteration(run):
    torch.save({"step": 30}, os.path.join(run, ck.TRACKER_PT))
    with pytest.raises(ck.CheckpointError) as err:
        resume.plan_resume(str(run), train_iters=40)
    assert "names iteration 30" in str(err.value) and "iter_0000030" in str(err.value)
    assert "newest intact iteration is 20" in str(err.value)


def test_torn_tracker_uses_the_iteration_directories(run):
    """Killed while the tracker was written: the complete iteration is still found."""
    with open(os.path.join(run, ck.TRACKER_PT), "r+b") as handle:
        handle.truncate(10)
    with open(os.path.join(run, ck.TRACKER_TXT), "w"):
        pass
    report = ck.verify_checkpoint_dir(str(run))
    assert report.tracker_iteration is None and len(report.tracker_problems) == 2
    plan = resume.plan_resume(str(run), train_iters=30)
    assert plan.iteration == 20
    assert any("tracker" in m for m in plan.messages)


def test_complete_save_without_manifest_is_resumed_and_recorded(tmp_path):
    """Stopped between the save and its manifest: intact by every check, so it is used."""
    save = tmp_path / "checkpoints"
    save.mkdir()
    _save_iteration(save, 10)
    path = _save_iteration(save, 20, manifest=False)
    plan = resume.plan_resume(str(save), train_iters=30)
    assert plan.iteration == 20 and os.path.exists(os.path.join(path, ck.MANIFEST))


def test_require_intact_for_convert(run):
    assert ck.require_intact(str(run)) == ck.iteration_dir(str(run), 20)
    newest = ck.iteration_dir(str(run), 20)
    os.remove(os.path.join(newest, _shards(newest)[0]))
    with pytest.raises(ck.CheckpointError, match="newest intact one is .*iter_0000010"):
        ck.require_intact(str(run))
    with pytest.raises(ck.CheckpointError, match="is damaged"):
        ck.require_intact(newest)
    assert ck.require_intact(ck.iteration_dir(str(run), 10)).endswith("iter_0000010")


def test_fresh_moves_the_previous_run_aside(tmp_path):
    out = tmp_path / "run"
    (out / "records").mkdir(parents=True)
    (out / "records" / "losses.rank0.json").write_text("{}")
    (out / "run.json").write_text("{}")
    (out / "checkpoints").mkdir()
    _save_iteration(out / "checkpoints", 10)
    plan = resume.move_previous_run(str(out), str(out / "checkpoints"))
    assert not (out / "checkpoints").exists() and not (out / "records").exists()
    [kept] = [p for p in os.listdir(out) if p.startswith("superseded-")]
    assert sorted(os.listdir(out / kept)) == ["checkpoints", "records", "run.json"]
    assert "nothing deleted" in plan.messages[0]


def test_verify_command_prints_each_iteration(run, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    ck.add_checkpoint_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["checkpoint", "verify", str(run)])
    assert args.handler(args) == 0
    newest = ck.iteration_dir(str(run), 20)
    with open(os.path.join(newest, _shards(newest)[0]), "r+b") as handle:
        handle.truncate(3)
    assert args.handler(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("iter      10  intact" in line for line in out), out
    assert any("iter      20  damaged" in line for line in out), out
    assert any("bytes, .metadata needs" in line for line in out), out
