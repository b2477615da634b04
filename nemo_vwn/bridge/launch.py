"""Launch VWN recipes with NeMo-Run: on this machine (torchrun) or on a Slurm cluster.

NeMo-Run is an optional extra (``pip install 'nemo-vwn[run]'``); nothing here imports it until a
NeMo-Run object is asked for. The task is always the same command, so a recipe runs identically
under ``nemo-vwn pretrain``, a local NeMo-Run launch and a Slurm job:

    python -m nemo_vwn.cli pretrain --recipe NAME [--output DIR] [--data DIR] [key=value ...]

launched by torchrun (NeMo-Run's ``Torchrun`` launcher), which sets RANK/LOCAL_RANK/WORLD_SIZE
for Megatron-Bridge's ``pretrain()``. On Slurm NeMo-Run starts one torchrun agent per node
(``ntasks_per_node=1``) with ``--nproc-per-node`` = GPUs per node.

    from nemo_vwn.bridge import launch
    from nemo_vwn.recipes import check_recipe_name, default_nodes
    launch.launch("tiny_vwn_moe_cpu", launch.local_executor(nproc_per_node=2),
                  overrides=["train.train_iters=20"])
    check_recipe_name("paper_moe_a3p3b_vwn_r8")       # fails early on a typo (nothing built)
    ex = launch.slurm_executor(account="my_acct", partition="batch",
                               nodes=default_nodes("paper_moe_a3p3b_vwn_r8"),
                               container_image="nvcr.io/nvidia/nemo:<tag>",
                               job_dir="/lustre/me/nemo_run")
    print(launch.dryrun_sbatch("paper_moe_a3p3b_vwn_r8", ex, overrides=["train.train_iters=100"]))
    launch.launch("paper_moe_a3p3b_vwn_r8", ex)

On the cluster the container must have nemo-vwn installed (``pip install --no-deps -e .`` in
the image, or mount the repository and add it to PYTHONPATH via ``env_vars``): the default
packager ships no code. Pass ``packager=run.GitArchivePackager(...)`` to ship a git checkout.

Nothing here builds a recipe or imports megatron: the process that submits needs neither CUDA
nor Transformer Engine (a login node, a laptop). The recipe is built by the task, on the nodes.
The recipe name is not checked here (this package sits below ``nemo_vwn.recipes``);
``nemo_vwn.recipes.check_recipe_name`` does it from the recipe catalog, as the CLI does.

CLI: ``nemo-vwn launch --recipe NAME [--executor local|slurm] [--dryrun] [key=value ...]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

NEMO_RUN_HINT = (
    "NeMo-Run is not installed: install the optional extra with `pip install 'nemo-vwn[run]'` "
    "(nemo-run 0.11.x). It is optional because nemo-run 0.11.1 pins anyio<=4.9, httpx==0.27.2 "
    "and urllib3<2 through leptonai, which would downgrade packages of the Megatron-Bridge stack"
)
GPUS_PER_NODE = 8  # H100 nodes


def require_nemo_run():
    """The ``nemo_run`` module, or an ImportError saying how to get it and why it is optional."""
    try:
        import nemo_run
    except ImportError as exc:
        raise ImportError(f"{NEMO_RUN_HINT} ({type(exc).__name__}: {exc})") from exc
    return nemo_run


# --------------------------------------------------------------------------- the task
def pretrain_args(recipe: str, overrides: Sequence[str] = (), data: Optional[str] = None,
                  output: Optional[str] = None) -> list[str]:
    """Arguments of ``python -m nemo_vwn.cli`` that train ``recipe``."""
    bad = [item for item in overrides if "=" not in item or item.startswith("-")]
    if bad:
        raise ValueError(f"overrides must be key=value (Hydra style), got {bad}")
    args = ["pretrain", "--recipe", recipe]
    if output:
        args += ["--output", output]
    if data:
        args += ["--data", data]
    return args + list(overrides)


def pretrain_script(recipe: str, overrides: Sequence[str] = (), data: Optional[str] = None,
                    output: Optional[str] = None, env: Optional[dict] = None):
    """A ``nemo_run.Script`` running ``python -m nemo_vwn.cli pretrain --recipe ...``."""
    run = require_nemo_run()
    return run.Script(path="nemo_vwn.cli", entrypoint="python", m=True,
                      args=pretrain_args(recipe, overrides, data, output), env=dict(env or {}))


# --------------------------------------------------------------------------- executors
def local_executor(nproc_per_node: int = 1, env_vars: Optional[dict] = None):
    """``nemo_run.LocalExecutor`` with the torchrun launcher (``nproc_per_node`` processes).

    The interpreter's ``bin`` directory is put first on PATH, so the task's ``torchrun`` is the
    one of the environment this is called from (a virtualenv need not be activated).
    """
    run = require_nemo_run()
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.update(env_vars or {})
    return run.LocalExecutor(ntasks_per_node=nproc_per_node, launcher="torchrun", env_vars=env)


def slurm_executor(*, account: str, job_dir: str, partition: Optional[str] = None,
                   nodes: int = 1, gpus_per_node: int = GPUS_PER_NODE, time: str = "04:00:00",
                   container_image: Optional[str] = None, container_mounts: Sequence[str] = (),
                   env_vars: Optional[dict] = None, tunnel=None, packager=None, **slurm_options):
    """``nemo_run.SlurmExecutor``: ``nodes`` x ``gpus_per_node`` GPUs, one torchrun per node.

    ``job_dir``: where NeMo-Run keeps the job's files on the cluster. ``tunnel``: how to reach
    the cluster (default ``LocalTunnel``: submit from a login node; pass ``run.SSHTunnel`` to
    submit from elsewhere). Other keyword arguments go to ``SlurmExecutor`` (``qos``,
    ``exclusive``, ``mem``, ``srun_args`` ...).
    """
    run = require_nemo_run()
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be >= 1, got {nodes}, {gpus_per_node}")
    executor = run.SlurmExecutor(
        account=account, partition=partition, nodes=nodes, ntasks_per_node=1,
        gpus_per_node=gpus_per_node, torchrun_nproc_per_node=gpus_per_node, time=time,
        container_image=container_image, container_mounts=list(container_mounts),
        env_vars=dict(env_vars or {}),
        tunnel=tunnel if tunnel is not None else run.LocalTunnel(job_dir=job_dir),
        packager=packager if packager is not None else run.Packager(),
        **slurm_options,
    )
    executor.launcher = "torchrun"
    return executor


# --------------------------------------------------------------------------- launching
def launch(recipe: str, executor, overrides: Sequence[str] = (), data: Optional[str] = None,
           output: Optional[str] = None, name: Optional[str] = None, detach: bool = False,
           tail_logs: bool = False):
    """Run ``recipe`` with ``executor`` as a NeMo-Run experiment; returns the experiment (its
    ``_id`` names it for ``nemo experiment status/logs``). Waits for the end unless ``detach``."""
    run = require_nemo_run()
    script = pretrain_script(recipe, overrides, data, output)
    with run.Experiment(name or f"nemo-vwn-{recipe}", executor=executor,
                        log_level="WARN") as experiment:
        experiment.add(script, name="pretrain")
        experiment.run(sequential=True, detach=detach, tail_logs=tail_logs)
    return experiment


def dryrun_sbatch(recipe: str, executor, overrides: Sequence[str] = (),
                  data: Optional[str] = None, output: Optional[str] = None,
                  name: Optional[str] = None) -> str:
    """The sbatch script NeMo-Run would submit for ``recipe`` on a ``SlurmExecutor`` (nothing is
    submitted; the script is written under NEMORUN_HOME's experiment directory and returned)."""
    run = require_nemo_run()
    if not isinstance(executor, run.SlurmExecutor):
        raise TypeError(f"dryrun_sbatch needs a SlurmExecutor, got {type(executor).__name__}")
    script = pretrain_script(recipe, overrides, data, output)
    with run.Experiment(name or f"nemo-vwn-{recipe}", executor=executor,
                        log_level="WARN") as experiment:
        experiment.add(script, name="pretrain")
        experiment.dryrun(log=False, delete_exp_dir=False)
        job_executor = experiment.jobs[0].executor  # the experiment's own copy of ``executor``
    path = os.path.join(job_executor.experiment_dir, f"{job_executor.job_name}_sbatch.sh")
    with open(path) as handle:
        return handle.read()


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``nemo-vwn launch`` options (recipe overrides follow as key=value)."""
    parser.add_argument("--recipe", required=True, help="recipe name (`nemo-vwn recipes`)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--output", default=None, help="output directory of the run")
    parser.add_argument("--data", default=None, help="dataset directory from `nemo-vwn data`")
    parser.add_argument("--nproc-per-node", type=int, default=None,
                        help="local: processes (default 1); slurm: GPUs per node (default 8)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="slurm: nodes (default: what the recipe's layout is sized for)")
    parser.add_argument("--account", help="slurm: account")
    parser.add_argument("--partition", help="slurm: partition")
    parser.add_argument("--time", default="04:00:00", help="slurm: time limit")
    parser.add_argument("--container-image", help="slurm: container with nemo-vwn installed")
    parser.add_argument("--container-mounts", default="", help="slurm: comma-separated mounts")
    parser.add_argument("--job-dir", default=None,
                        help="slurm: NeMo-Run job directory on the cluster (default "
                             "$NEMORUN_HOME/slurm_jobs)")
    parser.add_argument("--dryrun", action="store_true",
                        help="slurm: print the sbatch script instead of submitting it")
    parser.add_argument("--detach", action="store_true", help="do not wait for the end")


def run_cli(args, overrides: Sequence[str], nodes: int = 1) -> int:
    """``nemo-vwn launch`` once the recipe is known: ``nodes`` is the Slurm default when
    ``--nodes`` is not given. Raises ImportError (no NeMo-Run) or ValueError (bad options)."""
    require_nemo_run()
    if args.executor == "local":
        if args.dryrun:
            raise ValueError("--dryrun applies to --executor slurm")
        executor = local_executor(nproc_per_node=args.nproc_per_node or 1)
    else:
        if not args.account:
            raise ValueError("--executor slurm needs --account")
        job_dir = args.job_dir or os.path.join(
            require_nemo_run().config.get_nemorun_home(), "slurm_jobs")
        executor = slurm_executor(
            account=args.account, partition=args.partition, job_dir=job_dir,
            nodes=args.nodes or nodes, gpus_per_node=args.nproc_per_node or GPUS_PER_NODE,
            time=args.time, container_image=args.container_image,
            container_mounts=[m for m in args.container_mounts.split(",") if m])
        if args.dryrun:
            print(dryrun_sbatch(args.recipe, executor, overrides, args.data, args.output))
            return 0
    launch(args.recipe, executor, overrides, args.data, args.output, detach=args.detach)
    return 0
