"""nemo_vwn.distributed.run_distributed: ranks that lose their rendezvous port still meet.

The port the launcher picks is free when picked, not when rank 0's TCPStore binds it (CI failed
once with EADDRINUSE). The tests hold the very port the launcher is given, so the race is lost for
certain, and check that the launch is retried on a new port -- and only for that failure.
"""

from __future__ import annotations

import socket

import pytest

from nemo_vwn import distributed
from nemo_vwn.distributed import DistributedRunError, run_distributed
from nemo_vwn.runtime import free_port
from tests.workers import target
from tests.workers.rendezvous import fail_plainly, sum_of_ranks


@pytest.fixture
def held_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def _picks(monkeypatch, ports):
    """Make the launcher pick ``ports`` in turn (then free ones); returns the list of picks."""
    queue, picked = list(ports), []

    def pick():
        picked.append(queue.pop(0) if queue else free_port())
        return picked[-1]

    monkeypatch.setattr(distributed, "free_port", pick)
    return picked


def test_a_taken_port_is_retried_on_a_new_one(monkeypatch, held_port):
    picked = _picks(monkeypatch, [held_port])
    results = run_distributed(target(sum_of_ranks), world_size=2, timeout=300)
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert len(picked) == 2 and picked[0] == held_port
    assert {r["port"] for r in results} == {picked[1]}


def test_a_port_taken_every_time_is_a_clear_error(monkeypatch, held_port):
    picked = _picks(monkeypatch, [held_port] * distributed.PORT_ATTEMPTS)
    with pytest.raises(DistributedRunError, match="port was taken 3 times") as info:
        run_distributed(target(sum_of_ranks), world_size=2, timeout=300)
    assert "EADDRINUSE" in str(info.value) or "address already in use" in str(info.value)
    assert picked == [held_port] * 3


def test_other_failures_are_not_retried(monkeypatch):
    picked = _picks(monkeypatch, [])
    with pytest.raises(DistributedRunError, match="not a port problem"):
        run_distributed(target(fail_plainly), world_size=2, timeout=300)
    assert len(picked) == 1
