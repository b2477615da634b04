#!/usr/bin/env bash
# Create (or refresh) the Python 3.12 environment with the CPU development stack. Idempotent: does
# nothing when the environment matches requirements/ and setup.py.
#   NEMO_VWN_VENV   where the environment lives (default: <repo>/.venv)
#   PYTHON          a Python 3.12 interpreter to build it with (default: found automatically)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEMO_VWN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.nemo_vwn_stamp"
WANT="$(cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" | sha256sum | cut -c1-16)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

is_py312() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
find_python() {
  local candidates=("${PYTHON:-}" python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  candidates+=("$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12)
  for c in "${candidates[@]}"; do
    if is_py312 "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  PY="$(find_python)" || { echo "setup_env: Python 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "setup_env: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
echo "setup_env: installing the CPU stack into $VENV (first time: a few minutes, ~1.4 GB download)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$ROOT/requirements/cpu-dev.txt" -c "$ROOT/requirements/constraints.txt"
"$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements/bridge-nodeps.txt"
"$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements/nemo-run-nodeps.txt"
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "setup_env: ready ($("$VENV/bin/python" -c 'import torch, megatron.core; print("torch", torch.__version__, "megatron-core", megatron.core.__version__)' 2>/dev/null))"
