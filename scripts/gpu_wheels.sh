#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels the GPU acceptance check needs that the GPU image lacks,
# then check that .whl/ plus the working tree fit the 60 MiB a GPU run may carry. Run it here
# (it needs the package index), before `scripts/gpu_check.sh` is run on the GPU machine with
# `.whl` carried. See docs/gpu.md.
#
# The image has Python 3.12, torch 2.11, triton 3.6, transformers, numpy, pytest. Carried:
#   megatron-core 0.19.2 (needs only torch, numpy, packaging: all in the image).
# Not carried: Megatron-Bridge. Its stack as this project installs it (requirements/cpu-dev.txt)
# includes `datasets`, whose pyarrow wheel alone is ~52 MiB, so stage (e) of the check skips.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHL="$ROOT/.whl"
LIMIT_MIB=60
WHEELS=("megatron-core==0.19.2")

rm -rf "$WHL"
mkdir -p "$WHL"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$WHL" "${WHEELS[@]}"

"$PY" - "$ROOT" "$WHL" "$LIMIT_MIB" <<'PYEOF'
import os, subprocess, sys

root, whl, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
files = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, check=True).stdout
tree = sum(os.path.getsize(os.path.join(root, f)) for f in files.decode().split("\0")
           if f and os.path.isfile(os.path.join(root, f)))
wheels = {f: os.path.getsize(os.path.join(whl, f)) for f in sorted(os.listdir(whl))}
mib = lambda b: b / 2**20  # noqa: E731
for name, size in wheels.items():
    print(f"gpu_wheels: {mib(size):7.2f} MiB  .whl/{name}")
total = tree + sum(wheels.values())
print(f"gpu_wheels: {mib(tree):7.2f} MiB  working tree (tracked + untracked, not ignored)")
print(f"gpu_wheels: {mib(total):7.2f} MiB  in all (limit {limit:.0f} MiB; a run carries 64 MiB)")
if mib(total) > limit:
    sys.exit(f"gpu_wheels: {mib(total):.2f} MiB exceeds the {limit:.0f} MiB limit: drop wheels "
             "or untracked files")
PYEOF
