"""NeMo-Run launchers: the task command, a Slurm dry run and the local executor (the real
2-process local launch is tests/test_cli.py's, through the installed entry point).

No fixture prepares the runtime: the submitting process must work as it is on a machine without
CUDA or Transformer Engine (the tasks apply what they need themselves).

NeMo-Run is an optional extra (``nemo-vwn[run]``): its resolver would downgrade anyio, httpx and
urllib3, so the CPU dev stack installs it with ``--no-deps`` (README). Where it is missing the tests
that need it skip with that reason; the rest run always.
"""

import glob
import importlib.util
import os
import sys

import pytest

NO_NEMO_RUN = (
    "nemo-run is not installed: it is the optional extra nemo-vwn[run], left out of the CPU dev "
    "stack because nemo-run 0.11.1 would downgrade anyio, httpx and urllib3 (through leptonai)"
)
needs_nemo_run = pytest.mark.skipif(importlib.util.find_spec("nemo_run") is None,
                                    reason=NO_NEMO_RUN)


@pytest.fixture
def nemo_run_home(tmp_path, monkeypatch):
    """NeMo-Run's home in tmp_path; stdin from /dev/null (NeMo-Run's LocalTunnel mirrors stdin
    into the commands it runs, which pytest's captured stdin refuses)."""
    import nemo_run

    devnull = open(os.devnull)
    monkeypatch.setattr(sys, "stdin", devnull)
    previous = nemo_run.config.get_nemorun_home()
    nemo_run.config.set_nemorun_home(str(tmp_path / "nemo_run_home"))
    yield tmp_path / "nemo_run_home"
    nemo_run.config.set_nemorun_home(previous)
    devnull.close()


def test_task_command_and_errors():
    from nemo_vwn.bridge import launch
    from nemo_vwn.recipes import UnknownRecipeError, check_recipe_name, default_nodes

    assert launch.pretrain_args("tiny_vwn_moe_cpu", ["train.train_iters=3"], data="/d",
                                output="/o") == [
        "pretrain", "--recipe", "tiny_vwn_moe_cpu", "--output", "/o", "--data", "/d",
        "train.train_iters=3"]
    with pytest.raises(UnknownRecipeError, match="available recipes"):
        check_recipe_name("no_such_recipe")
    with pytest.raises(ValueError, match="key=value"):
        launch.pretrain_args("tiny_vwn_moe_cpu", ["--nproc-per-node"])
    assert default_nodes("paper_moe_a3p3b_vwn_r8") == 2  # 16 H100s
    assert default_nodes("paper_moe_a3p3b_vwn_r8", gpus_per_node=4) == 4
    assert default_nodes("paper_moe_a0p8b_vwn_r2") == 1
    assert default_nodes("tiny_vwn_moe_cpu") == 1


def test_launch_module_imports_no_recipe_and_no_megatron():
    """The submitting process (a login node) needs neither CUDA nor TE: nothing builds a recipe."""
    import subprocess

    code = ("import sys; from nemo_vwn.bridge import launch; from nemo_vwn.recipes import "
            "default_nodes; default_nodes('paper_moe_a3p3b_vwn_r8'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'megatron', 'torch', "
            "'transformer_engine'}), 'nemo_vwn.recipes.tiny' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[] False"


def test_missing_nemo_run_is_reported_with_the_reason(monkeypatch, capsys):
    import builtins

    from nemo_vwn.bridge import launch
    from nemo_vwn.cli import main

    real_import = builtins.__import__

    def no_nemo_run(name, *args, **kwargs):
        if name == "nemo_run" or name.startswith("nemo_run."):
            raise ModuleNotFoundError("No module named 'nemo_run'", name="nemo_run")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nemo_run)
    with pytest.raises(ImportError, match=r"nemo-vwn\[run\].*downgrade"):
        launch.local_executor()
    assert main(["launch", "--recipe", "tiny_vwn_moe_cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-vwn: error: NeMo-Run is not installed")
    assert "pip install 'nemo-vwn[run]'" in err


@needs_nemo_run
def test_slurm_dryrun_sbatch(nemo_run_home, tmp_path):
    from nemo_vwn.bridge import launch
    from nemo_vwn.recipes import default_nodes

    recipe = "paper_moe_a3p3b_vwn_r8"
    executor = launch.slurm_executor(
        account="vwn_acct", partition="batch", job_dir=str(tmp_path / "jobs"),
        nodes=default_nodes(recipe), container_image="nvcr.io/nvidia/nemo:dev",
        container_mounts=["/lustre/data:/data"], time="02:00:00")
    sbatch = launch.dryrun_sbatch(recipe, executor, overrides=[
        "train.train_iters=100", "model.virtual_width_n=32"], data="/data/vwn")
    assert "#SBATCH --nodes=2" in sbatch
    assert "#SBATCH --ntasks-per-node=1" in sbatch  # one torchrun agent per node
    assert "#SBATCH --gpus-per-node=8" in sbatch
    assert "#SBATCH --account=vwn_acct" in sbatch and "#SBATCH --partition=batch" in sbatch
    assert "#SBATCH --time=02:00:00" in sbatch
    srun = next(line for line in sbatch.splitlines() if line.startswith("srun"))
    assert "--container-image nvcr.io/nvidia/nemo:dev" in srun
    assert "/lustre/data:/data" in srun
    torchrun = srun[srun.index("torchrun"):]
    assert "--nnodes 2" in torchrun and "--nproc-per-node 8" in torchrun
    assert "--node-rank $SLURM_NODEID" in torchrun
    assert torchrun.endswith(
        f"-m nemo_vwn.cli pretrain --recipe {recipe} --data /data/vwn "
        "train.train_iters=100 model.virtual_width_n=32")
    # nothing was submitted: the script only exists in the experiment directory
    assert glob.glob(str(nemo_run_home / "experiments" / "**" / "*_sbatch.sh"), recursive=True)


@needs_nemo_run
def test_cli_slurm_dryrun(nemo_run_home, tmp_path, capsys):
    from nemo_vwn.cli import main

    assert main(["launch", "--recipe", "paper_moe_0p4b_4b_vwn_r1p5", "--executor", "slurm",
                 "--account", "a", "--job-dir", str(tmp_path / "jobs"), "--dryrun",
                 "optimizer.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=1" in out and "--nproc-per-node 8" in out
    assert "--recipe paper_moe_0p4b_4b_vwn_r1p5 optimizer.lr=1e-4" in out


@needs_nemo_run
def test_local_executor_runs_torchrun_of_this_environment():
    """The executor ``nemo-vwn launch`` uses locally; the real 2-process launch through it (the
    CLI's ``launch`` -> ``run_cli`` -> ``launch.launch``) trains in
    tests/test_cli.py::test_launch_local_two_processes_trains (one such launch in the suite: it
    costs two megatron processes)."""
    from nemo_vwn.bridge import launch

    executor = launch.local_executor(nproc_per_node=2, env_vars={"OMP_NUM_THREADS": "1"})
    assert executor.ntasks_per_node == 2 and executor.launcher == "torchrun"
    assert executor.env_vars["OMP_NUM_THREADS"] == "1"
    assert executor.env_vars["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    script = launch.pretrain_script("tiny_vwn_moe_cpu", ["train.train_iters=4"], output="/o")
    assert (script.path, script.entrypoint, script.m) == ("nemo_vwn.cli", "python", True)
    assert script.args == ["pretrain", "--recipe", "tiny_vwn_moe_cpu", "--output", "/o",
                           "train.train_iters=4"]
