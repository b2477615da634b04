"""SIGKILL campaign: kill ``nemo-vwn pretrain`` at random points of its checkpoint saves, rerun the
same command, and check that it resumes from an intact checkpoint with losses equal to an
uninterrupted run's, bit for bit (CPU, fp32, gloo).

    nice python benchmarks/fault_campaign.py --trials 20 --output runs/fault_campaign

Per trial: a fresh output directory; the run is killed ``U(0, 1.3 x save time)`` seconds after
the "saving checkpoint at iteration K" line of a randomly chosen save K (the save time is
measured on the uninterrupted reference run, so the kills land in the shard writes, ``.metadata``,
``train_state.pt``, the trackers, ``run_config.yaml``, the manifest, or just after). The phase
hit is read off the files the kill left; then the same command is rerun and its loss records are
compared with the reference. Results: ``<output>/campaign.json`` and a table on stdout
(docs/reliability.md records one campaign).
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


def command(recipe: str, output: str, iters: int, interval: int) -> list:
    return [sys.executable, "-m", "nemo_vwn.cli", "pretrain", "--recipe", recipe, "--output",
            output, f"train.train_iters={iters}", f"checkpoint.save_interval={interval}",
            f"scheduler.lr_decay_iters={iters}", "validation.eval_interval=1000",
            "validation.eval_iters=0", "logger.log_interval=1", "model.hidden_dropout=0.1"]


def env() -> dict:
    out = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        out.pop(key, None)
    return out


def records(output: str) -> list:
    with open(os.path.join(output, "records", "losses.rank0.json")) as handle:
        return json.load(handle)["train"]


def start(cmd: list) -> subprocess.Popen:
    """In its own session, so that what a killed run leaves behind can be ended with it (after a
    SIGKILL, megatron's checkpoint-writer Manager, a spawn child, outlives the run)."""
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def end_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_to_end(cmd: list) -> tuple:
    """(exit status, [(time, line)])."""
    proc = start(cmd)
    lines = []
    for line in proc.stdout:
        lines.append((time.monotonic(), line))
    code = proc.wait()
    end_session(proc)
    return code, lines


def save_seconds(lines: list) -> float:
    """The longest save of a run: "saving checkpoint" to "successfully saved"."""
    longest, started = 0.0, None
    for stamp, line in lines:
        if line.startswith("saving checkpoint at iteration"):
            started = stamp
        elif started is not None and "successfully saved" in line:
            longest, started = max(longest, stamp - started), None
    return longest or 1.0


def phase(save_dir: str, iteration: int) -> str:
    """Which part of the save of ``iteration`` the kill interrupted, from the files it left."""
    path = ck.iteration_dir(save_dir, iteration)
    if not os.path.isdir(path):
        return "before the save's directory"
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


def trial(args, index: int, rng: random.Random, reference: list, save_time: float) -> dict:
    output = os.path.join(args.output, f"trial{index:02d}")
    shutil.rmtree(output, ignore_errors=True)
    saves = list(range(args.interval, args.iters + 1, args.interval))
    target = rng.choice(saves[1:] or saves)  # a save with an older checkpoint to fall back to
    delay = rng.uniform(0.0, 1.3 * save_time)
    cmd = command(args.recipe, output, args.iters, args.interval)
    proc = start(cmd)
    killed = False
    for line in proc.stdout:
        if line.startswith(f"saving checkpoint at iteration {target:7d}"):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.stdout.close()
    proc.wait()
    end_session(proc)
    save_dir = os.path.join(output, "checkpoints")
    hit = phase(save_dir, target) if killed else "not killed"
    before = [(s.iteration, s.state) for s in ck.verify_checkpoint_dir(save_dir).iterations]
    started = time.monotonic()
    status, lines = run_to_end(cmd)
    text = "".join(line for _, line in lines)
    resumed = next((line.split("resuming from ")[1].strip() for _, line in lines
                    if "resuming from" in line), "iteration 0")
    exact = status == 0 and records(output) == reference
    result = dict(trial=index, save=target, delay_s=round(delay, 3), phase=hit,
                  left=before, resumed=resumed, resume_exit=status, exact=exact,
                  resume_seconds=round(time.monotonic() - started, 1))
    if not exact:
        result["log_tail"] = text[-2000:]
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--recipe", default="tiny_vwn_dense_cpu")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--interval", type=int, default=2, help="checkpoint.save_interval")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "runs", "fault_campaign"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting trials after this long (the trials run are reported)")
    parser.add_argument("--keep", action="store_true", help="keep each trial's directory")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    started = time.monotonic()
    ref_dir = os.path.join(args.output, "reference")
    shutil.rmtree(ref_dir, ignore_errors=True)
    status, lines = run_to_end(command(args.recipe, ref_dir, args.iters, args.interval))
    if status != 0:
        print("".join(line for _, line in lines[-80:]))
        return status
    reference, save_time = records(ref_dir), save_seconds(lines)
    print(f"reference: {len(reference)} records, longest save {save_time:.2f} s", flush=True)
    rng = random.Random(args.seed)
    results = []
    for index in range(args.trials):
        if args.budget_minutes and time.monotonic() - started > 60 * args.budget_minutes:
            break
        result = trial(args, index, rng, reference, save_time)
        results.append(result)
        print(f"trial {index:2d}: save {result['save']} +{result['delay_s']:.2f} s -> "
              f"{result['phase']}; resumed from {result['resumed']}; "
              f"{'exact' if result['exact'] else 'NOT EXACT'}", flush=True)
    summary = dict(trials=len(results), exact=sum(r["exact"] for r in results),
                   phases={p: sum(r["phase"] == p for r in results)
                           for p in sorted({r["phase"] for r in results})},
                   wall_seconds=round(time.monotonic() - started), recipe=args.recipe,
                   iters=args.iters, interval=args.interval, seed=args.seed, results=results)
    with open(os.path.join(args.output, "campaign.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))
    return 0 if summary["exact"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
