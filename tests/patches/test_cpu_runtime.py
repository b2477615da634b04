"""The CPU runtime shim: CUDA placement maps to the CPU; the emulated CUDA RNG is its own stream."""

import pytest
import torch

from nemo_vwn.patches import cpu_runtime


@pytest.fixture(autouse=True)
def shim(megatron_cpu):
    assert cpu_runtime.is_applied()


def test_cuda_placement_lands_on_cpu():
    assert torch.cuda.current_device() == torch.device("cpu")
    for device in ("cuda", "cuda:0", 0, torch.device("cuda")):
        assert torch.zeros(2, device=device).device.type == "cpu"
    t = torch.ones(3)
    assert t.cuda() is t
    assert t.to("cuda").device.type == "cpu"
    assert t.to("cuda", torch.float64).dtype == torch.float64
    assert t.pin_memory() is t
    assert t.type() == "torch.cuda.FloatTensor"  # what megatron's optimizers assert
    assert t.type(torch.float64).dtype == torch.float64  # the converting form is untouched
    with torch.cuda.stream(torch.cuda.Stream()):
        torch.cuda.synchronize()
    torch.cuda.Event().record()


def test_dropout_draws_from_the_emulated_cuda_rng_not_the_cpu_rng():
    x = torch.ones(1000)
    torch.cuda.manual_seed(5)
    cpu_state = torch.get_rng_state()
    mask1 = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(torch.get_rng_state(), cpu_state)  # the CPU generator did not move
    torch.randn(10)  # CPU-side draws (e.g. a data sampler) in between ...
    torch.cuda.manual_seed(5)
    mask2 = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(mask1, mask2)  # ... do not disturb the CUDA stream


def test_rng_states_save_and_restore_independently():
    """What makes resume bit-exact: restoring both saved states replays dropout exactly."""
    x = torch.ones(1000)
    torch.manual_seed(1)
    torch.cuda.manual_seed(2)
    saved = (torch.get_rng_state(), torch.cuda.get_rng_state())
    run1 = [torch.nn.functional.dropout(x, 0.3) for _ in range(3)]
    torch.randint(0, 10, (5,))  # an uninterrupted run draws on the CPU at other moments
    torch.set_rng_state(saved[0])
    torch.cuda.set_rng_state(saved[1])
    torch.randint(0, 10, (7,))  # e.g. a DataLoader base seed drawn on resume
    run2 = [torch.nn.functional.dropout(x, 0.3) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(run1, run2))


def test_megatron_rng_tracker_forks_separate_streams():
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(11)
    x = torch.ones(1000)
    default = torch.nn.functional.dropout(x, 0.5)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        forked = torch.nn.functional.dropout(x, 0.5)
    tensor_parallel.model_parallel_cuda_manual_seed(11)
    assert torch.equal(torch.nn.functional.dropout(x, 0.5), default)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.nn.functional.dropout(x, 0.5), forked)
    assert not torch.equal(default, forked)


def test_refuses_a_gpu_machine():
    with pytest.raises(RuntimeError, match="must not be applied where a CUDA device is usable"):
        cpu_runtime.check_no_cuda(True)
    cpu_runtime.check_no_cuda(False)


def test_patch_registry_describes_every_patch():
    from nemo_vwn.patches import describe

    rows = describe()
    assert {name for name, _, _ in rows} == {"cpu_runtime", "pipeline_shapes", "bridge_imports",
                                             "bridge_cpu", "bridge_provider"}
    assert all(reason and versions for _, reason, versions in rows)
    # `nemo-vwn patches` reads the same table from the sources without importing the patches
    from nemo_vwn.patches import read_table

    assert read_table() == rows
