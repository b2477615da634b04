"""Fault campaign: kill or stop ``nemo-vwn pretrain`` at chosen or random points, rerun the same
command, and check that it resumes from an intact checkpoint with losses equal to an uninterrupted
run's, bit for bit (CPU, fp32, gloo). docs/reliability.md records the campaigns run.

    nice python benchmarks/fault_campaign.py --trials 20                 # random SIGKILLs
    nice python benchmarks/fault_campaign.py --scenario tp2-kill,sigterm-group --trials 2
    nice python benchmarks/fault_campaign.py --scenario points --trials 1

Scenarios (each trial: a fresh output directory, the faulty run, then the same command again):

* ``sigkill``: SIGKILL from outside ``U(0, 1.3 x save time)`` seconds after the "saving checkpoint
  at iteration K" line of a random save K >= 4 appears in the run's log (the save time is measured
  on the reference run), so the kills land in the shard writes, ``.metadata``, ``train_state.pt``,
  the trackers, ``run_config.yaml``, the manifest, or just after. The phase hit is read off the
  files the kill left.
* ``points``: every deterministic fault of tests/reliability/fault_driver.py at the save of
  iteration 4 (kill-shard, kill-metadata, kill-state, kill-tracker, kill-config, kill-manifest,
  oserror-ENOSPC, oserror-EROFS), run through that driver.
* ``tp2-kill`` (``--layout tp2`` or ``dp2``): ``nemo-vwn pretrain --nproc-per-node 2``; rank 1 is
  SIGKILLed from outside once the save at 2 is done; torchrun and the surviving rank must end the
  job within ``--bound`` seconds of the kill; the rerun (same layout) resumes from an intact save.
* ``sigterm-group``: ``nemo-vwn pretrain --nproc-per-node 2``; SIGTERM to every process of the job
  (the CLI, torchrun, every rank and their helper processes; torchrun gives each rank a session of
  its own), as ``scancel`` sends it, once the save at iteration 2 is done (so every rank's
  checkpoint-writer Manager is up and gets the signal too). A checkpoint must be written at the
  iteration the ranks stopped at before the job ends, and the rerun resumes from it.

The two-process scenarios compare with a two-process reference run of the same layout (one per
layout and invocation). Results: ``<output>/campaign-<scenario>.json`` and one line per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from nemo_vwn.bridge import checkpoints as ck  # noqa: E402

RECIPE = "tiny_vwn_dense_cpu"
LAYOUTS = {"single": [], "dp2": [], "tp2": ["model.tensor_model_parallel_size=2"]}
POINTS = ("kill-shard", "kill-metadata", "kill-state", "kill-tracker", "kill-config",
          "kill-manifest", "oserror-ENOSPC", "oserror-EROFS")
SCENARIOS = ("sigkill", "points", "tp2-kill", "sigterm-group")
TIMEOUT = 1200


def command(args, output: str, layout: str = "single", fault: str = None) -> list:
    cli = ["pretrain", "--recipe", args.recipe, "--output", output,
           f"train.train_iters={args.iters}", f"checkpoint.save_interval={args.interval}",
           f"scheduler.lr_decay_iters={args.iters}", "validation.eval_interval=1000",
           "validation.eval_iters=0", "logger.log_interval=1", "model.hidden_dropout=0.1",
           *LAYOUTS[layout]]
    if layout != "single":
        cli[1:1] = ["--nproc-per-node", "2"]
    if fault:  # the tests' fault driver, as a command (nothing of tests/ is imported here)
        return [sys.executable, "-m", "tests.reliability.fault_driver", fault, "--", *cli]
    return [sys.executable, "-m", "nemo_vwn.cli", *cli]


def env() -> dict:
    out = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


class Run:
    """One command in its own session (what a killed run leaves behind -- megatron's
    checkpoint-writer Manager, a spawn child, outlives a SIGKILL -- is ended with it), its console
    in ``<output>.console``; ``lines()`` follows rank 0's log as it is written."""

    def __init__(self, cmd: list, output: str):
        self.output = output
        self.log = os.path.join(output, "logs", "pretrain.rank0.log")
        self.offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(f"{output}.console", "a") as console:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env(), stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def lines(self):
        """(time, line) of every line rank 0 logs, until the process ends."""
        pending = ""
        while True:
            done = self.proc.poll() is not None
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as handle:
                    handle.seek(self.offset)
                    text = handle.read()
                    self.offset = handle.tell()
                pending += text
                *complete, pending = pending.split("\n")
                now = time.monotonic()
                for line in complete:
                    yield now, line
            if done:
                return
            if time.monotonic() - self.started > TIMEOUT:
                raise TimeoutError(f"{self.output}: still running after {TIMEOUT} s")
            time.sleep(0.02)

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        finally:
            self.end_session()
        return code

    def end_session(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def console(self) -> str:
        with open(f"{self.output}.console", errors="replace") as handle:
            return handle.read()


def run_to_end(cmd: list, output: str) -> tuple:
    """(exit status, [(time, line)] of rank 0's log, console text)."""
    run = Run(cmd, output)
    lines = list(run.lines())
    return run.finish(), lines, run.console()


def records(output: str) -> dict:
    found = {}
    for name in sorted(os.listdir(os.path.join(output, "records"))):
        with open(os.path.join(output, "records", name)) as handle:
            found[name] = json.load(handle)["train"]
    return found


def save_seconds(lines: list) -> float:
    """The longest save after the first (the first also starts the writer's Manager): "saving
    checkpoint" to "successfully saved", as seen in the log."""
    durations, started = [], None
    for stamp, line in lines:
        if line.startswith("saving checkpoint at iteration"):
            started = stamp
        elif started is not None and "successfully saved" in line:
            durations.append(stamp - started)
            started = None
    return max(durations[1:] or durations or [1.0])


def phase(save_dir: str, iteration: int) -> str:
    """Which part of the save of ``iteration`` the kill interrupted, from the files it left."""
    path = ck.iteration_dir(save_dir, iteration)
    if not os.path.isdir(path):
        return "before the save's directory"
    if any(i > iteration for i in ck.list_iterations(save_dir)):
        return "after the save (training went on)"
    has = set(os.listdir(path))
    named, _ = ck.read_tracker(save_dir)
    if ".metadata" not in has:
        return "shard writing" if any(n.endswith(".distcp") for n in has) else "save planning"
    if "train_state.pt" not in has:
        return "after .metadata, before train_state.pt"
    if named != iteration:
        return "trackers (latest_train_state.pt / .txt)"
    if "run_config.yaml" not in has:
        return "after the trackers, before run_config.yaml"
    if ck.MANIFEST not in has:
        return "after run_config.yaml, before the manifest"
    return "after the save"


def states(output: str) -> list:
    report = ck.verify_checkpoint_dir(os.path.join(output, "checkpoints"))
    return [(s.iteration, s.state) for s in report.iterations]


def resume_and_compare(args, output: str, reference: dict, layout: str, result: dict) -> dict:
    """Rerun the same command; the trial passes if it exits 0 and every rank's loss records equal
    the reference's bit for bit."""
    started = time.monotonic()
    status, lines, console = run_to_end(command(args, output, layout), output)
    resumed = next((line.split("resuming from ")[1].strip() for _, line in lines
                    if "resuming from " in line),
                   "finished: nothing to do" if "already trained to" in console else "iteration 0")
    # a rerun says where it resumed or that it is finished; anything else restarted silently
    said = any("resuming from " in line for _, line in lines) or "already trained to" in console
    exact = status == 0 and records(output) == reference
    if not said and any(state == "intact" for _, state in result.get("left", [])):
        result["silent_restart"] = True
        exact = False
    result.update(resumed=resumed, resume_exit=status, exact=exact,
                  resume_seconds=round(time.monotonic() - started, 1))
    if not exact:
        result["log_tail"] = console[-3000:]
    result["passed"] = exact and result.get("passed", True)
    if result["passed"] and not args.keep:  # a failed trial's files are kept for inspection
        shutil.rmtree(output, ignore_errors=True)
        os.remove(f"{output}.console")
    return result


def fresh_dir(args, name: str) -> str:
    output = os.path.join(args.output, name)
    shutil.rmtree(output, ignore_errors=True)
    for suffix in (".console",):
        if os.path.exists(output + suffix):
            os.remove(output + suffix)
    return output


# --------------------------------------------------------------------------- scenarios
def sigkill_trial(args, index, rng, reference, save_time) -> dict:
    output = fresh_dir(args, f"sigkill{index:02d}")
    saves = list(range(args.interval, args.iters + 1, args.interval))
    target = rng.choice(saves[1:] or saves)  # a save with an older checkpoint to fall back to
    delay = rng.uniform(0.0, 1.3 * save_time)
    run, killed = Run(command(args, output), output), False
    for _, line in run.lines():
        if line.startswith(f"saving checkpoint at iteration {target:7d}"):
            time.sleep(delay)
            run.proc.send_signal(signal.SIGKILL)
            killed = True
            break
    run.finish()
    hit = phase(os.path.join(output, "checkpoints"), target) if killed else "not killed"
    result = dict(trial=index, save=target, delay_s=round(delay, 3), phase=hit,
                  left=states(output), passed=killed)
    return resume_and_compare(args, output, reference, "single", result)


def point_trial(args, index, fault, reference) -> dict:
    output = fresh_dir(args, f"point{index:02d}-{fault}")
    at = 2 * args.interval
    status, _, console = run_to_end(command(args, output, fault=f"{fault}@{at}"), output)
    left = states(output)
    killed = status == -signal.SIGKILL if fault.startswith("kill") else status not in (0, -9)
    # kill-manifest: the save itself is complete (intact without a manifest); the others: not
    ok = killed and (args.interval, "intact") in left \
        and ((at, "intact") in left) == (fault == "kill-manifest")
    result = dict(trial=index, fault=f"{fault}@{at}", exit=status, left=left, passed=ok)
    if not ok:
        result["fault_log_tail"] = console[-3000:]
    return resume_and_compare(args, output, reference, "single", result)


def job_processes(root: int) -> list:
    """``root`` and every process under it. torchrun starts each rank in a session of its own,
    so a process group does not hold the whole job (a scheduler signals every process of it)."""
    import psutil

    try:
        top = psutil.Process(root)
        return [top] + top.children(recursive=True)
    except psutil.Error:
        return []


def rank_pid(root: int, rank: int):
    """The training process of ``rank`` under ``root`` (not its Manager or resource tracker)."""
    import psutil

    for proc in job_processes(root):
        try:
            env = proc.environ()
            if "nemo_vwn.cli" in proc.cmdline() and env.get("RANK") == str(rank) \
                    and "LOCAL_RANK" in env:
                return proc.pid
        except psutil.Error:
            continue
    return None


def _environ(proc) -> dict:
    try:
        return proc.environ()
    except Exception:  # noqa: BLE001 -- gone already
        return {}


def _is_trainer(proc) -> bool:
    try:
        return "nemo_vwn.cli" in proc.cmdline()
    except Exception:  # noqa: BLE001
        return False


def _alive(proc) -> bool:
    try:
        return proc.is_running() and proc.status() != "zombie"
    except Exception:  # noqa: BLE001
        return False


def kill_all(procs: list, sig=signal.SIGKILL) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except Exception:  # noqa: BLE001 -- gone already
            pass


def tp2_kill_trial(args, index, reference) -> dict:
    output = fresh_dir(args, f"{args.layout}-kill{index:02d}")
    run, killed_at, procs = Run(command(args, output, args.layout), output), None, []
    for _, line in run.lines():  # rank 0 logs saves; megatron's iteration lines: the last rank
        if "successfully saved checkpoint from iteration       2" in line:
            procs = job_processes(run.proc.pid)
            pid = rank_pid(run.proc.pid, 1)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
            break
    try:
        status = run.proc.wait(timeout=TIMEOUT)
    finally:
        ended = time.monotonic()
        run.end_session()
        kill_all(procs)
    seconds = None if killed_at is None else round(ended - killed_at, 1)
    left = states(output)
    ok = killed_at is not None and status != 0 and seconds < args.bound \
        and (args.interval, "intact") in left
    result = dict(trial=index, layout=args.layout, exit=status, job_end_after_kill_s=seconds,
                  bound_s=args.bound, left=left, passed=ok)
    if not ok:
        result["fault_log_tail"] = run.console()[-3000:]
    return resume_and_compare(args, output, reference, args.layout, result)


def sigterm_group_trial(args, index, reference) -> dict:
    output = fresh_dir(args, f"{args.layout}-sigterm{index:02d}")
    run, sent, procs = Run(command(args, output, args.layout), output), None, []
    for _, line in run.lines():  # once the save at 2 is done (the writer's Manager is up)
        if "successfully saved checkpoint from iteration       2" in line:
            procs = job_processes(run.proc.pid)  # scancel: every process of the job step
            kill_all(procs, signal.SIGTERM)
            sent = time.monotonic()
            break
    try:  # the CLI exits at the signal; the ranks run on to their save
        status = run.proc.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + args.bound
        ranks = [p for p in procs if "LOCAL_RANK" in _environ(p) and _is_trainer(p)]
        while time.monotonic() < deadline and any(map(_alive, ranks)):
            time.sleep(0.2)
        ranks_left = any(map(_alive, ranks))
    finally:
        ended = time.monotonic()
        run.end_session()
        kill_all(procs)
    logs = ""
    for name in sorted(os.listdir(os.path.join(output, "logs"))):
        with open(os.path.join(output, "logs", name), errors="replace") as handle:
            logs += handle.read()
    stops = [int(line.split("stopped at iteration ")[1].split()[0])
             for line in (logs + run.console()).splitlines() if "stopped at iteration" in line]
    left = states(output)
    newest = max((i for i, s in left if s == "intact"), default=0)
    ok = sent is not None and bool(ranks) and not ranks_left and bool(stops) \
        and newest == stops[0] > 2
    result = dict(trial=index, layout=args.layout, exit=status, stopped_at=stops[:1],
                  signalled=len(procs), ranks_signalled=len(ranks),
                  ranks_gone_after_s=round(ended - sent, 1) if sent else None,
                  left=left, passed=ok)
    if not ok:
        result["fault_log_tail"] = (run.console() + logs)[-4000:]
    return resume_and_compare(args, output, reference, args.layout, result)


def describe(result: dict) -> str:
    what = result.get("phase") or result.get("fault") or result.get("layout")
    extra = {k: result[k] for k in ("save", "delay_s", "exit", "job_end_after_kill_s",
                                    "stopped_at", "ranks_gone_after_s") if k in result}
    return (f"trial {result['trial']:2d}: {what} {extra}; left {result['left']}; resumed from "
            f"{result['resumed']}; {'exact' if result['exact'] else 'NOT EXACT'}; "
            f"{'passed' if result['passed'] else 'FAILED'}")


def reference_run(args, layout: str, cache: dict) -> tuple:
    """(every rank's loss records, longest save) of an uninterrupted run of ``layout``."""
    ref_dir = os.path.join(args.output, f"reference-{layout}")
    if layout not in cache and args.reuse_reference and os.path.isdir(ref_dir):
        cache[layout] = records(ref_dir), 1.0  # (the save time is only used by sigkill)
    if layout not in cache:
        started = time.monotonic()
        ref_dir = fresh_dir(args, f"reference-{layout}")
        status, lines, console = run_to_end(command(args, ref_dir, layout), ref_dir)
        if status != 0:
            raise SystemExit(f"the reference run ({layout}) failed:\n{console[-6000:]}")
        cache[layout] = records(ref_dir), save_seconds(lines)
        print(f"reference ({layout}): {sum(map(len, cache[layout][0].values()))} records, "
              f"longest save {cache[layout][1]:.2f} s, {time.monotonic() - started:.0f} s",
              flush=True)
    return cache[layout]


def run_scenario(args, scenario: str, cache: dict, started: float) -> dict:
    layout = args.layout if scenario in ("tp2-kill", "sigterm-group") else "single"
    reference, save_time = reference_run(args, layout, cache)
    rng = random.Random(args.seed)
    points = args.points.split(",") if args.points else list(POINTS)
    cases = points * args.trials if scenario == "points" else list(range(args.trials))
    results, begun = [], time.monotonic()
    for index, case in enumerate(cases):
        if args.budget_minutes and time.monotonic() - started > 60 * args.budget_minutes:
            break
        if scenario == "sigkill":
            result = sigkill_trial(args, index, rng, reference, save_time)
        elif scenario == "points":
            result = point_trial(args, index, case, reference)
        elif scenario == "tp2-kill":
            result = tp2_kill_trial(args, index, reference)
        else:
            result = sigterm_group_trial(args, index, reference)
        results.append(result)
        print(describe(result), flush=True)
    kinds = [r.get("phase") or r.get("fault") or r.get("layout") for r in results]
    summary = dict(scenario=scenario, layout=layout, trials=len(results),
                   passed=sum(r["passed"] for r in results),
                   exact=sum(r["exact"] for r in results),
                   kinds={k: kinds.count(k) for k in sorted(set(kinds))},
                   wall_seconds_trials=round(time.monotonic() - begun), recipe=args.recipe,
                   iters=args.iters, interval=args.interval, seed=args.seed, results=results)
    with open(os.path.join(args.output, f"campaign-{scenario}.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1), flush=True)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="sigkill",
                        help="comma-separated: sigkill, points, tp2-kill, sigterm-group")
    parser.add_argument("--trials", type=int, default=20,
                        help="trials per scenario (points: rounds over every fault point)")
    parser.add_argument("--layout", default="tp2", choices=["tp2", "dp2"],
                        help="two-process scenarios: tensor or data parallel")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--interval", type=int, default=2, help="checkpoint.save_interval")
    parser.add_argument("--bound", type=float, default=120.0,
                        help="seconds within which a job must end after a rank dies / SIGTERM")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "runs", "fault_campaign"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting trials after this long (the trials run are reported)")
    parser.add_argument("--keep", action="store_true", help="keep each trial's directory")
    parser.add_argument("--points", default=None,
                        help=f"points: the faults to inject (default all: {', '.join(POINTS)})")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="two-process scenarios: reuse <output>/reference-<layout>")
    args = parser.parse_args(argv)
    scenarios = args.scenario.split(",")
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"--scenario: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.iters < 2 * args.interval + 1:
        parser.error("--iters must leave a save after the second one's iteration")
    os.makedirs(args.output, exist_ok=True)
    started, cache = time.monotonic(), {}
    summaries = [run_scenario(args, scenario, cache, started) for scenario in scenarios]
    print(f"wall time {time.monotonic() - started:.0f} s: "
          + "; ".join(f"{s['scenario']} {s['passed']}/{s['trials']} passed" for s in summaries))
    return 0 if all(s["passed"] == s["trials"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
