"""Faults injected into real training processes (CPU, gloo): kills during a save, a full or
read-only disk, SIGTERM, a NaN loss, a rank killed under DP=2. After each, rerunning the same
command resumes from an intact checkpoint and its losses equal an uninterrupted run's bit for bit.

Every run is ``nemo-vwn pretrain`` (through tests/reliability/fault_driver.py, which injects the
fault) on the tiny dense VWN recipe: 6 iterations, a checkpoint every 2. The longer random
campaign is benchmarks/fault_campaign.py (docs/reliability.md).
"""

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
    proc = subprocess.Popen(_command(output, fault, overrides, nproc), cwd=REPO_ROOT, env=_env(),
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
    with open(f"{output}.log") as handle:
        return code, handle.read()


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "run"
    _run(output)
    assert _iterations(output) == [2, 4, 6]
    return _train_records(output)


def _resume_equals_reference(output, reference, nproc=1):
    _, log = _run(output, nproc=nproc)
    assert "resuming from" in log or "iteration 0" in log, log[-3000:]
    assert _train_records(output) == reference
    assert _iterations(output)[-1] == ITERS
    return log


def test_resume_by_default_is_bit_exact_and_a_finished_run_is_kept(tmp_path, reference):
    """3 iterations, then the same command with 6: it continues at 4 and the loss records of
    the two runs together equal the uninterrupted run's, bit for bit."""
    output = tmp_path / "run"
    _run(output, overrides=["train.train_iters=3"])
    log = _resume_equals_reference(output, reference)
    assert "resuming from" in log and "iteration 3 of 6" in log
    plan = resume.plan_resume(str(output / "checkpoints"), train_iters=ITERS)
    assert plan.finished  # a rerun of the finished run trains nothing (compare reuses it)


@pytest.mark.parametrize("fault", ["kill-shard@4", "kill-tracker@4"])
def test_sigkill_during_a_save(tmp_path, reference, fault):
    output = tmp_path / "run"
    code, _ = _run(output, fault=fault, expect=None)
    assert code == -signal.SIGKILL
    report = ck.verify_checkpoint_dir(str(output / "checkpoints"))
    assert [(s.iteration, s.state) for s in report.iterations] == [(2, "intact"),
                                                                  (4, "incomplete")]
    log = _resume_equals_reference(output, reference)
    assert "interrupted save" in log and "iteration 2 of 6" in log
    assert os.listdir(output / "checkpoints" / "interrupted")[0].startswith("iter_0000004.")


@pytest.mark.parametrize("fault", ["kill-metadata@4", "kill-state@4", "kill-config@4"])
def test_sigkill_at_other_points_of_a_save_leaves_an_interrupted_save(tmp_path, fault):
    output = tmp_path / "run"
    code, _ = _run(output, fault=fault, expect=None)
    assert code == -signal.SIGKILL
    plan = resume.plan_resume(str(output / "checkpoints"), ITERS, move=False)
    assert plan.iteration == 2, plan.messages
    assert any("iteration 4 is an interrupted save" in m for m in plan.messages)


@pytest.mark.parametrize("fault", ["oserror-ENOSPC@4", "oserror-EROFS@4"])
def test_disk_full_or_read_only_mid_save(tmp_path, fault):
    output = tmp_path / "run"
    code, log = _run(output, fault=fault, expect=None)
    assert code not in (0, -signal.SIGKILL), log[-3000:]
    assert os.strerror(getattr(__import__("errno"), fault.split("-")[1].split("@")[0])) in log
    report = ck.verify_checkpoint_dir(str(output / "checkpoints"))
    assert report.status(2).intact and not report.status(4).intact
    assert resume.plan_resume(str(output / "checkpoints"), ITERS, move=False).iteration == 2


def test_sigterm_saves_before_exit_and_resumes_exactly(tmp_path, reference):
    output = tmp_path / "run"
    proc = _start(output)
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        with open(f"{output}.log") as handle:
            if f"[{RECIPE}] iter 3/" in handle.read():
                proc.send_signal(signal.SIGTERM)
                break
        time.sleep(0.2)
    code, log = _finish(proc, output)
    assert code == 143, log[-4000:]
    [stop] = [int(line.split("stopped at iteration ")[1].split()[0])
              for line in log.splitlines() if "stopped at iteration" in line]
    assert 3 <= stop < ITERS and _iterations(output)[-1] == stop  # saved where it stopped
    _resume_equals_reference(output, reference)


def test_nan_loss_stops_before_a_poisoned_checkpoint(tmp_path):
    output = tmp_path / "run"
    code, log = _run(output, fault="nan@3", expect=None)
    assert code != 0 and "NaN" in log, log[-3000:]
    assert _iterations(output) == [2]  # nothing saved at or after the NaN iteration
    assert not os.path.exists(ck.iteration_dir(str(output / "checkpoints"), 4))


def test_dp2_one_rank_killed_survivors_exit_and_resume(tmp_path, reference):
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
    _, log = _run(output, nproc=2)
    assert "iteration 2 of 6" in log
    dp2 = _train_records(output)
    assert sorted(dp2) == ["losses.rank0.json", "losses.rank1.json"]
    for records in dp2.values():  # one microbatch per rank and iteration, none twice
        assert [r[0] for r in records] == list(range(1, ITERS + 1))
