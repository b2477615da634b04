"""The CPU harness (nemo_vwn.testing.cpu): re-initialising a layout must not leak process groups."""

import os

import torch.distributed as dist


def _threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_set_parallel_layout_releases_the_previous_groups(megatron_cpu):
    from megatron.core import parallel_state

    from nemo_vwn.testing.cpu import destroy_parallel_layout, set_parallel_layout

    groups = len(dist.distributed_c10d._world.pg_map)
    threads = _threads()
    assert groups > 1  # megatron's groups exist besides the world group
    for _ in range(5):
        set_parallel_layout(seed=1)
    assert len(dist.distributed_c10d._world.pg_map) == groups
    assert _threads() <= threads
    assert parallel_state.get_tensor_model_parallel_world_size() == 1

    destroy_parallel_layout()
    assert not parallel_state.model_parallel_is_initialized()
    assert list(dist.distributed_c10d._world.pg_map) == [dist.GroupMember.WORLD]
    set_parallel_layout(seed=1234)  # leave the session's layout as the fixture expects
