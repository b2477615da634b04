#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (CPU, gloo). Extra arguments go
# to pytest, e.g. `bash scripts/test.sh tests/test_ghc.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${NEMO_VWN_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
