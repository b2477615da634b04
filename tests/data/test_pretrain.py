"""End to end: Megatron-Bridge's own pretrain() trains a tiny VWN recipe on a built dataset.

Runs in a subprocess (pretrain() initialises torch.distributed itself; the pytest process already
holds a gloo group from other tests). It takes about 25 s on 2 cores, mostly imports, so it is
part of the full suite (about 30 s).
"""

import math
import os
import re
import subprocess
import sys

SCRIPT = r"""
import sys

def main():
    from nemo_vwn.runtime import ensure_process_env, prepare_runtime
    ensure_process_env()
    prepare_runtime()
    from nemo_vwn.bridge.training import run_pretrain
    from nemo_vwn.recipes import build_recipe
    from nemo_vwn.data.bridge import use_dataset

    data_dir, out_dir = sys.argv[1], sys.argv[2]
    cfg = build_recipe("tiny_vwn_dense_cpu", out_dir,
                       ["train.train_iters=4", "validation.eval_interval=4",
                        "validation.eval_iters=1", "logger.log_interval=1",
                        "scheduler.lr_warmup_iters=1"])
    cfg.checkpoint.save = None
    use_dataset(cfg, data_dir, split="80,10,10")  # 12 documents: 10/1/1
    run_pretrain(cfg)
    print("MODEL_VOCAB", cfg.model.vocab_size, flush=True)

if __name__ == "__main__":
    main()
"""


def test_bridge_pretrain_trains_on_the_built_dataset(small_dataset, tmp_path):
    manifest, _ = small_dataset
    script = tmp_path / "run.py"
    script.write_text(SCRIPT, encoding="utf-8")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(script), manifest.output_dir, str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"MODEL_VOCAB {manifest.vocab_size}" in log  # Bridge took the vocab from our tokenizer
    losses = [float(v) for v in re.findall(r"iteration\s+\d+/\s*4 \|.*?lm loss: ([0-9.E+-]+)", log)]
    assert len(losses) == 4, log[-4000:]
    assert all(math.isfinite(v) for v in losses)
    # An untrained model predicts about uniformly over the real vocabulary.
    assert abs(losses[0] - math.log(manifest.vocab_size)) < 1.0, losses
    assert re.search(r"validation loss at iteration 4 .*lm loss value: [0-9.E+-]+", log)
