"""`nemo-vwn pretrain --nproc-per-node 2` relaunches itself under torchrun and trains: the installed
entry point, run as a user types it (clean environment, no interpreter set-up by a fixture)."""

import json
import os
import subprocess
import sys


def test_pretrain_under_torchrun_writes_records_for_both_ranks(tmp_path):
    out = tmp_path / "run"
    bin_dir = os.path.dirname(sys.executable)
    command = [os.path.join(bin_dir, "nemo-vwn"), "pretrain", "--recipe", "tiny_vwn_dense_cpu",
               "--nproc-per-node", "2", "--output", str(out), "train.train_iters=3",
               "train.global_batch_size=8", "train.micro_batch_size=4",
               "validation.eval_iters=0", "checkpoint.save_interval=1000"]
    env = {"PATH": bin_dir + os.pathsep + "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[tiny_vwn_dense_cpu] iter 3/3 (100%)" in result.stdout  # progress line with ETA
    records = sorted(p.name for p in (out / "records").iterdir())
    assert records == ["losses.rank0.json", "losses.rank1.json"]
    ranks = [json.loads((out / "records" / name).read_text()) for name in records]
    assert {r["parallel"]["dp"] for r in ranks} == {0, 1}  # two data-parallel replicas
    assert all(len(r["train"]) == 3 for r in ranks)  # one microbatch per iteration each
    run = json.loads((out / "run.json").read_text())
    assert run["provider"] == "VWNModelProvider" and run["tokens_per_iteration"] == 8 * 64
