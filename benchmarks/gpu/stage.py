"""One stage of the GPU check in its own process (started by check.py, which time-boxes it).

    python3 benchmarks/gpu/stage.py --stage kernels --profile gpu --out gpu_out [--part 0 --parts 4]

Writes ``<out>/stages/<stage>[.part<k>].json`` as it goes (gpu_common.Recorder). Exit status 0
when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpu_common import Recorder
from gpu_plan import PROFILES, STAGES


def environment() -> dict:
    """Machine and versions, recorded by every stage (the report takes the first)."""
    import platform
    import subprocess
    from importlib import metadata

    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "cuda_runtime": torch.version.cuda,
           "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    for dist in ("triton", "megatron-core", "megatron-bridge", "transformers", "numpy"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    import megatron.core

    env["megatron_core_path"] = os.path.dirname(megatron.core.__file__)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                   sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,"
                                  "clocks.max.mem,power.limit", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["nvidia_smi"] = f"unavailable: {exc}"
    return env


def check_mode(profile: str) -> None:
    """The gpu profile must run compiled Triton on CUDA; the smoke profile the interpreter."""
    import torch

    interp = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
    if profile == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("profile 'gpu' needs a CUDA device; use --smoke on a CPU machine")
        if interp:
            raise RuntimeError("profile 'gpu' must compile the kernels: unset TRITON_INTERPRET")
    elif not interp:
        raise RuntimeError("profile 'smoke' runs the kernels in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before Python starts (scripts/gpu_check.sh does)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    args = parser.parse_args()
    cfg = PROFILES[args.profile][args.stage]
    rec = Recorder(args.out, args.stage, str(args.part) if args.parts > 1 else "")
    if os.environ.get("GPU_CHECK_HANG") == args.stage:  # the kit's own test of the time box
        import time

        time.sleep(3600)
    try:
        rec.info(env=environment(), profile=args.profile)
        check_mode(args.profile)
        if args.stage == "bridge":
            import stage_bridge

            ok, why = stage_bridge.available()
            if not ok:
                rec.info(skipped=why)
                rec.finish("skipped")
                return 0
            stage_bridge.run(rec, cfg, "cuda" if args.profile == "gpu" else "cpu", args.out)
        else:
            from gpu_common import setup

            device = setup()
            module = __import__(f"stage_{args.stage}")
            module.run(rec, cfg, device, args.part, args.parts)
    except BaseException as exc:  # noqa: BLE001 - recorded in the report, then re-raised
        rec.fail(exc)
        raise
    rec.finish()
    return 0 if rec.data["status"] == "ok" else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the result file is written; skip the slow teardown of torch/megatron
