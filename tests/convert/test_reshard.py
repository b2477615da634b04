"""Resharding a real Bridge checkpoint (tiny VWN-MoE) to PP=2, verified by logits."""

import json
import os

import pytest

from nemo_vwn.distributed import run_distributed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def vwn_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    run_distributed("tests.bridge.workers:pretrain_and_record", world_size=1,
                    kwargs={"recipe": "tiny_vwn_moe_cpu", "output_dir": str(out),
                            "overrides": ["train.train_iters=2", "checkpoint.save_interval=2",
                                          "validation.eval_iters=0"]},
                    sys_path=[REPO_ROOT], timeout=600)
    return str(out / "checkpoints")


@pytest.mark.parametrize("layout", [["--pp", "2"]], ids=["pp2"])
def test_reshard_cli_verifies_logits(vwn_checkpoint, tmp_path, capsys, layout):
    """TP=2 (with the same checks) is tests/test_cli.py::test_convert_reshard_tp2's, through the
    installed entry point on an upcycled VWN-MoE checkpoint; and
    tests/convert/test_upcycle_hf.py's on an HF-upcycled one."""
    from nemo_vwn.cli import main

    output = tmp_path / "resharded"
    status = main(["convert", "reshard", "--checkpoint", vwn_checkpoint, "--output", str(output),
                   *layout])
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads(printed[printed.index("{"):])  # the CLI prints the verification report
    assert report["target_vs_source_max_abs_diff"] < 1e-4
    assert report["saved_vs_source_max_abs_diff"] < 1e-4
    assert (output / "latest_checkpointed_iteration.txt").exists()
    # the output is itself a checkpoint the CLI accepts; an existing output needs --overwrite
    assert main(["convert", "reshard", "--checkpoint", str(output), "--output", str(output)]) == 2
