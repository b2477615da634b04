"""VWNEmbedding: wide table and factorized up-projection (shapes, init scales, validation)."""

import pytest
import torch

from nemo_vwn import VWNConfigError
from nemo_vwn.embedding import VWNEmbedding
from nemo_vwn.testing.models import VOCAB, vwn_config


def build(**overrides):
    config = vwn_config(n=8, m=2, init_method_std=0.02, **overrides)  # r = 4
    torch.manual_seed(0)
    embedding = VWNEmbedding(config, vocab_size=VOCAB, max_sequence_length=16,
                             position_embedding_type="none")
    return config, embedding.eval()  # no embedding dropout


def wide_std(embedding, config):
    ids = torch.arange(VOCAB).unsqueeze(0)  # [1, V]: every token once
    wide = embedding(ids, position_ids=None)  # [V, 1, D']
    assert wide.shape == (VOCAB, 1, config.virtual_hidden_size)
    return wide.std().item()


def test_wide_table_keeps_init_method_std(megatron_cpu):
    config, embedding = build()
    assert embedding.word_embeddings.weight.shape[1] == config.virtual_hidden_size
    assert not hasattr(embedding, "up_proj_weight")
    assert wide_std(embedding, config) == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("up_init", ["normal", "scaled"])
def test_factorized_up_projection_init_scales(megatron_cpu, up_init):
    config, embedding = build(vwn_embedding="factorized", vwn_embedding_up_init=up_init)
    D = config.hidden_size
    assert embedding.word_embeddings.weight.shape[1] == D
    assert embedding.up_proj_weight.shape == (config.virtual_hidden_size, D)
    up_std = embedding.up_proj_weight.std().item()
    expected_up = 0.02 if up_init == "normal" else D ** -0.5
    assert up_std == pytest.approx(expected_up, rel=0.1)
    # A wide element is a sum of D products table x up: std = 0.02 * up_std * sqrt(D).
    expected_wide = 0.02 * expected_up * D ** 0.5
    assert wide_std(embedding, config) == pytest.approx(expected_wide, rel=0.15)
    # Independent reference: the table row times the up-projection.
    ids = torch.tensor([[3, 5, 7]])
    ref = embedding.word_embeddings.weight[ids[0]] @ embedding.up_proj_weight.t()  # [3, D']
    torch.testing.assert_close(embedding(ids, position_ids=None)[:, 0], ref)


def test_factorized_gelu_is_the_scaled_gelu_of_the_up_projection(megatron_cpu):
    config, embedding = build(vwn_embedding="factorized", vwn_embedding_up_act="gelu")
    _, linear = build(vwn_embedding="factorized")  # same seed: the same table and up-projection
    torch.testing.assert_close(embedding.up_proj_weight, linear.up_proj_weight, rtol=0, atol=0)
    ids = torch.tensor([[3, 5, 7]])
    pre = embedding.word_embeddings.weight[ids[0]] @ embedding.up_proj_weight.t()  # [3, D']
    sigma = 0.02  # init_method_std
    ref = sigma * 0.5 * pre / sigma * (1 + torch.erf(pre / sigma / 2 ** 0.5))  # exact GELU
    out = embedding(ids, position_ids=None)[:, 0]
    torch.testing.assert_close(out, ref)
    # at the table's scale the activation is far from linear (plain GELU there is ~ x / 2)
    assert (out - 0.5 * pre).abs().max() > 0.2 * pre.abs().max()
    assert wide_std(embedding, config) == pytest.approx(0.6 * 0.02, rel=0.25)  # std GELU(N(0,1))
    with pytest.raises(VWNConfigError, match=r"vwn_embedding_up_act='relu' is not one of "
                                             r"\['none', 'gelu'\]"):
        vwn_config(n=8, m=2, vwn_embedding="factorized", vwn_embedding_up_act="relu")
    assert vwn_config(n=8, m=2, vwn_embedding="factorized").vwn_embedding_up_act == "none"


def test_up_init_choices_and_default(megatron_cpu):
    assert vwn_config(n=8, m=2, vwn_embedding="factorized").vwn_embedding_up_init == "scaled"
    with pytest.raises(VWNConfigError, match=r"vwn_embedding_up_init='xavier' is not one of "
                                             r"\['scaled', 'normal'\]"):
        vwn_config(n=8, m=2, vwn_embedding="factorized", vwn_embedding_up_init="xavier")
    # A wide table has no up-projection: the field is ignored (configs saved with either value
    # load).
    config, embedding = build(vwn_embedding_up_init="normal")
    assert not hasattr(embedding, "up_proj_weight")
