"""VWN layer and block specs are upstream specs with the VWN slots swapped in."""

import pytest
import torch
from megatron.core.transformer.moe.moe_layer import MoELayer

from nemo_vwn import get_vwn_decoder_block_spec, get_vwn_layer_spec
from nemo_vwn.bias_dropout import get_bias_dropout_branch
from nemo_vwn.collapse import VWNOutputNorm
from nemo_vwn.ghc import GHC
from nemo_vwn.layer import VWNTransformerLayer
from nemo_vwn.layer_specs import HAVE_TE, to_vwn_layer_spec
from nemo_vwn.norms import SequenceParallelTorchNorm
from nemo_vwn.testing.models import vwn_config


def _is_moe(mlp_builder) -> bool:
    # megatron 0.19 specs hold MLP builders as functools.partial(MoELayer | MLP.as_mlp_submodule)
    return getattr(mlp_builder, "func", getattr(mlp_builder, "module", None)) is MoELayer


@pytest.mark.parametrize("num_experts", [None, 4])
def test_local_layer_spec(num_experts):
    spec = get_vwn_layer_spec(num_experts=num_experts, use_transformer_engine=False)
    sub = spec.submodules
    assert spec.module is VWNTransformerLayer
    assert sub.self_attention_ghc.module is GHC and sub.mlp_ghc.module is GHC
    assert sub.self_attn_bda is get_bias_dropout_branch and sub.mlp_bda is get_bias_dropout_branch
    assert sub.input_layernorm is SequenceParallelTorchNorm
    assert sub.pre_mlp_layernorm is SequenceParallelTorchNorm
    assert _is_moe(sub.mlp) == (num_experts is not None)
    assert to_vwn_layer_spec(spec) is spec  # idempotent


def test_block_spec_follows_moe_layer_freq_and_holds_the_collapse(megatron_cpu):
    config = vwn_config(n=4, m=2, moe=True, num_layers=4, moe_layer_freq=[1, 0, 0, 1])
    block = get_vwn_decoder_block_spec(config, use_transformer_engine=False)
    kinds = [_is_moe(spec.submodules.mlp) for spec in block.layer_specs]
    assert kinds == [True, False, False, True]
    assert all(spec.module is VWNTransformerLayer for spec in block.layer_specs)
    assert block.layer_norm is VWNOutputNorm


@pytest.mark.skipif(HAVE_TE, reason="checks the error raised when Transformer Engine is missing")
def test_asking_for_te_without_te_is_a_clear_error():
    with pytest.raises(ImportError, match="Transformer Engine is not importable"):
        get_vwn_layer_spec(use_transformer_engine=True)


def test_branch_bias_dropout_drops_the_residual():
    x, bias, residual = torch.randn(4, 2, 8), torch.randn(8), torch.randn(4, 2, 8)
    out = get_bias_dropout_branch(training=False)((x, bias), residual, 0.5)
    assert torch.equal(out, x + bias)
    out = get_bias_dropout_branch(training=True)((x, None), residual, 0.0)
    assert torch.equal(out, x)


def test_vwn_layer_maps_wide_to_wide(megatron_cpu):
    from megatron.core.transformer.spec_utils import build_module

    config = vwn_config(n=3, m=2, vwn_collapse="linear")
    layer = build_module(get_vwn_layer_spec(use_transformer_engine=False), config=config,
                         layer_number=1)
    h = torch.randn(8, 2, config.virtual_hidden_size)
    out, context = layer(hidden_states=h, attention_mask=None)
    assert out.shape == h.shape and context is None
    assert not torch.equal(out, h)
    names = {n for n, _ in layer.named_parameters()}
    assert {"self_attention_ghc.static_alpha", "mlp_ghc.dynamic_beta_proj"} <= names
