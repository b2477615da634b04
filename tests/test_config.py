"""VWNConfig: derived sizes, and every invalid combination fails early with a clear message."""

from unittest import mock

import pytest

from nemo_vwn import VWNConfig, VWNConfigError
from nemo_vwn.testing.cpu import CPU_SAFE_SETTINGS

BASE = dict(CPU_SAFE_SETTINGS, num_layers=2, hidden_size=64, num_attention_heads=4)


def cfg(**kw):
    return VWNConfig(**{**BASE, **kw})


@pytest.mark.parametrize(
    "m,n,r,d,wide",
    [(2, 3, 1.5, 32, 96), (8, 16, 2.0, 8, 128), (8, 32, 4.0, 8, 256), (8, 64, 8.0, 8, 512),
     (4, 4, 1.0, 16, 64)],
)
def test_derived_sizes(m, n, r, d, wide):
    c = cfg(virtual_width_m=m, virtual_width_n=n, vwn_collapse="linear" if n % m else "norm_linear")
    assert c.virtual_width_factor == r
    assert c.ghc_segment_size == d
    assert c.virtual_hidden_size == wide
    assert c.ghc_dynamic is True and c.vwn_embedding == "wide" and c.vwn_collapse_init == "identity"


INVALID = [
    (dict(virtual_width_m=2), r"virtual_width_n must be set"),
    (dict(virtual_width_n=2), r"virtual_width_m must be set"),
    (dict(virtual_width_m=0, virtual_width_n=2), r"virtual_width_m must be a positive integer"),
    (dict(virtual_width_m=2, virtual_width_n=2.5), r"virtual_width_n must be a positive integer"),
    (dict(virtual_width_m=3, virtual_width_n=6),
     r"virtual_width_m=3 must divide hidden_size=64.*\[1, 2, 4, 8, 16, 32, 64\]"),
    (dict(virtual_width_m=4, virtual_width_n=2),
     r"virtual_width_n=2 must be >= virtual_width_m=4.*r = n/m = 0.5"),
    (dict(virtual_width_m=2, virtual_width_n=4, vwn_embedding="tiled"),
     r"vwn_embedding='tiled' is not one of \['wide', 'factorized'\]"),
    (dict(virtual_width_m=2, virtual_width_n=4, vwn_collapse="mean"),
     r"vwn_collapse='mean' is not one of \['norm_linear', 'linear', 'none'\]"),
    (dict(virtual_width_m=2, virtual_width_n=4, vwn_collapse="none"),
     r"vwn_collapse='none' is valid only when virtual_width_n == virtual_width_m"),
    (dict(virtual_width_m=2, virtual_width_n=3),
     r"vwn_collapse='norm_linear'.*integer.*Use vwn_collapse='linear'"),
    (dict(virtual_width_m=2, virtual_width_n=4, vwn_collapse_init="zeros"),
     r"vwn_collapse_init='zeros' is not one of \['normal', 'identity'\]"),
    (dict(virtual_width_m=2, virtual_width_n=4, ghc_impl="cuda"),
     r"ghc_impl='cuda' is not one of"),
    (dict(virtual_width_m=2, virtual_width_n=4, ghc_write_init="slot0"),
     r"ghc_write_init='slot0' is not one of \['tile', 'backbone'\]"),
    (dict(virtual_width_m=2, virtual_width_n=4, ghc_dynamic="yes"),
     r"ghc_dynamic must be True or False"),
    (dict(virtual_width_m=2, virtual_width_n=4, cuda_graph_impl="local"), r"cuda_graph_impl"),
]


@pytest.mark.parametrize("kwargs,message", INVALID)
def test_invalid_combinations_raise_before_megatron_validation(kwargs, message):
    # VWN checks run first in __post_init__: TransformerConfig's own checks never see bad VWN
    # fields.
    with mock.patch(
        "megatron.core.transformer.transformer_config.TransformerConfig.__post_init__",
        side_effect=AssertionError("megatron validation reached"),
    ):
        with pytest.raises(VWNConfigError, match=message):
            cfg(**kwargs)


def test_error_is_a_value_error():
    with pytest.raises(ValueError):
        cfg(virtual_width_m=4, virtual_width_n=2)


def test_tied_wide_embedding_rejected_before_any_allocation(megatron_cpu):
    from megatron.core.models.gpt.gpt_model import GPTModel

    import nemo_vwn.model  # noqa: F401  (imported before the mock: it reads GPTModel's signature)
    from nemo_vwn.testing.models import build_vwn_gpt

    config = cfg(virtual_width_m=2, virtual_width_n=4)
    with mock.patch.object(GPTModel, "__init__", side_effect=AssertionError("allocated")):
        with pytest.raises(VWNConfigError,
                           match="share_embeddings_and_output_weights=True is impossible"):
            build_vwn_gpt(config, share_embeddings_and_output_weights=True)


def test_model_rejects_a_stock_config_and_a_stock_spec(megatron_cpu):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_vwn import VWNGPTModel

    with pytest.raises(VWNConfigError, match="has no VWN fields"):
        VWNGPTModel(TransformerConfig(**BASE), get_gpt_layer_local_spec(), vocab_size=8,
                    max_sequence_length=8)
    with pytest.raises(TypeError, match="needs VWN layer specs|VWN layer ModuleSpec"):
        VWNGPTModel(cfg(virtual_width_m=2, virtual_width_n=4), get_gpt_layer_local_spec(),
                    vocab_size=8, max_sequence_length=8)
