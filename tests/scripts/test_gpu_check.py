"""The GPU acceptance kit (scripts/gpu_check.sh, benchmarks/gpu/) kept from rotting on CPU.

The smoke run is the real driver on tiny shapes: every stage in its own time-boxed process, the
Triton GHC in Triton's interpreter, the report files written. Its numbers only have to be finite
and its checks (kernel errors within tolerance, training loss falling, Triton == torch) to pass;
the GPU figures come from the GPU profile (docs/gpu.md).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_DIR = os.path.join(REPO, "benchmarks", "gpu")
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def _plan_module():
    spec = importlib.util.spec_from_file_location("gpu_plan", os.path.join(GPU_DIR, "gpu_plan.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=900, out=None, **extra_env):
    env = dict(os.environ, PYTHON=sys.executable, **extra_env)
    env.pop("TRITON_INTERPRET", None)  # the script sets it for --smoke, before Python starts
    if out:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_plan_names_every_stage_and_the_paper_shapes():
    proc = _run("--plan", timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = _plan_module()
    for title in plan.TITLES.values():
        assert title in proc.stdout
    for shape in plan.PAPER_SHAPES:
        assert str(shape) in proc.stdout
    assert "D=2048" in proc.stdout and "4096 tokens" in proc.stdout


def test_time_boxes_fit_the_budget():
    plan = _plan_module()
    assert plan.TOTAL_BUDGET_S <= 8 * 60
    assert sum(plan.PROFILES["gpu"]["timeouts"].values()) <= plan.TOTAL_BUDGET_S
    assert set(plan.PROFILES["gpu"]) == set(plan.PROFILES["smoke"])


def test_kit_uses_only_public_nemo_vwn_api():
    for name in os.listdir(GPU_DIR):
        if name.endswith(".py"):
            text = open(os.path.join(GPU_DIR, name)).read()
            for private in ("nemo_vwn.testing", "nemo_vwn.kernels"):
                assert private not in text, f"benchmarks/gpu/{name} imports {private}"


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_out")
    proc = _run("--smoke", out=out)
    report = json.load(open(out / "gpu_report.json"))
    return proc, report, (out / "gpu_report.md").read_text()


def test_smoke_run_reports_every_stage(smoke_report):
    proc, report, md = smoke_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["profile"] == "smoke" and report["env"]["torch"]
    stages = report["stages"]
    for stage in ("kernels", "bandwidth", "overhead", "training"):
        assert stages[stage]["status"] == "ok", (stage, stages[stage])
        assert stages[stage]["rows"], stage
        assert all(c["ok"] for c in stages[stage]["checks"]), stages[stage]["checks"]
        assert stages[stage]["seconds"] <= stages[stage]["timeout_s"]
    assert stages["bridge"]["status"] == "skipped"
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)"):
        assert heading in md


def test_smoke_numbers_are_finite(smoke_report):
    _, report, _ = smoke_report
    stages = report["stages"]
    kernel_rows = stages["kernels"]["rows"]
    assert {r["dtype"] for r in kernel_rows} == {"float32", "bfloat16"}
    assert {r["dynamic"] for r in kernel_rows} == {False, True}
    for row in kernel_rows:
        assert _finite(row["max_rel_err"]) and row["max_rel_err"] < row["tol"], row
        assert row["state"] != "GHCState", row  # the Triton path ran, not the torch one
    assert _finite(stages["bandwidth"]["info"]["copy_GBps"])
    impls = set(stages["bandwidth"]["info"]["backends"])
    assert {"torch", "triton"} <= impls
    timed = {(r["impl"], r["op"]) for r in stages["bandwidth"]["rows"]}
    assert timed == {(i, op) for i in impls for op in ("read_fwd", "write_fwd", "bwd")}
    for row in stages["bandwidth"]["rows"]:
        assert _finite(row["GBps"]) and row["GBps"] > 0 and _finite(row["pct_copy"]), row
    rows = stages["overhead"]["rows"]
    assert {(r["impl"], r["recompute"]) for r in rows} == {
        (i, rc) for i in impls for rc in (False, True)}
    for row in rows:
        for key in ("step_ratio", "roofline_ratio", "overhead_vs_roofline", "tokens_per_s"):
            assert _finite(row[key]), (key, row)
        assert row["roofline_ratio"] > 1 and row["extra_GB"] > 0
    losses = {r["impl"]: r["losses"] for r in stages["training"]["rows"]}
    assert set(losses) == {"torch", "triton"}
    assert all(_finite(v) for run in losses.values() for v in run)
    targets = report["targets"]
    assert len(targets["kernels_pct_copy"]) == len(
        [r for r in stages["bandwidth"]["rows"] if r["impl"] == "triton"])
    assert len(targets["overhead_vs_roofline"]) == len(rows)


def test_a_stage_past_its_time_box_is_killed_and_reported(tmp_path):
    """A stage that hangs (GPU_CHECK_HANG) is killed at its box, the report says so, the
    stages after it are skipped as out of time, and the command fails cleanly."""
    proc = _run("--smoke", "--stages", "kernels,training", "--budget", "14", out=tmp_path,
                timeout=120, GPU_CHECK_HANG="kernels")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.load(open(tmp_path / "gpu_report.json"))
    assert report["stages"]["kernels"]["status"] == "timeout"
    assert 11 < report["stages"]["kernels"]["seconds"] < 14
    assert report["stages"]["training"]["status"] == "skipped"
    assert "out of time" in report["stages"]["training"]["info"]["skipped"]
    assert report["stages"]["bandwidth"]["info"]["skipped"].startswith("not run")
