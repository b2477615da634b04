#!/usr/bin/env bash
# Set up the environment if needed, then run the main job on CPU: build the default dataset (the
# Python standard library, local BPE tokenizer), train the tiny VWN-MoE recipe and its baseline twin
# with Megatron-Bridge's pretrain(), and write a loss-vs-tokens plot and a comparison table to
# runs/main/. Extra arguments are recipe overrides, e.g. train.train_iters=600.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${NEMO_VWN_VENV:-$ROOT/.venv}/bin/nemo-vwn" compare --recipe tiny_vwn_moe_cpu \
  --output "${NEMO_VWN_OUTPUT:-$ROOT/runs}/main" \
  train.train_iters=300 validation.eval_interval=50 "$@"
