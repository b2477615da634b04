"""nemo_vwn.runtime: a 1-process launch cannot lose a race for its rendezvous port.

A port from ``free_port()`` is free when picked, not when TCPStore binds it: CI once failed with
EADDRINUSE in the README quick start. The script holds the very port ``free_port()`` will return
(the race lost, made certain), then starts the runtime both ways a plain ``python`` launch does:
``runtime.initialize()`` (the quick start) and ``ensure_process_env()`` (the CLI, before Bridge).
Each must come up, run a collective and megatron's groups, and shut down, with the port still held.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import os, socket, sys
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from nemo_vwn import runtime

held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
held.bind(("127.0.0.1", 0)); held.listen(1)
port = held.getsockname()[1]
runtime.free_port = lambda: port          # every port the runtime picks is already taken

mode = sys.argv[1]
if mode == "initialize":
    runtime.initialize()
    runtime.initialize()                  # again: re-lays the groups, keeps the process group
else:
    runtime.ensure_process_env()
    assert dist.is_initialized(), "ensure_process_env left no process group"
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1"
    runtime.prepare_runtime(bridge=False)
    assert runtime.init_process_group() is False   # already started: reused, as Bridge does
    runtime.set_parallel_layout()
t = torch.arange(4.0)
dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
assert torch.equal(t, torch.arange(4.0)), t
assert parallel_state.get_tensor_model_parallel_world_size() == 1
runtime.shutdown()
assert not dist.is_initialized()
runtime.initialize()                      # and once more after a shutdown
runtime.shutdown()
held.close()
print("RUNTIME-OK", mode)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                          text=True, timeout=600)


def test_single_process_start_needs_no_free_port():
    for mode in ("initialize", "ensure_process_env"):
        result = _run(mode)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert f"RUNTIME-OK {mode}" in result.stdout


def test_explicit_port_still_rendezvous():
    """A caller that names a port meets there (the multi-process launchers rely on it)."""
    script = r"""
import datetime
import torch.distributed as dist
from nemo_vwn import runtime
port = runtime.free_port()
runtime.init_process_group(rank=0, world_size=1, port=port)
client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=20))
client.set("probe", "1")                  # a store listens at the named port
assert client.get("probe") == b"1"
dist.destroy_process_group()
print("PORT-OK")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PORT-OK" in result.stdout
