"""Launch a function on N processes (gloo on CPU) and collect what each rank returns.

    results = run_distributed("tests.workers.tp:tp_parity", world_size=2, kwargs={...})

The target is named as "module:function" so the child processes (started with ``spawn``) import it
themselves; ``sys_path`` entries (default: the current working directory) are prepended in the
children. Each rank's return value must be picklable. An exception on any rank is re-raised in the
parent with that rank's traceback.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import time
import traceback
from typing import Any, Optional, Sequence

from nemo_vwn.runtime import free_port


class DistributedRunError(RuntimeError):
    """A rank of run_distributed failed."""


def _child(rank: int, world_size: int, target: str, kwargs: dict, port: int, out_dir: str,
           sys_path: Sequence[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")  # upstream import-time warnings, once per rank
    # One intra-op thread per rank, as torchrun does: ranks oversubscribing the cores make every
    # collective wait on descheduled peers (the parallel tests ran 3-4x slower).
    threads = int(os.environ.get("NEMO_VWN_RANK_THREADS", os.environ.get("OMP_NUM_THREADS", 1)))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    for entry in reversed(list(sys_path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"] = str(rank)
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    result: dict[str, Any]
    try:
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        result = {"ok": True, "value": func(rank=rank, world_size=world_size, **kwargs)}
    except BaseException:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": traceback.format_exc()}
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass
    path = os.path.join(out_dir, f"rank{rank}.pkl")
    with open(path + ".tmp", "wb") as handle:
        pickle.dump(result, handle)
    os.replace(path + ".tmp", path)


# A rank whose rendezvous port was taken between free_port() and TCPStore's bind reports this.
_PORT_TAKEN = ("EADDRINUSE", "address already in use")
PORT_ATTEMPTS = 3


def run_distributed(
    target: str,
    world_size: int,
    kwargs: Optional[dict] = None,
    sys_path: Optional[Sequence[str]] = None,
    timeout: float = 900.0,
) -> list[Any]:
    """Run ``target(rank=, world_size=, **kwargs)`` on ``world_size`` processes.

    Returns the per-rank values. The ranks meet at a port picked here; a port is free when picked,
    not necessarily when rank 0 binds it, so a launch that fails only because the port was taken
    (EADDRINUSE, before ``target`` did anything else) is retried on a new port, up to
    ``PORT_ATTEMPTS`` launches in all.
    """
    kwargs = dict(kwargs or {})
    sys_path = list(sys_path) if sys_path is not None else [os.getcwd()]
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _launch(target, world_size, kwargs, sys_path, timeout, free_port())
        except _PortTaken as lost:
            if attempt == PORT_ATTEMPTS:
                raise DistributedRunError(
                    f"{target}: the rendezvous port was taken {attempt} times in a row\n"
                    f"{lost}") from None


class _PortTaken(DistributedRunError):
    """The ranks could not meet: the picked port was bound by someone else first."""


def _launch(target: str, world_size: int, kwargs: dict, sys_path: list, timeout: float,
            port: int) -> list[Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="nemo_vwn_dist_") as out_dir:
        procs = [
            ctx.Process(target=_child,
                        args=(rank, world_size, target, kwargs, port, out_dir, sys_path))
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        failed_early = False
        try:
            while any(proc.is_alive() for proc in procs):
                if time.monotonic() > deadline:
                    raise DistributedRunError(f"{target}: timed out after {timeout:.0f} s")
                # A rank that failed leaves the others blocked in a collective: stop them.
                if any(_read(out_dir, rank, ok=False) for rank in range(world_size)):
                    failed_early = True
                    break
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join(timeout=30)
        results, errors, port_taken = [], [], False
        for rank, proc in enumerate(procs):
            result = _read(out_dir, rank)
            if result is None:
                if not failed_early:
                    errors.append(f"rank {rank}: exited with code {proc.exitcode} and no result")
            elif result["ok"]:
                results.append(result["value"])
            else:
                errors.append(f"rank {rank}:\n{result['error']}")
                port_taken |= any(mark in result["error"] for mark in _PORT_TAKEN)
        if errors:
            kind = _PortTaken if port_taken else DistributedRunError
            raise kind(f"{target} failed\n" + "\n".join(errors))
        return results


def _read(out_dir: str, rank: int, ok: Optional[bool] = None):
    """The rank's result if written (and, with ``ok`` given, only if its status matches)."""
    path = os.path.join(out_dir, f"rank{rank}.pkl")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as handle:
            result = pickle.load(handle)
    except (EOFError, pickle.UnpicklingError):  # still being written
        return None
    if ok is not None and result["ok"] != ok:
        return None
    return result
