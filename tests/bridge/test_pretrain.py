"""The tiny recipes train through Megatron-Bridge's own pretrain() on CPU, and resume exactly."""

import os

import pytest

from nemo_vwn.distributed import run_distributed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["train.global_batch_size=8", "train.micro_batch_size=4", "logger.log_interval=1",
          "validation.eval_interval=1000", "validation.eval_iters=0",
          # dropout on: resume must restore every RNG stream exactly
          "model.hidden_dropout=0.1", "model.attention_dropout=0.1"]


def _pretrain(recipe, world_size, output_dir, overrides):
    return run_distributed("tests.bridge.workers:pretrain_and_record", world_size=world_size,
                           kwargs={"recipe": recipe, "output_dir": str(output_dir),
                                   "overrides": COMMON + overrides},
                           sys_path=[REPO_ROOT], timeout=600)


def _per_token(records):
    return [loss / tokens for loss, tokens in records]


@pytest.mark.parametrize("layout", [
    pytest.param([], id="dp2"),
    pytest.param(["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"],
                 id="tp2+sp"),
])
def test_train_checkpoint_and_bit_exact_resume(tmp_path, layout):
    """2 processes: an uninterrupted 8-iteration run that also checkpoints at iteration 4, and a run
    resumed from that checkpoint, give the same loss for iterations 5-8 bit for bit."""
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = _pretrain("tiny_vwn_moe_cpu", 2, full_dir,
                     layout + ["train.train_iters=8", "checkpoint.save_interval=4"])
    assert os.path.isdir(full_dir / "checkpoints" / "iter_0000004")
    resumed = _pretrain("tiny_vwn_moe_cpu", 2, resumed_dir,
                        layout + ["train.train_iters=8", "checkpoint.save_interval=4",
                                  f"checkpoint.load={full_dir / 'checkpoints'}",
                                  "checkpoint.ckpt_step=4"])
    for full_rank, resumed_rank in zip(full, resumed):
        assert full_rank["model_type"] == "VWNModelProvider"
        # microbatches per iteration: global batch 8 / (micro batch 4 x data-parallel size)
        per_iteration = 8 // (4 * (1 if layout else 2))
        assert len(full_rank["records"]) == 8 * per_iteration
        assert len(resumed_rank["records"]) == 4 * per_iteration
        # bit-exact: iterations 5-8 of the resumed run equal those of the uninterrupted run
        assert resumed_rank["records"] == full_rank["records"][4 * per_iteration:]
        losses = _per_token(full_rank["records"])
        assert sum(losses[-2:]) < sum(losses[:2]), losses  # it learns
