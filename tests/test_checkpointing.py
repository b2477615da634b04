"""Megatron distributed checkpoints of VWN models: save -> load, and resharding between layouts."""

import os

from nemo_vwn.distributed import run_distributed
from tests.workers import target
from tests.workers.checkpoint import checkpoint_resharding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_save_load_and_reshard(tmp_path):
    cases = [
        dict(name="same layout (TP1)", n=4, m=2, save={}, load={}),
        dict(name="TP1 -> TP2, with MTP", n=4, m=2, mtp_num_layers=1, save={}, load={"tp": 2}),
        dict(name="TP2 -> TP1, r=1.5", n=3, m=2, vwn_collapse="linear", save={"tp": 2}, load={}),
        dict(name="PP1 -> PP2", n=4, m=2, save={}, load={"pp": 2}),
        dict(name="EP1 -> EP2, MoE", n=4, m=2, moe=True, save={}, load={"ep": 2}),
        dict(name="factorized TP2+SP -> TP1", n=4, m=2, vwn_embedding="factorized",
             save={"tp": 2, "sp": True}, load={}),
    ]
    results = run_distributed(target(checkpoint_resharding), world_size=2,
                              kwargs={"ckpt_root": str(tmp_path), "cases": cases},
                              sys_path=[REPO_ROOT])
    for row in results[0]:
        print(row)
        assert row["fresh_init_differed"], row  # loading really replaced other weights
        assert row["ghc_keys"] > 0, row  # GHC parameters are in the checkpoint
        assert row["loss_max_abs_diff"] < 1e-5, row
    same = results[0][0]
    assert same["loss_max_abs_diff"] == 0.0  # same layout: bit-exact
    assert results[0][1]["mtp_keys"] > 0
