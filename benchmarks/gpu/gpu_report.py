"""The GPU check's report: gpu_report.json (everything) and gpu_report.md (the tables), and the
comparison with issue 18's targets (kernels >= 80 % of copy bandwidth; VWN step overhead within
1.25x of what its extra bytes alone cost at copy bandwidth)."""

from __future__ import annotations

import json
import math
import os

from gpu_plan import STAGES, TITLES

KERNEL_TARGET_PCT = 80.0
OVERHEAD_TARGET = 1.25


def _num(value, fmt=".3g"):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, fmt) if math.isfinite(value) else str(value)
    return str(value)


def evaluate_targets(report: dict) -> dict:
    """Per Triton kernel row and per VWN row: measured vs target (None where not measured)."""
    out = {"kernels_pct_copy": [], "overhead_vs_roofline": []}
    for row in report["stages"].get("bandwidth", {}).get("rows", []):
        if row.get("impl") == "triton" and "pct_copy" in row:
            out["kernels_pct_copy"].append(dict(m=row["m"], n=row["n"], op=row["op"],
                                                pct=row["pct_copy"],
                                                meets=row["pct_copy"] >= KERNEL_TARGET_PCT))
    for row in report["stages"].get("overhead", {}).get("rows", []):
        value = row.get("overhead_vs_roofline")
        if value is not None:
            out["overhead_vs_roofline"].append(dict(m=row["m"], n=row["n"], impl=row["impl"],
                                                    recompute=row["recompute"], value=value,
                                                    meets=value <= OVERHEAD_TARGET))
    return out


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict) -> str:
    env = report.get("env", {})
    lines = [f"# GPU acceptance check ({report['profile']} profile)", "",
             f"Started {report['started']}, finished {report.get('finished', '(still running)')}, "
             f"budget {report['budget_s']:.0f} s.", ""]
    if env:
        lines += ["| machine / version | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in env.items()]
        lines.append("")
    lines += ["| stage | status | seconds | box | rows | checks passed |",
              "|---|---|---|---|---|---|"]
    for stage in STAGES:
        r = report["stages"].get(stage)
        if r is None:
            continue
        checks = r.get("checks", [])
        skipped = r.get("info", {}).get("skipped")
        lines.append(f"| {TITLES[stage]} | {r['status']}{f' ({skipped})' if skipped else ''}"
                     f" | {_num(r.get('seconds'))} | {_num(r.get('timeout_s'))} | "
                     f"{len(r.get('rows', []))} | {sum(c['ok'] for c in checks)}/{len(checks)} |")
    stages = report["stages"]
    if stages.get("kernels", {}).get("rows"):
        lines += ["", "## " + TITLES["kernels"], ""]
        lines += _table(["case", "max rel err", "worst", "tol", "state"],
                        [(r["case"], r["max_rel_err"], r["worst"], r["tol"], r["state"])
                         for r in stages["kernels"]["rows"]])
    if stages.get("bandwidth", {}).get("rows"):
        info = stages["bandwidth"]["info"]
        lines += ["", "## " + TITLES["bandwidth"], "",
                  f"Copy bandwidth {_num(info.get('copy_GBps'))} GB/s; {info.get('tokens')} tokens,"
                  f" D = {info.get('hidden')}, {info.get('dtype')}.", ""]
        lines += _table(["(m,n)", "impl", "op", "ms", "min ms", "ideal MB", "GB/s", "% copy"],
                        [(f"({r['m']},{r['n']})", r["impl"], r.get("op", "error"), r.get("ms"),
                          r.get("min_ms"), r.get("ideal_MB"), r.get("GBps"), r.get("pct_copy"))
                         for r in stages["bandwidth"]["rows"]])
    if stages.get("overhead", {}).get("rows"):
        info = stages["overhead"]["info"]
        lines += ["", "## " + TITLES["overhead"], "",
                  f"D = {info.get('hidden')}, {info.get('layers')} layers, seq {info.get('seq')} x "
                  f"batch {info.get('batch')}, {info.get('experts')} experts "
                  f"top-{info.get('topk')}, {info.get('dtype')}; copy "
                  f"{_num(info.get('copy_GBps'))} GB/s.", ""]
        lines += _table(["r", "(m,n)", "impl", "recompute", "step ms", "base ms", "step ratio",
                         "roofline ratio", "overhead / roofline", "tokens/s", "peak MB",
                         "peak ratio"],
                        [(r["r"], f"({r['m']},{r['n']})", r["impl"], r["recompute"], r["step_ms"],
                          r["base_step_ms"], r["step_ratio"], r["roofline_ratio"],
                          r["overhead_vs_roofline"], r["tokens_per_s"], r["peak_MB"],
                          r["peak_ratio"]) for r in stages["overhead"]["rows"]])
    if stages.get("training", {}).get("rows"):
        info = stages["training"]["info"]
        lines += ["", "## " + TITLES["training"], ""]
        for r in stages["training"]["rows"]:
            losses = r["losses"]
            lines.append(f"* {r['impl']}: first {_num(losses[0], '.4f')}, last "
                         f"{_num(losses[-1], '.4f')} over {len(losses)} steps")
        lines.append(f"* triton vs torch: first step {_num(info.get('first_step_rel_diff'))}, "
                     f"last-quarter mean {_num(info.get('last_quarter_rel_diff'))}, worst step "
                     f"{_num(info.get('max_step_rel_diff'))} (relative)")
    if stages.get("bridge", {}).get("rows"):
        lines += ["", "## " + TITLES["bridge"], ""]
        losses = stages["bridge"]["rows"][0]["losses"]
        lines.append(f"* {len(losses)} microbatch losses: " + ", ".join(_num(v) for v in losses))
    targets = report.get("targets", {})
    if targets.get("kernels_pct_copy") or targets.get("overhead_vs_roofline"):
        lines += ["", "## Targets (issue 18)", ""]
        k = targets["kernels_pct_copy"]
        if k:
            lines.append(f"* Triton GHC kernels >= {KERNEL_TARGET_PCT:.0f} % of copy bandwidth: "
                         f"{sum(t['meets'] for t in k)}/{len(k)} kernel rows meet it")
        o = targets["overhead_vs_roofline"]
        if o:
            lines.append(f"* VWN step overhead <= {OVERHEAD_TARGET}x its extra bytes' cost: "
                         f"{sum(t['meets'] for t in o)}/{len(o)} rows meet it")
    failures = [(s, r) for s, r in stages.items() if r.get("error") or r.get("log_tail")]
    for stage, r in failures:
        lines += ["", f"## {stage}: {r['status']}", "", "```",
                  (r.get("error") or "").strip()[-1500:], (r.get("log_tail") or "")[-1500:], "```"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
    for name, text in (("gpu_report.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_report.md", markdown(report))):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
