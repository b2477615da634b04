#!/usr/bin/env bash
# Set up the environment if needed, then run the main job: pretrain the tiny VWN-MoE recipe on CPU
# with Megatron-Bridge's pretrain(). Extra arguments are recipe overrides, e.g. train.train_iters=50.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${NEMO_VWN_VENV:-$ROOT/.venv}/bin/nemo-vwn" pretrain --recipe tiny_vwn_moe_cpu \
  --output "${NEMO_VWN_OUTPUT:-$ROOT/runs}/tiny_vwn_moe_cpu" "$@"
