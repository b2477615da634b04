"""Shared fixtures: megatron-core on CPU (gloo, world size 1) inside the pytest process."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope="session")
def megatron_cpu_session():
    from nemo_vwn.testing.cpu import init_cpu_distributed

    init_cpu_distributed(rank=0, world_size=1)
    yield


@pytest.fixture
def megatron_cpu(megatron_cpu_session):
    """TP=PP=EP=1 process groups and freshly seeded RNGs for each test."""
    from nemo_vwn.testing.cpu import set_parallel_layout

    set_parallel_layout(seed=1234)
    yield
