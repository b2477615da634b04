"""VWN multi-token prediction against a reference written from docs/method.md §5."""

import math

import pytest
import torch

from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch, vwn_config
from nemo_vwn.testing.mtp_reference import mtp_reference_terms


def reference_losses(model, batch, mask):
    """Main per-token loss and the k MTP losses (each a mean over its valid positions)."""
    main, terms = mtp_reference_terms(model, batch, mask)
    return main, [(ce * valid).sum() / valid.sum() for ce, valid in terms]


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_mtp_losses_and_gradients_match_the_reference(megatron_cpu, k, moe):
    from megatron.core.transformer.multi_token_prediction import (
        MTPLossAutoScaler,
        MTPLossLoggingHelper,
    )

    scale = 0.3
    model = build_vwn_gpt(vwn_config(n=3, m=2, moe=moe, vwn_collapse="linear", mtp_num_layers=k,
                                     mtp_loss_scaling_factor=scale))
    assert len(model.mtp.layers) == k
    batch, mask = make_batch(batch_size=2), causal_mask()

    main_ref, mtp_ref = reference_losses(model, batch, mask)
    (main_ref.sum() + sum(scale / k * loss for loss in mtp_ref)).backward()
    ref_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0))
    MTPLossLoggingHelper.tracker.clear()  # its buffers are sized by the first k seen
    loss = model(*batch[:2], mask, labels=batch[2])
    assert loss.shape == batch[2].shape  # the next-token loss, per token
    torch.testing.assert_close(loss, main_ref, rtol=1e-5, atol=1e-5)
    logged = MTPLossLoggingHelper.tracker["loss_values"]  # one value per depth
    assert logged.shape == (k,)
    torch.testing.assert_close(logged, torch.stack(mtp_ref).detach(), rtol=1e-5, atol=1e-5)
    loss.sum().backward()
    for name, param in model.named_parameters():
        # Same math along another path: float32 sums over tokens (bias grads) round in another
        # order, so the absolute bound scales with the gradient's largest entry (a few ulp of it).
        scale = max(1.0, ref_grads[name].abs().max().item())
        torch.testing.assert_close(param.grad, ref_grads[name], rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m, name=name, scale=scale:
                                   f"{name} (scale {scale:.3g}): {m}")
    # the MTP parameters are trained by the MTP loss
    assert model.mtp.layers[0].block_mixer.weight.grad.abs().sum() > 0
    assert model.mtp.layers[0].mtp_model_layer.mlp_ghc.static_beta.grad.abs().sum() > 0


def test_mtp_structure(megatron_cpu):
    model = build_vwn_gpt(vwn_config(n=4, m=2, mtp_num_layers=1))
    names = {n for n, _ in model.named_parameters() if n.startswith("mtp.")}
    assert {"mtp.layers.0.hnorm.weight", "mtp.layers.0.enorm.weight",
            "mtp.layers.0.block_mixer.weight",
            "mtp.layers.0.mtp_model_layer.self_attention_ghc.static_alpha"} <= names
    d = model.config.ghc_segment_size
    assert model.mtp.layers[0].block_mixer.weight.shape == (d, 2 * d)  # cost as at r = 1
    assert model.mtp.layers[0].hnorm.weight.shape == (model.config.virtual_hidden_size,)
    # no separate collapse/head in MTP: the decoder's collapse + norm and the LM head are shared
    assert not any("final_layernorm" in n or "output_layer" in n for n in names)


def test_repeated_mtp_layer_is_shared(megatron_cpu):
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    MTPLossLoggingHelper.tracker.clear()
    model = build_vwn_gpt(vwn_config(n=4, m=2, mtp_num_layers=3, mtp_use_repeated_layer=True))
    assert len(model.mtp.layers) == 1
    loss = model(*make_batch()[:2], causal_mask(), labels=make_batch()[2])
    assert torch.isfinite(loss).all() and math.isfinite(loss.mean().item())


def test_inference_runs_without_mtp(megatron_cpu):
    model = build_vwn_gpt(vwn_config(n=4, m=2, mtp_num_layers=1)).eval()
    input_ids, position_ids, _ = make_batch()
    with torch.no_grad():
        logits = model(input_ids, position_ids, causal_mask())
    assert logits.shape == (2, 16, 128)
