"""Faults injected into real training processes (CPU, gloo): kills during a save, a full disk,
SIGTERM to the process group, a NaN loss, a rank killed under DP=2. After each, rerunning the
same command resumes from an intact checkpoint and its losses equal an uninterrupted run's bit for
bit.

Every run is ``nemo-vwn pretrain`` (through tests/reliability/fault_driver.py, which injects the
fault) on the tiny dense VWN recipe: 6 iterations, a checkpoint every 2. Start-up dominates a
run's cost, so each run here covers several scenarios (7 launches in all); the repeated and
random trials, TP=2 and SIGTERM under torchrun are benchmarks/fault_campaign.py
(docs/reliability.md).
"""

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nemo_vwn.bridge import checkpoints as ck
from nemo_vwn.bridge import resume

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = "tiny_vwn_dense_cpu"
ITERS = 6
OVERRIDES = [f"train.train_iters={ITERS}", "checkpoint.save_interval=2",
             f"scheduler.lr_decay_iters={ITERS}", "validation.eval_interval=1000",
             "validation.eval_iters=0", "logger.log_interval=1",
             # dropout on: resume must restore every RNG stream exactly
             "model.hidden_dropout=0.1"]
TIMEOUT = 900
SURVIVOR_BOUND = 120  # seconds from a rank's death to the end of the job
MARKER = "NEMO_VWN_FAULT_TEST_RUN"  # in every process a run starts: leftovers are found by it


def _command(output, fault="none", overrides=(), nproc=1):
    args = ["pretrain", "--recipe", RECIPE, "--output", str(output), *OVERRIDES, *overrides]
    driver = ["-m", "tests.reliability.fault_driver", fault, "--"]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", *driver, *args]
    return [sys.executable, *driver, *args]


def _env():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _start(output, fault="none", overrides=(), nproc=1):
    """The run in its own session, its output in ``<output>.log``. A file, not a pipe: after a
    SIGKILL, megatron's checkpoint-writer Manager (a spawn child) outlives the run and would hold
    a pipe open."""
    os.makedirs(os.path.dirname(str(output)), exist_ok=True)
    log = open(f"{output}.log", "w")
    proc = subprocess.Popen(_command(output, fault, overrides, nproc), cwd=REPO_ROOT,
                            env=dict(_env(), **{MARKER: str(output)}),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def _finish(proc, output):
    try:
        code = proc.wait(timeout=TIMEOUT)
    finally:
        try:  # what the run left behind (the orphaned Manager after a SIGKILL): this test's own
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _end_marked(str(output))  # torchrun gives each rank a session of its own
    with open(f"{output}.log") as handle:
        return code, handle.read()


def _end_marked(output):
    """SIGKILL every process started for ``output`` (marked in its environment by ``_start``)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == output:
                proc.kill()
        except psutil.Error:
            continue


def _run(output, fault="none", overrides=(), nproc=1, expect=0):
    code, log = _finish(_start(output, fault, overrides, nproc), output)
    if expect is not None:
        assert code == expect, f"exit {code}, wanted {expect}:\n{log[-4000:]}"
    return code, log


def _train_records(output):
    """Every rank's training records, by rank."""
    records = {}
    for name in sorted(os.listdir(os.path.join(output, "records"))):
        with open(os.path.join(output, "records", name)) as handle:
            records[name] = json.load(handle)["train"]
    return records


def _iterations(output):
    return [s.iteration for s in ck.verify_checkpoint_dir(os.path.join(output, "checkpoints"))
            .iterations if s.intact]


def _resume_equals_reference(output, reference, nproc=1):
    _, log = _run(output, nproc=nproc)
    assert "resuming from" in log or "iteration 0" in log, log[-3000:]
    assert _train_records(output) == reference
    assert _iterations(output)[-1] == ITERS
    return log


SNAPSHOT_POINTS = ("kill-shard", "kill-metadata", "kill-state", "kill-tracker", "kill-config")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, which also copies its save directory at every kill point of the
    save at iteration 4 (``snap-*`` faults: what a SIGKILL there would leave on disk). Returns
    (every rank's loss records, the directory holding the snapshots)."""
    output = tmp_path_factory.mktemp("reference") / "run"
    _run(output, fault=",".join(f"snap-{kind}@4" for kind in SNAPSHOT_POINTS))
    assert _iterations(output) == [2, 4, ITERS]
    return _train_records(output), output / "checkpoints.snapshots"


@pytest.mark.parametrize("kind", SNAPSHOT_POINTS)
def test_every_kill_point_of_a_save_leaves_an_interrupted_save(reference, kind):
    """What a kill while the shards, ``.metadata``, the trackers or ``run_config.yaml`` of the
    save at 4 are written leaves: iteration 4 incomplete, and the resume decision falls back to
    2 with a warning (the campaign, benchmarks/fault_campaign.py, kills real processes at random
    points; the test below kills one in the tracker)."""
    save_dir = str(reference[1] / kind)
    report = ck.verify_checkpoint_dir(save_dir)
    assert [(s.iteration, s.state) for s in report.iterations] == [(2, "intact"),
                                                                  (4, "incomplete")]
    if kind == "kill-tracker":  # torn: half of latest_train_state.pt
        assert report.tracker_problems, report
    plan = resume.plan_resume(save_dir, ITERS, move=False)
    assert plan.iteration == 2, plan.messages
    assert any("iteration 4 is an interrupted save" in m for m in plan.messages), plan.messages


def _wait_for(proc, output, text):
    deadline = time.monotonic() + TIMEOUT
    log = os.path.join(output, "logs", "pretrain.rank0.log")
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.exists(log):
            with open(log, errors="replace") as handle:
                if text in handle.read():
                    return True
        time.sleep(0.02)
    return False


def test_sigterm_to_the_group_then_sigkill_in_the_tracker_then_exact_resume(tmp_path, reference):
    """One output directory, the same command three times (the first one to 5 iterations):

    1. SIGTERM to the run's whole process group -- the trainer and its checkpoint-writer
       Manager, as ``scancel`` sends it -- once the save at 2 is done: Bridge saves at the
       iteration it stopped at, exit 143;
    2. to 6 iterations (a changed ``train.train_iters``): it resumes from that checkpoint and is
       SIGKILLed half-way through writing the tracker of the save at 6;
    3. again: a warning, iteration 6 moved to ``interrupted/``, it resumes from 4; the loss
       records of the three runs together equal the uninterrupted run's, bit for bit.
    """
    output = tmp_path / "run"
    proc = _start(output, overrides=["train.train_iters=5"])
    assert _wait_for(proc, output, "successfully saved checkpoint from iteration       2")
    os.killpg(proc.pid, signal.SIGTERM)
    code, log = _finish(proc, output)
    assert code == 143, log[-4000:]
    [stop] = [int(line.split("stopped at iteration ")[1].split()[0])
              for line in log.splitlines() if "stopped at iteration" in line]
    assert 3 <= stop < 5 and _iterations(output)[-1] == stop, (stop, _iterations(output))

    code, log = _run(output, fault="kill-tracker@6", expect=None)
    assert code == -signal.SIGKILL, log[-4000:]
    assert f"iteration {stop} of 6" in log and "train.train_iters changed from 5 to 6" in log
    report = ck.verify_checkpoint_dir(str(output / "checkpoints"))
    assert [(s.iteration, s.state) for s in report.iterations][-2:] == [(4, "intact"),
                                                                       (6, "incomplete")]
    assert report.tracker_problems  # the torn latest_train_state.pt

    log = _resume_equals_reference(output, reference[0])
    assert "interrupted save" in log and "iteration 4 of 6" in log
    assert os.listdir(output / "checkpoints" / "interrupted")[0].startswith("iter_0000006.")
    assert resume.plan_resume(str(output / "checkpoints"), ITERS).finished  # a rerun: no work


def test_disk_full_mid_save(tmp_path):
    """OSError(ENOSPC) from a shard write of the save at 4 (EROFS, the same path with another
    errno: benchmarks/fault_campaign.py --scenario points)."""
    output = tmp_path / "run"
    code, log = _run(output, fault="oserror-ENOSPC@4", expect=None)
    assert code not in (0, -signal.SIGKILL), log[-3000:]
    assert os.strerror(errno.ENOSPC) in log, log[-3000:]
    report = ck.verify_checkpoint_dir(str(output / "checkpoints"))
    assert report.status(2).intact and not report.status(4).intact
    assert resume.plan_resume(str(output / "checkpoints"), ITERS, move=False).iteration == 2


def test_dp2_one_rank_killed_then_resume_then_a_nan_loss(tmp_path):
    """DP=2 under torchrun: rank 1 SIGKILLs itself at iteration 4; the survivor and torchrun
    end the job within the bound. The DP=2 rerun resumes from 2 and saves 4; from iteration 5
    its loss is NaN: Bridge's NaN check stops it before the save at 6 (no poisoned checkpoint).
    (TP=2 with a rank killed: benchmarks/fault_campaign.py --scenario tp2-kill.)"""
    output = tmp_path / "run"
    code, log = _run(output, fault="kill-rank1@4", nproc=2, expect=None)
    ended = time.time()
    assert code != 0
    # the driver's line is printed by rank 1, whose output goes to its own log under logs/
    logs = [log] + [open(path).read() for path in glob.glob(str(output / "logs" / "*.log"))]
    [killed] = [float(text.split("[fault] SIGKILL rank 1 at ")[1].split()[0])
                for text in logs if "[fault] SIGKILL rank 1 at " in text][:1]
    # the survivor and torchrun exit soon after the kill instead of waiting in a collective
    assert ended - killed < SURVIVOR_BOUND, f"{ended - killed:.0f} s after the kill"
    assert _iterations(output) == [2]

    code, log = _run(output, fault="nan@5", nproc=2, expect=None)
    logs = log + "".join(open(path).read() for path in glob.glob(str(output / "logs" / "*.log")))
    assert "iteration 2 of 6" in log, log[-3000:]
    assert code != 0 and "NaN" in logs, log[-3000:]
    assert _iterations(output) == [2, 4]  # nothing saved at or after the NaN iteration
    assert not os.path.exists(ck.iteration_dir(str(output / "checkpoints"), ITERS))
    dp2 = _train_records(output)
    assert sorted(dp2) == ["losses.rank0.json", "losses.rank1.json"]
    for records in dp2.values():  # one microbatch per rank and iteration, none twice
        iterations = [r[0] for r in records]
        assert iterations[:4] == [1, 2, 3, 4] and len(set(iterations)) == len(iterations)
