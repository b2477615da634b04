"""Every command the README shows, typed as a user types it: the installed ``nemo-vwn`` entry point
of this interpreter's environment, in a subprocess, with a clean environment (no PYTHONPATH, no
fixture that patches anything first), at tiny sizes.

One pretrain (module fixture) feeds the conversions: its baseline checkpoint is upcycled to VWN,
the VWN checkpoint is resharded, exported to Hugging Face and imported back. A command that cannot
complete on this machine stops at the last step that can run and says so in its name (the Slurm
submission: ``..._dryrun_only``).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
NEMO_VWN = os.path.join(BIN, "nemo-vwn")
TINY_TRAIN = ["train.train_iters=4", "train.global_batch_size=8", "train.micro_batch_size=4",
              "validation.eval_interval=4", "validation.eval_iters=1", "logger.log_interval=2",
              "checkpoint.save_interval=4"]


def clean_env(home) -> dict:
    """What a fresh login shell has: PATH (this environment's bin first), HOME, a locale."""
    return {"PATH": BIN + os.pathsep + "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
            "LANG": "C.UTF-8", "NEMORUN_HOME": os.path.join(str(home), "nemo_run"),
            "OMP_NUM_THREADS": "1"}


def nemo_vwn(args, cwd, expect=0, timeout=600, python_flags=()):
    """Run ``nemo-vwn ARGS`` in ``cwd``; assert the exit status; return stdout, stderr, seconds."""
    command = ([sys.executable, *python_flags, NEMO_VWN] if python_flags else [NEMO_VWN])
    started = time.monotonic()
    proc = subprocess.run(command + list(args), cwd=cwd, env=clean_env(cwd), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == expect, (
        f"nemo-vwn {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout, proc.stderr, time.monotonic() - started


def imported(importtime_stderr: str) -> set:
    """Top-level packages in ``python -X importtime`` output."""
    return {line.split("|")[-1].strip().split(".")[0]
            for line in importtime_stderr.splitlines() if line.startswith("import time:")}


# --------------------------------------------------------------------------- no megatron
def test_help_recipes_patches_data_help_import_no_torch(tmp_path):
    from nemo_vwn.recipes.catalog import all_entries

    outputs = {}
    for args in (["--help"], ["recipes"], ["patches"], ["data", "--help"]):
        out, err, _ = nemo_vwn(args, tmp_path, python_flags=("-X", "importtime"))
        heavy = imported(err) & {"torch", "megatron", "transformer_engine", "numpy", "nemo_run"}
        assert not heavy, f"nemo-vwn {' '.join(args)} imported {sorted(heavy)}"
        assert not [line for line in err.splitlines() if not line.startswith("import time:")]
        outputs[" ".join(args)] = out
    assert "pretrain" in outputs["--help"] and "convert" in outputs["--help"]
    rows = {line.split()[0]: line.split() for line in outputs["recipes"].splitlines()[1:]}
    assert set(rows) == set(all_entries())
    assert rows["tiny_vwn_moe_cpu"][1:3] == ["yes", "tiny_moe_cpu"]
    assert rows["paper_moe_a3p3b_base_r8"][3] == "30.53B/3.35B"  # README's table
    assert rows["paper_moe_a3p3b_vwn_r8"][3] == "30.60B/3.42B"
    assert re.search(r"^cpu_runtime  \[.+\]\n    \S", outputs["patches"], re.M)
    assert "--vocab-size" in outputs["data --help"]


def test_help_answers_within_a_second(tmp_path):
    """CPU seconds of the whole process (the CI machine is shared, so wall time is noisy; with
    nothing heavy imported they are the same on an idle machine)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    nemo_vwn(["--help"], tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, f"nemo-vwn --help used {cpu:.2f} CPU seconds"


# --------------------------------------------------------------------------- data + pretrain
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def dataset(workdir):
    out, _, _ = nemo_vwn(["data", "--output", "data", "--max-docs", "40", "--vocab-size", "400",
                          "--quiet"], workdir)
    summary = json.loads(out)
    assert summary["num_docs"] == 40 and summary["num_tokens"] > 1000
    assert summary["vocab_size"] == 400
    assert os.path.exists(os.path.join(workdir, "data", "manifest.json"))
    return os.path.join(workdir, "data")


@pytest.fixture(scope="module")
def pretrained(workdir, dataset):
    """``nemo-vwn pretrain`` of the MoE baseline on the built dataset (4 iterations)."""
    out, err, seconds = nemo_vwn(["pretrain", "--recipe", "tiny_moe_cpu", "--data", dataset,
                                  "--output", "base", *TINY_TRAIN], workdir)
    return dict(dir=os.path.join(workdir, "base"), out=out, err=err, seconds=seconds)


def test_data_then_pretrain_prints_progress_saves_and_validation_only(pretrained):
    lines = pretrained["out"].splitlines()
    assert lines[0].startswith("[nemo-vwn] pretrain tiny_moe_cpu -> ")
    assert any(re.match(r"\[tiny_moe_cpu\] iter 4/4 \(100%\) \| loss \d", line) for line in lines)
    assert any(re.search(r"successfully saved checkpoint from iteration +4 ", line)
               for line in lines)
    assert any("validation loss at iteration 4" in line for line in lines)
    assert re.match(r"\[nemo-vwn\] upstream warnings: .*megatron's full output: .*rank0\.log",
                    lines[-1])
    assert len(lines) <= 12, pretrained["out"]  # megatron's config dump is in the log
    assert pretrained["err"] == ""
    log = open(os.path.join(pretrained["dir"], "logs", "pretrain.rank0.log")).read()
    assert "UserWarning" in log and "successfully saved checkpoint" in log
    assert len(log.splitlines()) > 10 * len(lines)
    assert os.path.isdir(os.path.join(pretrained["dir"], "checkpoints", "iter_0000004"))
    run = json.load(open(os.path.join(pretrained["dir"], "run.json")))
    assert run["recipe"] == "tiny_moe_cpu" and run["train_iters"] == 4
    records = json.load(open(os.path.join(pretrained["dir"], "records", "losses.rank0.json")))
    assert [step for step, _, _ in records["train"]] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_checkpoint_verify_then_the_same_pretrain_command_trains_nothing(workdir, dataset,
                                                                         pretrained):
    """The README's restart workflow: verify the run's checkpoints, rerun the same command."""
    checkpoints = os.path.join(pretrained["dir"], "checkpoints")
    out, _, _ = nemo_vwn(["checkpoint", "verify", checkpoints], workdir)
    assert re.search(r"^  iter +4  intact ", out, re.M), out
    shards = sorted(glob.glob(os.path.join(checkpoints, "iter_0000004", "*.distcp")))
    stamps = [os.path.getmtime(path) for path in shards]
    out, err, _ = nemo_vwn(["pretrain", "--recipe", "tiny_moe_cpu", "--data", dataset,
                            "--output", "base", *TINY_TRAIN], workdir)
    assert "already trained to iteration 4" in out + err and "nothing to do" in out + err
    assert [os.path.getmtime(path) for path in shards] == stamps  # nothing retrained or rewritten
    damaged = os.path.join(workdir, "damaged_checkpoints")  # a copy: the conversions read the run
    shutil.copytree(checkpoints, damaged)
    shard = os.path.join(damaged, "iter_0000004", os.path.basename(shards[0]))
    open(shard, "r+b").truncate(10)
    out, _, _ = nemo_vwn(["checkpoint", "verify", damaged], workdir, expect=1)
    assert re.search(r"^  iter +4  (?!intact)", out, re.M) and os.path.basename(shard) in out


# --------------------------------------------------------------------------- compare
def test_compare_tiny_writes_table_and_plot(workdir, dataset):
    out, _, _ = nemo_vwn(["compare", "--recipe", "tiny_vwn_dense_cpu", "--data", dataset,
                          "--output", "compare", *TINY_TRAIN], workdir)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and "tiny_vwn_dense_cpu" in table[0] and "tiny_dense_cpu" in table[0]
    summary = json.load(open(os.path.join(workdir, "compare", "summary.json")))
    assert summary["wall_seconds"] > 0
    # one seed: the table says how much of it may be noise (this recipe's spread is unmeasured)
    assert "noise: one seed, and the seed spread of tiny_vwn_dense_cpu has not been measured" in out
    assert summary["noise"].startswith("noise: one seed")
    assert os.path.getsize(os.path.join(workdir, "compare", "loss_vs_tokens.png")) > 1000
    for recipe in ("tiny_vwn_dense_cpu", "tiny_dense_cpu"):
        log = os.path.join(workdir, "compare", recipe, "logs", "pretrain.rank0.log")
        assert os.path.exists(log)
    assert not [line for line in out.splitlines() if "UserWarning" in line]


# --------------------------------------------------------------------------- convert
@pytest.fixture(scope="module")
def upcycled(workdir, pretrained):
    out, _, _ = nemo_vwn(["convert", "upcycle", "--checkpoint",
                          os.path.join(pretrained["dir"], "checkpoints"), "--output", "up",
                          "--n", "4", "--m", "2"], workdir)
    return dict(dir=os.path.join(workdir, "up"), report=json.loads(out))


def test_convert_upcycle(upcycled):
    assert glob.glob(os.path.join(upcycled["dir"], "**", "*.distcp"), recursive=True)
    assert "4" in json.dumps(upcycled["report"])


def test_convert_reshard_tp2(workdir, upcycled):
    out, _, _ = nemo_vwn(["convert", "reshard", "--checkpoint", upcycled["dir"], "--output",
                          "up_tp2", "--tp", "2"], workdir)
    report = json.loads(out)
    assert glob.glob(os.path.join(workdir, "up_tp2", "**", "*.distcp"), recursive=True)
    assert "2" in json.dumps(report)
    # the logits of the TP=2 model and of its reloaded checkpoint equal the source's
    assert report["target_vs_source_max_abs_diff"] < 1e-4
    assert report["saved_vs_source_max_abs_diff"] < 1e-4
    assert os.path.exists(os.path.join(workdir, "up_tp2", "latest_checkpointed_iteration.txt"))


def last_report(out: str) -> dict:
    """The JSON report a conversion prints last (in-process loaders print lines before it)."""
    return json.loads(out[[m.start() for m in re.finditer(r"(?m)^\{$", out)][-1]:])


def test_convert_export_hf_then_import_hf(workdir, upcycled):
    out, _, _ = nemo_vwn(["convert", "export-hf", "--checkpoint", upcycled["dir"], "--output",
                          "up_hf", "--n", "4", "--m", "2"], workdir)
    last_report(out)
    config = json.load(open(os.path.join(workdir, "up_hf", "config.json")))
    assert config["virtual_width_n"] == 4 and config["virtual_width_m"] == 2
    out, _, _ = nemo_vwn(["convert", "import-hf", "--hf-dir", "up_hf", "--output", "up_back",
                          "--n", "4", "--m", "2"], workdir)
    last_report(out)
    assert glob.glob(os.path.join(workdir, "up_back", "**", "*.distcp"), recursive=True)


# --------------------------------------------------------------------------- launch
def test_launch_local_two_processes_trains(workdir):
    """A real NeMo-Run launch (LocalExecutor + torchrun, 2 gloo processes): the suite's only one
    (tests/bridge/test_launch.py checks the executor it builds)."""
    nemo_vwn(["launch", "--recipe", "tiny_vwn_moe_cpu", "--nproc-per-node", "2", "--output",
              "launched", *TINY_TRAIN], workdir)
    experiments = os.path.join(clean_env(workdir)["NEMORUN_HOME"], "experiments")
    assert glob.glob(os.path.join(experiments, "**", "SUCCESS"), recursive=True)
    run = json.load(open(os.path.join(workdir, "launched", "run.json")))
    assert run["provider"] == "VWNModelProvider" and run["train_iters"] == 4
    for rank in (0, 1):  # both torchrun workers trained 4 iterations (DP=2, one microbatch each)
        records = json.load(open(os.path.join(workdir, "launched", "records",
                                              f"losses.rank{rank}.json")))
        assert [step for step, _, _ in records["train"]] == [1, 2, 3, 4]
        assert all(loss == loss and tokens > 0 for _, loss, tokens in records["train"])


@pytest.mark.parametrize("recipe,nodes", [("tiny_vwn_moe_cpu", 1), ("paper_moe_a3p3b_vwn_r8", 2)])
def test_launch_slurm_dryrun_only(workdir, recipe, nodes):
    """A real submission needs a Slurm cluster: this stops at the dry run (the sbatch script)."""
    out, err, _ = nemo_vwn(["launch", "--recipe", recipe, "--executor", "slurm", "--account",
                            "ACCT", "--partition", "batch", "--container-image",
                            "nvcr.io/nvidia/nemo:25.11", "--job-dir", f"J_{recipe}", "--dryrun",
                            "train.train_iters=100"], workdir)
    assert f"#SBATCH --nodes={nodes}" in out and "#SBATCH --account=ACCT" in out
    assert "#SBATCH --partition=batch" in out and "#SBATCH --gpus-per-node=8" in out
    srun = next(line for line in out.splitlines() if line.startswith("srun"))
    assert "--container-image nvcr.io/nvidia/nemo:25.11" in srun
    assert srun.endswith(f"-m nemo_vwn.cli pretrain --recipe {recipe} train.train_iters=100")
    assert "transformer_engine" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args,expected", [
    (["pretrain", "--recipe", "tiny_vwn"], r"unknown recipe 'tiny_vwn'; available recipes: "),
    (["pretrain", "--recipe", "tiny_vwn_moe_cpu", "trian.train_iters=3"],
     r"unknown override key 'trian.train_iters'.*valid fields:.*train"),
    (["launch", "--recipe", "no_such", "--executor", "slurm", "--account", "a", "--dryrun"],
     r"unknown recipe 'no_such'"),
    (["convert", "upcycle", "--checkpoint", "missing_dir", "--output", "o", "--n", "4", "--m",
      "2"], r"checkpoint not found: missing_dir"),
])
def test_user_errors_are_one_line(tmp_path, args, expected):
    out, err, _ = nemo_vwn(args, tmp_path, expect=2)
    lines = [line for line in (out + err).splitlines() if line.startswith("nemo-vwn")]
    assert len(lines) == 1 and re.match(r"nemo-vwn( convert)?: error: " + expected, lines[0]), (
        out + err)
    assert "Traceback" not in out + err


def test_layout_error_under_torchrun_is_printed_once(tmp_path):
    _, err, _ = nemo_vwn(["pretrain", "--recipe", "tiny_vwn_moe_cpu", "--nproc-per-node", "2",
                          "model.tensor_model_parallel_size=3"], tmp_path, expect=2)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("nemo-vwn: error: rank "), err
    assert "ChildFailedError" not in err and "Traceback" not in err


def test_config_error_verbose_debug_shows_megatron_output_and_traceback(tmp_path):
    """A VWNConfigError (raised in finalize(), after megatron is imported) with --verbose --debug:
    megatron's warnings and the traceback on the console, and still the one-line message."""
    _, err, _ = nemo_vwn(["--verbose", "--debug", "pretrain", "--recipe", "tiny_vwn_moe_cpu",
                          "model.virtual_width_n=3"], tmp_path, expect=2)
    assert "UserWarning" in err  # --verbose: upstream output on the console
    assert "Traceback (most recent call last)" in err and "VWNConfigError" in err
    assert re.search(r"^nemo-vwn: error: vwn_collapse='norm_linear' .*\(m, n\) = \(2, 3\)",
                     err, re.M)
    assert not os.path.exists(os.path.join(tmp_path, "runs", "tiny_vwn_moe_cpu", "logs",
                                           "pretrain.rank0.log"))
