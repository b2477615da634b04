"""VWNHybridModel (megatron's HybridModel layer patterns): identity, init property, wrappers."""


import pytest
import torch

from nemo_vwn import VWNConfigError
from nemo_vwn.testing.models import (
    build_stock_hybrid,
    build_vwn_hybrid,
    causal_mask,
    make_batch,
    stock_config,
    vwn_config,
)

GHC_SUFFIXES = {"static_alpha", "static_beta", "norm_weight", "dynamic_alpha_proj",
                "dynamic_beta_proj", "dynamic_alpha_scale", "dynamic_beta_scale"}


@pytest.mark.parametrize("pattern,moe", [("*-*-", False), ("*E*E", True), ("*-E*", True)])
def test_hybrid_anchor_n_equals_m_is_the_stock_hybrid_model(megatron_cpu, pattern, moe):
    stock = build_stock_hybrid(stock_config(moe=moe, num_layers=4, hidden_dropout=0.1), pattern)
    vwn = build_vwn_hybrid(vwn_config(n=2, m=2, moe=moe, num_layers=4, hidden_dropout=0.1,
                                      vwn_collapse="none"), pattern)
    missing, unexpected = vwn.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == [] and {k.rsplit(".", 1)[-1] for k in missing} <= GHC_SUFFIXES
    # one GHC per hybrid layer (each layer is one sub-layer)
    ghc_modules = [n for n, m in vwn.named_modules() if type(m).__name__ == "GHC"]
    assert len(ghc_modules) == len(pattern)
    input_ids, position_ids, labels = make_batch()
    for training in (False, True):
        stock.train(training)
        vwn.train(training)
        torch.manual_seed(3)
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(3)
        a = stock(input_ids, position_ids, causal_mask(), labels=labels)
        torch.manual_seed(3)
        tensor_parallel.model_parallel_cuda_manual_seed(3)
        b = vwn(input_ids, position_ids, causal_mask(), labels=labels)
        assert torch.equal(a, b), (pattern, training, (a - b).abs().max())


def test_hybrid_init_slots_evolve_like_the_stock_residual_stream(megatron_cpu):
    pattern = "*E*-"
    stock = build_stock_hybrid(stock_config(moe=True, num_layers=4), pattern)
    vwn = build_vwn_hybrid(vwn_config(n=6, m=2, moe=True, num_layers=4, vwn_collapse="norm_linear",
                                      vwn_collapse_init="identity"), pattern)
    state = stock.state_dict()
    table = vwn.embedding.word_embeddings.weight.detach().clone()
    table[:, :64] = state["embedding.word_embeddings.weight"]
    state["embedding.word_embeddings.weight"] = table
    vwn.load_state_dict(state, strict=False)
    seen = {"stock": [], "vwn": []}
    for tag, model in (("stock", stock), ("vwn", vwn)):
        for layer in model.decoder.layers:
            layer.register_forward_hook(
                lambda mod, args, out, tag=tag: seen[tag].append(out[0] if isinstance(out, tuple)
                                                                 else out))
    input_ids, position_ids, labels = make_batch()
    stock(input_ids, position_ids, causal_mask(), labels=labels)
    vwn(input_ids, position_ids, causal_mask(), labels=labels)
    for a, b in zip(seen["stock"], seen["vwn"]):
        assert b.shape[-1] == 192 and torch.equal(b[..., :64], a)


def test_mamba_wrapper_with_a_stand_in_mixer(megatron_cpu):
    """VWNMambaLayer (GHC around the mixer) with a CPU stand-in mixer: n == m reproduces the stock
    MambaLayer, n > m reads slots 0..m-1 and writes the branch into every slot j = i (mod m)."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec, build_module

    from nemo_vwn.layer_specs import to_vwn_layer_spec
    from nemo_vwn.norms import SequenceParallelTorchNorm

    class StandInMixer(torch.nn.Module):  # the mamba-ssm mixer needs CUDA kernels
        def __init__(self, config, d_model, **kwargs):
            super().__init__()
            self.proj = torch.nn.Linear(d_model, d_model)

        def forward(self, x, **kwargs):
            return torch.tanh(self.proj(x)), None

    spec = ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
        norm=SequenceParallelTorchNorm, mixer=StandInMixer, mamba_bda=get_bias_dropout_add))
    pgs = ProcessGroupCollection.use_mpu_process_groups()
    torch.manual_seed(0)
    stock = build_module(spec, config=stock_config(), layer_number=1, pg_collection=pgs)
    vwn_spec = to_vwn_layer_spec(spec)
    for n in (2, 4):
        vwn = build_module(vwn_spec, config=vwn_config(n=n, m=2, vwn_collapse="linear"),
                           layer_number=1, pg_collection=pgs)
        vwn.load_state_dict(stock.state_dict(), strict=False)
        h = torch.randn(8, 2, 32 * n)
        out = vwn(h)
        branch = stock(h[..., :64]) - h[..., :64]  # the stock layer adds the residual
        expected = h.view(8, 2, n, 32) + branch.view(8, 2, 2, 32).repeat(1, 1, n // 2, 1)
        torch.testing.assert_close(out, expected.view(8, 2, 32 * n), rtol=1e-5, atol=1e-6)


def test_hybrid_errors(megatron_cpu):
    with pytest.raises(VWNConfigError, match="MTP"):
        build_vwn_hybrid(vwn_config(n=4, m=2, num_layers=2), "*-/*-")
    with pytest.raises(VWNConfigError, match=r"symbols \['M'\] have no layer spec"):
        build_vwn_hybrid(vwn_config(n=4, m=2, num_layers=2), "M-")
    from nemo_vwn import VWNHybridModel
    from nemo_vwn.hybrid_specs import local_hybrid_stack_spec

    with pytest.raises(TypeError, match="VWN hybrid stack spec"):
        VWNHybridModel(vwn_config(n=4, m=2, num_layers=2), local_hybrid_stack_spec(),
                       vocab_size=128, max_sequence_length=16, hybrid_layer_pattern="*-")
