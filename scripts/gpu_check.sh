#!/usr/bin/env bash
# The GPU acceptance check (issue 18) in one command: install the carried wheels (.whl/, from
# scripts/gpu_wheels.sh) into a temporary target, then run benchmarks/gpu/check.py, whose stages
# are each time-boxed so that all ends within 8 minutes. Report: $OUT/gpu_report.{json,md}
# ($OUT defaults to ./gpu_out). See docs/gpu.md.
#
#   bash scripts/gpu_check.sh            # on the GPU machine (carry .whl)
#   bash scripts/gpu_check.sh --plan     # print the stages and shapes; runs nothing
#   bash scripts/gpu_check.sh --smoke    # tiny shapes on CPU, Triton's interpreter (CI)
# Other flags go to check.py (--stages kernels,bandwidth  --budget SECONDS  --out DIR).
# --smoke skips the wheel install (the dev venv has megatron-core); --wheels forces it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHON="$PY"  # check.py starts its stage processes with the same interpreter
SITE="${GPU_CHECK_SITE:-/tmp/site}"
smoke=0 plan=0 wheels=auto
args=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1; args+=("$arg") ;;
    --plan) plan=1; args+=("$arg") ;;
    --wheels) wheels=yes ;;
    --no-wheels) wheels=no ;;
    *) args+=("$arg") ;;
  esac
done
cd "$ROOT"
if [[ $plan == 1 ]]; then
  exec "$PY" benchmarks/gpu/check.py "${args[@]}"
fi
if [[ $smoke == 1 ]]; then
  export TRITON_INTERPRET=1  # before any Python starts: triton reads it at import
  export CUDA_VISIBLE_DEVICES=""
  [[ $wheels == auto ]] && wheels=no
fi
if [[ $wheels != no ]]; then
  shopt -s nullglob
  carried=(.whl/*.whl)
  if (( ${#carried[@]} )); then
    echo "gpu_check: installing ${#carried[@]} carried wheel(s) into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${carried[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: no wheels in .whl/ (run scripts/gpu_wheels.sh and carry .whl); going on" \
      "with what this Python has" >&2
  fi
fi
export OUT="${OUT:-$ROOT/gpu_out}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton_cache_gpu_check}"  # shared by the stages
exec "$PY" benchmarks/gpu/check.py --out "$OUT" "${args[@]}"
