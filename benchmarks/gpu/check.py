"""The GPU acceptance check (issue 18): run the stages, each time-boxed, and write the report.

    python3 benchmarks/gpu/check.py [--smoke] [--plan] [--out DIR] [--stages a,b] [--budget S]

Run it through scripts/gpu_check.sh, which installs the carried wheels first (and, for --smoke,
sets TRITON_INTERPRET=1 before any Python starts). Each stage runs in its own process with a
timeout taken from gpu_plan (clipped so that everything ends within --budget seconds); a stage
that fails, crashes or times out is recorded as such, with the rows it measured before, and the
next stage still runs. After every stage ``<out>/gpu_report.json`` and ``<out>/gpu_report.md``
are rewritten, so even a run killed from outside leaves a report of what finished.

This process imports neither torch nor nemo_vwn: it only plans, launches and collects.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from gpu_plan import PROFILES, STAGES, TITLES, TOTAL_BUDGET_S  # noqa: E402
from gpu_report import evaluate_targets, write_report  # noqa: E402

# The stages' interpreter: the one scripts/gpu_check.sh ran this driver with (PYTHON may be a
# wrapper adding interpreter flags, e.g. an isolated `python -S` imitating the GPU image).
PYTHON = os.environ.get("PYTHON") or sys.executable
SMOKE_DEFAULT_STAGES = tuple(s for s in STAGES if s != "bridge")  # Bridge on CPU takes minutes


def plan_text(profile: str, stages, budget: int) -> str:
    """The stages, their shapes and time boxes, as --plan prints them."""
    prof = PROFILES[profile]
    lines = [f"GPU acceptance check, profile {profile!r}: {len(stages)} stages, all within "
             f"{budget} s (each stage's box is clipped to what is left)"]
    for stage in STAGES:
        cfg = prof[stage]
        mark = "" if stage in stages else "   [not run in this profile/selection]"
        lines.append(f"\n{TITLES[stage]}  -- time box {prof['timeouts'][stage]} s{mark}")
        if stage == "kernels":
            s, b = cfg["tokens"]
            lines.append(f"  (m,n) {cfg['shapes']} x {'static/dynamic'} x {cfg['dtypes']}, "
                         f"d={cfg['d']}, {s * b} tokens; plus (m,n,d,s,b) {cfg['extra']}")
            lines.append(f"  backends: triton vs torch in float64; {cfg['parts']} concurrent "
                         f"process(es); tolerances fp32 2e-6, bf16 1.5e-2 (rel. norm)")
        elif stage == "bandwidth":
            lines.append(f"  D={cfg['hidden']}, (m,n) {cfg['shapes']}, {cfg['seq']} tokens x "
                         f"batch {cfg['batch']}, {cfg['dtype']}; ops read_fwd, write_fwd, bwd; "
                         f"median of {cfg['reps']} after {cfg['warmup']} warm-up")
            lines.append(f"  backends: config.GHC_IMPL_CHOICES minus 'auto'; copy of "
                         f"{cfg['copy_mib']} MiB as the bandwidth reference; target >= 80 %")
        elif stage == "overhead":
            lines.append(f"  GPT-MoE D={cfg['hidden']}, {cfg['layers']} layers, {cfg['heads']} "
                         f"heads, seq {cfg['seq']} x batch {cfg['batch']}, vocab {cfg['vocab']}, "
                         f"{cfg['experts']} experts top-{cfg['topk']} (ffn {cfg['moe_ffn']}), "
                         f"{cfg['dtype']}, local spec")
            lines.append(f"  VWN (m,n) {cfg['shapes']} x backends x recompute {cfg['recompute']} "
                         f"vs the baseline GPTModel; {cfg['rounds']} interleaved rounds; "
                         f"roofline of the extra bytes; target overhead <= 1.25x roofline")
        elif stage == "training":
            lines.append(f"  VWN GPT (m,n)=({cfg['m']},{cfg['n']}) D={cfg['hidden']}, "
                         f"{cfg['layers']} layers, seq {cfg['seq']} x batch {cfg['batch']}, vocab "
                         f"{cfg['vocab']}, {cfg['steps']} AdamW steps (lr {cfg['lr']}), "
                         f"{cfg['dtype']} params + fp32 masters; torch vs triton GHC")
        elif stage == "bridge":
            lines.append(f"  recipe {cfg['recipe']}, {cfg['iters']} iterations, seq {cfg['seq']}, "
                         f"micro batch {cfg['mbs']}, mock data; skipped where megatron.bridge is "
                         f"not importable")
    return "\n".join(lines)


def source_layout(dest: str) -> str:
    """A directory that imports nemo_vwn as setup.py lays it out (package_dir maps
    nemo_vwn.patches -> patches/, nemo_vwn.recipes -> recipes/): symlinks into the working tree,
    so the copied tree runs as it is, with nothing built or installed."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    package_dir = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            package_dir = ast.literal_eval(node.value)
    root = os.path.join(dest, "nemo_vwn")
    os.makedirs(root, exist_ok=True)
    top = os.path.join(REPO, package_dir.get("nemo_vwn", "nemo_vwn"))
    links = {e: os.path.join(top, e) for e in os.listdir(top) if e != "__pycache__"}
    for name, rel in package_dir.items():
        if name.startswith("nemo_vwn."):
            links[name.split(".", 1)[1]] = os.path.join(REPO, rel)
    for entry, target in links.items():
        os.symlink(target, os.path.join(root, entry))
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_stage(stage: str, profile: str, out: str, timeout: float, env: dict) -> dict:
    """Launch the stage's process(es), wait up to ``timeout``, merge their result files."""
    parts = PROFILES[profile][stage].get("parts", 1)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    procs = []
    start = time.monotonic()
    for part in range(parts):
        suffix = f".part{part}" if parts > 1 else ""
        log = open(os.path.join(out, "logs", f"{stage}{suffix}.log"), "w")
        cmd = [PYTHON, os.path.join(HERE, "stage.py"), "--stage", stage, "--profile",
               profile, "--out", out, "--part", str(part), "--parts", str(parts)]
        penv = dict(env, MASTER_PORT=str(free_port()), MASTER_ADDR="127.0.0.1")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=penv,
                                       cwd=REPO, start_new_session=True), log, suffix))
    timed_out = False
    for proc, log, _ in procs:
        left = timeout - (time.monotonic() - start)
        try:
            proc.wait(timeout=max(left, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
    for proc, log, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    seconds = time.monotonic() - start
    merged = {"status": "ok", "rows": [], "checks": [], "info": {}, "seconds": round(seconds, 1),
              "timeout_s": round(timeout, 1), "returncodes": [p.returncode for p, _, _ in procs]}
    order = ["ok", "skipped", "check_failed", "running", "error", "missing"]
    for proc, _, suffix in procs:
        path = os.path.join(out, "stages", f"{stage}{suffix}.json")
        try:
            data = json.load(open(path))
        except (OSError, ValueError):
            data = {"status": "missing", "rows": [], "checks": [], "info": {},
                    "error": f"no result file {path} (the process died before writing it)"}
        merged["rows"] += data.get("rows", [])
        merged["checks"] += data.get("checks", [])
        merged["info"].update(data.get("info", {}))
        if data.get("error"):
            merged["error"] = (merged.get("error", "") + data["error"])[-4000:]
        if order.index(data["status"]) > order.index(merged["status"]):
            merged["status"] = data["status"]
    if timed_out:
        merged["status"] = "timeout"
        merged["error"] = (merged.get("error", "") +
                           f"\nkilled at its time box of {timeout:.0f} s")[-4000:]
    elif merged["status"] == "running" or (
            merged["status"] == "ok" and any(p.returncode for p, _, _ in procs)):
        merged["status"] = "error"  # died without finishing its result file
    if merged["status"] in ("error", "missing", "timeout"):
        tails = []
        for _, log, suffix in procs:
            with open(log.name) as f:
                tails.append(f"--- {stage}{suffix} log tail\n" + f.read()[-1500:])
        merged["log_tail"] = "\n".join(tails)[-4000:]
    return merged


def summary_line(stage: str, result: dict) -> str:
    checks = result.get("checks", [])
    passed = sum(c["ok"] for c in checks)
    text = (f"[{stage}] {result['status']} in {result.get('seconds', 0):.0f} s "
            f"(box {result.get('timeout_s', 0):.0f} s): {len(result.get('rows', []))} rows, "
            f"checks {passed}/{len(checks)} passed")
    if result.get("info", {}).get("skipped"):
        text += f"; skipped: {result['info']['skipped']}"
    failed = [c for c in checks if not c["ok"]]
    if failed:
        text += "; failed: " + "; ".join(f"{c['name']} ({c['detail']})" for c in failed[:5])
    if result.get("error") and result["status"] != "check_failed":
        text += "\n    " + result["error"].strip().splitlines()[-1][:300]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU, Triton's interpreter (the CI smoke test)")
    parser.add_argument("--plan", action="store_true", help="print the stages and shapes only")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "gpu_out"))
    parser.add_argument("--stages", default="", help=f"comma list from {','.join(STAGES)}")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all stages together (gpu: {TOTAL_BUDGET_S})")
    args = parser.parse_args()
    profile = "smoke" if args.smoke else "gpu"
    if args.budget is None:
        args.budget = PROFILES[profile]["budget"]
    stages = [s for s in args.stages.split(",") if s] or list(
        SMOKE_DEFAULT_STAGES if args.smoke else STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown {unknown}; allowed: {', '.join(STAGES)}")
    if args.plan:
        print(plan_text(profile, stages, int(args.budget)))
        return 0

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "stages"), exist_ok=True)
    for name in os.listdir(os.path.join(out, "stages")):  # no stale rows from an earlier run
        os.remove(os.path.join(out, "stages", name))
    src = source_layout(tempfile.mkdtemp(prefix="nemo_vwn_src_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    env.pop("MASTER_PORT", None)
    deadline = time.monotonic() + args.budget
    report = {"profile": profile, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "budget_s": args.budget, "stages": {}, "env": {}}
    print(plan_text(profile, stages, int(args.budget)).splitlines()[0], flush=True)
    for stage in STAGES:
        if stage not in stages:
            why = ("not run in smoke mode (add it with --stages)" if args.smoke
                   else "not selected (--stages)")
            report["stages"][stage] = {"status": "skipped", "rows": [], "checks": [],
                                       "info": {"skipped": why}}
            continue
        left = deadline - time.monotonic()
        box = min(PROFILES[profile]["timeouts"][stage], left - 2)
        if box < 10:
            report["stages"][stage] = {"status": "skipped", "rows": [], "checks": [],
                                       "info": {"skipped": f"out of time ({left:.0f} s left)"}}
        else:
            report["stages"][stage] = run_stage(stage, profile, out, box, env)
            if not report["env"] and report["stages"][stage]["info"].get("env"):
                report["env"] = report["stages"][stage]["info"]["env"]
        print(summary_line(stage, report["stages"][stage]), flush=True)
        report["targets"] = evaluate_targets(report)
        write_report(report, out)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report["targets"] = evaluate_targets(report)
    write_report(report, out)
    print(f"report: {os.path.join(out, 'gpu_report.md')} and gpu_report.json", flush=True)
    bad = [s for s, r in report["stages"].items() if r["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
