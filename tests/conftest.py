"""Shared fixtures: megatron-core on CPU (gloo, world size 1) inside the pytest process."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# tests/kernels runs the Triton GHC kernels on CPU through Triton's interpreter. triton 3.7 reads
# TRITON_INTERPRET when it is first imported (and megatron-core imports it), so choose the mode
# here, before any test module imports megatron: interpreter on machines without CUDA. Child
# processes (run_distributed) inherit it. See nemo_vwn/kernels/runtime.py.
if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


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
