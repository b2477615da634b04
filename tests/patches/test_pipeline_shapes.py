"""The pipeline-shape patch: schedules see the wide state's width for VWN models only."""

import torch

from nemo_vwn.patches import pipeline_shapes
from nemo_vwn.patches.pipeline_shapes import StageBoundaryConfigView
from nemo_vwn.testing.models import build_vwn_gpt, stock_config, vwn_config


def test_view_reports_the_virtual_width_and_forwards_everything_else():
    config = vwn_config(n=6, m=2)
    view = StageBoundaryConfigView(config)
    assert view.hidden_size == 192 and config.hidden_size == 64
    assert view.num_layers == config.num_layers
    view.grad_sync_func = print  # writes reach the real config (the schedules set these)
    assert config.grad_sync_func is print


def test_schedules_size_p2p_buffers_from_the_wide_state(megatron_cpu):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import schedules

    pipeline_shapes.apply()

    class Holder(torch.nn.Module):  # get_model_config reads model.config
        def __init__(self, config):
            super().__init__()
            self.config = config

    tp, cp = (parallel_state.get_tensor_model_parallel_group(),
              parallel_state.get_context_parallel_group())
    for config, width in ((vwn_config(n=6, m=2), 192), (stock_config(), 64)):
        seen = schedules.get_model_config(Holder(config))
        shapes = schedules.get_tensor_shapes(seq_length=16, micro_batch_size=2,
                                             decoder_seq_length=None, config=seen,
                                             tp_group=tp, cp_group=cp)
        assert shapes == [(16, 2, width)]


def test_building_a_pipeline_parallel_vwn_model_applies_the_patch(megatron_cpu, monkeypatch):
    """A Megatron-core user who builds a PP > 1 VWNGPTModel without nemo_vwn.runtime set-up gets
    stage boundaries sized for the wide state: the model applies the patch (through the runtime)."""
    from megatron.core.pipeline_parallel import schedules

    pipeline_shapes.apply()
    unpatched = pipeline_shapes._state["original"]
    monkeypatch.setattr(schedules, "get_model_config", unpatched)  # restored after the test
    monkeypatch.setitem(pipeline_shapes._state, "applied", False)
    monkeypatch.setitem(pipeline_shapes._state, "original", unpatched)
    config = vwn_config(n=4, m=2)
    config.pipeline_model_parallel_size = 2  # a PP=2 config (process groups are not needed)
    try:
        build_vwn_gpt(config)
    except Exception:  # noqa: BLE001 - building may fail later without PP groups; not the point
        pass
    assert pipeline_shapes.is_applied()
    assert schedules.get_model_config is not unpatched
