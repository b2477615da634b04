"""FLOP formulas (nemo_vwn.profiling) against torch's FlopCounterMode on the real modules."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("n,m,dynamic", [(4, 2, True), (16, 8, True), (3, 2, True), (8, 4, False)])
def test_ghc_flops_match_counted_matmuls(megatron_cpu, n, m, dynamic):
    from nemo_vwn.ghc import GHC
    from nemo_vwn.profiling import ghc_flops_per_token
    from nemo_vwn.testing.models import vwn_config

    config = vwn_config(n=n, m=m, ghc_dynamic=dynamic, hidden_size=64,
                        vwn_collapse="linear" if n % m else "norm_linear")
    ghc = GHC(config, layer_number=1)
    s, b = 8, 3
    H = torch.randn(s, b, n * 64 // m)
    counted = counted_flops(lambda: ghc.forward(H, lambda x: x))
    parts = ghc_flops_per_token(64, n, m, dynamic)
    # the counter sees the matmuls; the RMSNorm (4rD) is elementwise
    assert counted == pytest.approx((parts["total"] - parts["norm"]) * s * b, rel=1e-12)
    assert parts["norm"] == (4 * n / m * 64 if dynamic else 0)


@pytest.mark.parametrize("gated,groups", [(False, None), (True, 2)])
def test_backbone_flops_match_counted_layer(megatron_cpu, gated, groups):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from nemo_vwn.profiling import backbone_flops_per_token
    from nemo_vwn.testing.models import causal_mask, stock_config

    config = stock_config(ffn_hidden_size=96, gated_linear_unit=gated, num_query_groups=groups,
                          add_bias_linear=False)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer = TransformerLayer(config, spec.submodules, layer_number=1)
    s, b = 16, 2
    x = torch.randn(s, b, 64)
    counted = counted_flops(lambda: layer(x, attention_mask=causal_mask(s)))
    assert counted == pytest.approx(backbone_flops_per_token(config, s) * s * b, rel=1e-12)
