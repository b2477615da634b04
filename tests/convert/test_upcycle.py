"""Upcycling keeps the baseline's function at step 0 (docs/method.md §2-3)."""

import pytest
import torch

from nemo_vwn.convert.upcycle import UpcycleError, upcycle_weights
from nemo_vwn.testing.models import (
    build_stock_gpt,
    build_vwn_gpt,
    causal_mask,
    make_batch,
    stock_config,
    vwn_config,
)


def logits(model):
    input_ids, position_ids, _ = make_batch(batch_size=2)
    with torch.no_grad():
        return model.eval()(input_ids, position_ids, causal_mask())


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("embedding,extra", [("wide", "random"), ("wide", "copy"),
                                             ("wide", "zero"), ("factorized", "random")])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_upcycled_model_computes_the_baseline_function(megatron_cpu, moe, embedding, extra, tied):
    torch.manual_seed(0)
    baseline = build_stock_gpt(stock_config(moe=moe), share_embeddings_and_output_weights=tied)
    with torch.no_grad():  # a "trained" baseline: weights away from their init
        for p in baseline.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vwn = build_vwn_gpt(vwn_config(n=6, m=2, moe=moe, vwn_embedding=embedding,
                                   vwn_collapse="linear", vwn_collapse_init="identity"))
    report = upcycle_weights(baseline, vwn, extra_slots=extra,
                             generator=torch.Generator().manual_seed(1))
    assert report["copied"] > 0 and any("_ghc." in n for n in report["vwn_only"])
    assert torch.equal(logits(vwn), logits(baseline))  # bit-exact with the linear collapse
    table = vwn.embedding.word_embeddings.weight
    if embedding == "wide" and extra == "zero":
        assert torch.all(table[:, 64:] == 0)
    if embedding == "wide" and extra == "copy":
        assert torch.equal(table[:, 64:128], table[:, :64])


def test_norm_linear_collapse_matches_within_rmsnorm_epsilon(megatron_cpu):
    """GroupNorm then RMSNorm equals RMSNorm up to a factor 1 + O(eps / mean(h^2)): tiny at the
    residual magnitudes of a trained model (~1), so the baseline's table is scaled to that."""
    baseline = build_stock_gpt(stock_config())
    with torch.no_grad():
        baseline.embedding.word_embeddings.weight.mul_(50.0)  # |h| ~ 1 instead of ~0.02
    vwn = build_vwn_gpt(vwn_config(n=4, m=2, vwn_collapse="norm_linear",
                                   vwn_collapse_init="identity"))
    upcycle_weights(baseline, vwn)
    torch.testing.assert_close(logits(vwn), logits(baseline), rtol=1e-4, atol=1e-4)


def test_dynamic_ghc_after_upcycling_still_learns(megatron_cpu):
    baseline = build_stock_gpt(stock_config())
    vwn = build_vwn_gpt(vwn_config(n=4, m=2, vwn_collapse="linear", vwn_collapse_init="identity"))
    upcycle_weights(baseline, vwn)
    input_ids, position_ids, labels = make_batch()
    vwn.train()(input_ids, position_ids, causal_mask(), labels=labels).mean().backward()
    ghc = vwn.decoder.layers[0].self_attention_ghc
    assert ghc.dynamic_alpha_proj.grad.abs().sum() > 0  # the new parameters get gradients


def test_upcycle_errors(megatron_cpu):
    baseline = build_stock_gpt(stock_config())
    with pytest.raises(UpcycleError, match="vwn_collapse_init='identity'"):
        upcycle_weights(baseline, build_vwn_gpt(vwn_config(n=4, m=2, vwn_collapse_init="normal")))
    with pytest.raises(UpcycleError, match="vwn_embedding_up_act='none'"):
        upcycle_weights(baseline, build_vwn_gpt(vwn_config(
            n=4, m=2, vwn_collapse_init="identity", vwn_embedding="factorized",
            vwn_embedding_up_act="gelu")))
    with pytest.raises(UpcycleError, match="extra_slots='noise' is not one of"):
        upcycle_weights(baseline, build_vwn_gpt(vwn_config(
            n=4, m=2, vwn_collapse_init="identity")), extra_slots="noise")
    bigger = build_stock_gpt(stock_config(ffn_hidden_size=512))
    with pytest.raises(UpcycleError, match="backbones differ"):
        upcycle_weights(bigger, build_vwn_gpt(vwn_config(n=4, m=2, vwn_collapse_init="identity")))
