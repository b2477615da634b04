"""Block-by-block parity of the single-file HF model (nemo_vwn/hf/modeling_vwn.py) with the
Megatron-side modules it mirrors: the same parameters loaded into both, the same input, equal
outputs in fp32. Megatron works sequence-first ([s, b, ...]), HF batch-first ([b, s, ...]).

Covered: GHC read/write (static and dynamic, r = 2 and r = 1.5), the collapse (norm_linear and
linear), the MTP depth's norms + block-wise mixer, and the choice lists of both configs.
"""

import pytest
import torch

from nemo_vwn.hf import configuration_vwn, modeling_vwn
from nemo_vwn.hf.configuration_vwn import VWNHFConfig
from nemo_vwn.testing.models import build_vwn_gpt, vwn_config

EPS = 1e-5
S, B = 5, 3


def hf_config(n, m, **overrides):
    fields = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  num_hidden_layers=1, vocab_size=128, virtual_width_n=n, virtual_width_m=m,
                  norm_epsilon=EPS, normalization="RMSNorm")
    fields.update(overrides)
    return VWNHFConfig(**fields)


def randomise(module, seed):
    """Every floating parameter of ``module`` drawn around its init (so the dynamic parts and
    the gains are far from identity / zero); returns {name: tensor}."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def load(module, values: dict) -> None:
    """Copy ``values`` into the parameters of the same names (all of them, same shapes)."""
    params = dict(module.named_parameters())
    assert sorted(params) == sorted(values), (sorted(params), sorted(values))
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def to_hf(t):
    return t.transpose(0, 1)  # [s, b, ...] <-> [b, s, ...]


def assert_equal(megatron_out, hf_out):
    torch.testing.assert_close(to_hf(megatron_out), hf_out, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- GHC
@pytest.mark.parametrize("n,m", [(4, 2), (3, 2)])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_ghc_read_and_write_match(megatron_cpu, n, m, dynamic):
    from nemo_vwn.ghc import GHC

    megatron = GHC(vwn_config(n=n, m=m, ghc_dynamic=dynamic, vwn_collapse="linear",
                              layernorm_epsilon=EPS))
    hf = modeling_vwn.VWNGHC(hf_config(n, m, ghc_dynamic=dynamic, vwn_collapse="linear"))
    load(hf, randomise(megatron, seed=n + 10 * dynamic))
    gen = torch.Generator().manual_seed(0)
    d = 64 // m
    h = torch.randn(S, B, n * d, generator=gen)  # the wide state [s, b, D']
    z = torch.randn(S, B, 64, generator=gen)  # a branch output [s, b, D]
    with torch.no_grad():
        x_mg, state_mg = megatron.read(h)
        x_hf, state_hf = hf.read(to_hf(h))
        assert_equal(x_mg, x_hf)
        assert_equal(megatron.write(z, state_mg), hf.write(to_hf(z), state_hf))
    # the comparison sees the dynamic part: without it the read differs
    if dynamic:
        with torch.no_grad():
            hf.dynamic_alpha_proj.zero_()
            assert not torch.allclose(to_hf(x_mg), hf.read(to_hf(h))[0], atol=1e-3)


def test_ghc_static_init_matches():
    from nemo_vwn import ghc

    for n, m in [(2, 2), (3, 2), (8, 4)]:
        assert torch.equal(ghc.static_alpha_init(n, m), modeling_vwn.static_alpha_init(n, m))
        assert torch.equal(ghc.static_beta_init(n, m), modeling_vwn.static_beta_init(n, m))


# ---------------------------------------------------------------------------------- collapse
@pytest.mark.parametrize("collapse,n,m", [("norm_linear", 4, 2), ("linear", 3, 2)])
def test_collapse_matches(megatron_cpu, collapse, n, m):
    from nemo_vwn.collapse import VWNCollapse

    megatron = VWNCollapse(vwn_config(n=n, m=m, vwn_collapse=collapse, layernorm_epsilon=EPS))
    hf = modeling_vwn.VWNCollapse(hf_config(n, m, vwn_collapse=collapse))
    values = randomise(megatron, seed=3)
    load(hf, {name.replace("reduce_weight", "reduce.weight"): v for name, v in values.items()})
    h = torch.randn(S, B, n * 64 // m, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_equal(megatron(h), hf(to_hf(h)))


# ---------------------------------------------------------------------------------- MTP mixer
@pytest.mark.parametrize("n,m", [(4, 2), (3, 2)])
def test_mtp_norms_and_block_mixer_match(megatron_cpu, n, m):
    model = build_vwn_gpt(vwn_config(n=n, m=m, mtp_num_layers=1, vwn_collapse="linear",
                                     layernorm_epsilon=EPS))
    depth = model.mtp.layers[0]
    hf = modeling_vwn.VWNMTPLayer(hf_config(n, m, vwn_collapse="linear", mtp_num_layers=1))
    values = {}
    for name in ("hnorm", "enorm", "block_mixer"):
        values.update({f"{name}.{k}": v for k, v in randomise(getattr(depth, name), 5).items()})
    hf_params = dict(hf.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            hf_params[name].copy_(value)
    gen = torch.Generator().manual_seed(2)
    hidden, embedded = (torch.randn(S, B, n * 64 // m, generator=gen) for _ in range(2))
    with torch.no_grad():
        megatron_out = depth.block_mixer(depth.hnorm(hidden), depth.enorm(embedded))
        assert_equal(megatron_out, hf.mix(to_hf(hidden), to_hf(embedded)))


# ---------------------------------------------------------------------------------- configs
def test_choice_lists_agree():
    from nemo_vwn import config
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()  # Bridge (imported by the config mapping) needs its CPU placeholders
    from nemo_vwn.hf.config_mapping import activation_func

    assert configuration_vwn.EMBEDDINGS == config.EMBEDDING_CHOICES
    assert configuration_vwn.COLLAPSES == config.COLLAPSE_CHOICES
    assert configuration_vwn.EMBEDDING_UP_ACTS == config.EMBEDDING_UP_ACT_CHOICES
    # every activation the HF config accepts exists in the HF model and maps to megatron
    assert set(configuration_vwn.ACTIVATIONS) == set(modeling_vwn.ACTIVATIONS)
    for name in configuration_vwn.ACTIVATIONS:
        activation_func(name)
    # both configs reject the same bad value, naming the field and the allowed values
    with pytest.raises(ValueError, match="vwn_collapse.*norm_linear"):
        vwn_config(n=4, m=2, vwn_collapse="bogus")
    with pytest.raises(ValueError, match="vwn_collapse.*norm_linear"):
        hf_config(4, 2, vwn_collapse="bogus")
