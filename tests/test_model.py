"""VWNGPTModel: the r=1 regression anchor, the init property, shapes, and a short training run."""

import pytest
import torch

from nemo_vwn.testing.models import (
    build_stock_gpt,
    build_vwn_gpt,
    causal_mask,
    make_batch,
    pattern_batch,
    stock_config,
    vwn_config,
)

GHC_SUFFIXES = {"static_alpha", "static_beta", "norm_weight", "dynamic_alpha_proj",
                "dynamic_beta_proj", "dynamic_alpha_scale", "dynamic_beta_scale"}


def run(model, batch, seed=7):
    from megatron.core import tensor_parallel

    input_ids, position_ids, labels = batch
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    logits = model(input_ids, position_ids, causal_mask(input_ids.shape[1]))
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    loss = model(input_ids, position_ids, causal_mask(input_ids.shape[1]), labels=labels)
    return logits, loss


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dghc"])
def test_regression_anchor_n_equals_m_is_the_stock_model(megatron_cpu, moe, dynamic):
    """n == m, GHC at init, no collapse: the stock GPTModel's weights give the same logits/loss."""
    dropout = dict(hidden_dropout=0.1, attention_dropout=0.1)  # same RNG use, same masks
    stock = build_stock_gpt(stock_config(moe=moe, **dropout))
    vwn = build_vwn_gpt(vwn_config(n=2, m=2, moe=moe, ghc_dynamic=dynamic, vwn_collapse="none",
                                   **dropout))
    missing, unexpected = vwn.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == []
    assert missing and {k.rsplit(".", 1)[-1] for k in missing} <= GHC_SUFFIXES  # only GHC keys
    batch = make_batch()
    for training in (False, True):
        stock.train(training)
        vwn.train(training)
        logits_s, loss_s = run(stock, batch)
        logits_v, loss_v = run(vwn, batch)
        assert torch.equal(logits_s, logits_v), (training, (logits_s - logits_v).abs().max())
        assert torch.equal(loss_s, loss_v)
    loss_s.sum().backward()
    loss_v.sum().backward()
    vwn_params = dict(vwn.named_parameters())
    for name, param in stock.named_parameters():
        # Same math; CPU reductions (bias grads sum over s*b tokens) may round in another order
        # with other buffer layouts, so the bound is relative to the gradient's scale: measured
        # 4e-6 on a bias grad of max 13.4 (3e-7 relative, ~2 ulp) on an AVX-512 machine.
        diff = (vwn_params[name].grad - param.grad).abs().max().item()
        scale = param.grad.abs().max().item()
        assert diff <= 1e-6 * max(scale, 1.0), (name, diff, scale)


@pytest.mark.parametrize("m,n", [(2, 3), (2, 4), (8, 16)])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_init_slots_evolve_like_a_standard_residual_stream(megatron_cpu, m, n, moe):
    """With n > m at init, slots 0..m-1 of every layer's wide output equal the stock residual
    stream bit for bit, whatever the extra slots hold; an identity collapse gives stock logits."""
    stock = build_stock_gpt(stock_config(moe=moe))
    vwn = build_vwn_gpt(vwn_config(n=n, m=m, moe=moe, vwn_collapse="linear",
                                   vwn_collapse_init="identity"))
    state = stock.state_dict()
    wide_table = vwn.embedding.word_embeddings.weight.detach().clone()  # random extra slots
    wide_table[:, :64] = state["embedding.word_embeddings.weight"]
    state["embedding.word_embeddings.weight"] = wide_table
    vwn.load_state_dict(state, strict=False)

    captured = {"stock": [], "vwn": []}
    for tag, model in (("stock", stock), ("vwn", vwn)):
        for layer in model.decoder.layers:
            layer.register_forward_hook(
                lambda mod, args, out, tag=tag: captured[tag].append(out[0]))
    logits_s, _ = run(stock, make_batch())
    logits_v, _ = run(vwn, make_batch())
    assert len(captured["vwn"]) == 2 * len(vwn.decoder.layers)
    for h_stock, h_wide in zip(captured["stock"], captured["vwn"]):
        assert h_wide.shape[-1] == vwn.config.virtual_hidden_size
        assert torch.equal(h_wide[..., :64], h_stock)
    # extra slots are not copies of slot 0..m-1 (every slot distinct)
    assert not torch.equal(captured["vwn"][-1][..., 64:128], captured["vwn"][-1][..., :64])
    assert torch.equal(logits_s, logits_v)


@pytest.mark.parametrize("embedding", ["wide", "factorized"])
@pytest.mark.parametrize("collapse", ["norm_linear", "linear"])
def test_shapes_and_parameters(megatron_cpu, embedding, collapse):
    config = vwn_config(n=4, m=2, vwn_embedding=embedding, vwn_collapse=collapse)
    model = build_vwn_gpt(config)
    params = dict(model.named_parameters())
    table = params["embedding.word_embeddings.weight"]
    assert table.shape == (128, 64 if embedding == "factorized" else 128)
    if embedding == "factorized":
        assert params["embedding.up_proj_weight"].shape == (128, 64)
    assert params["decoder.final_layernorm.collapse.reduce_weight"].shape == (64, 128)
    assert (("decoder.final_layernorm.collapse.group_norm_weight" in params)
            == (collapse == "norm_linear"))
    assert params["decoder.final_layernorm.weight"].shape == (64,)
    assert params["output_layer.weight"].shape == (128, 64)  # LM head at width D
    ghc = [n for n in params if ".self_attention_ghc." in n or ".mlp_ghc." in n]
    assert len(ghc) == 2 * 2 * 7  # layers x sub-layers x DGHC tensors
    logits, loss = run(model, make_batch())
    assert logits.shape == (2, 16, 128) and loss.shape == (2, 16) and torch.isfinite(loss).all()


def test_factorized_embedding_can_be_tied_to_the_lm_head(megatron_cpu):
    model = build_vwn_gpt(vwn_config(n=4, m=2, vwn_embedding="factorized"),
                          share_embeddings_and_output_weights=True)
    assert model.output_layer.weight is None
    assert model.shared_embedding_or_output_weight() is model.embedding.word_embeddings.weight
    _, loss = run(model, make_batch())
    loss.sum().backward()
    assert model.embedding.word_embeddings.weight.grad.abs().sum() > 0


def test_collapse_matches_its_equation(megatron_cpu):
    """VWNOutputNorm == RMSNorm(W_reduce · GroupNorm_r(H)) computed by hand."""
    config = vwn_config(n=8, m=2)  # r = 4 groups of width 64
    model = build_vwn_gpt(config)
    out_norm = model.decoder.final_layernorm
    with torch.no_grad():
        out_norm.collapse.group_norm_weight.uniform_(0.5, 1.5)
        out_norm.weight.uniform_(0.5, 1.5)
    H = torch.randn(3, 2, 256, dtype=torch.float64)
    groups = H.view(3, 2, 4, 64)
    gn = groups / torch.sqrt((groups ** 2).mean(-1, keepdim=True) + config.layernorm_epsilon)
    gn = gn.reshape(3, 2, 256) * out_norm.collapse.group_norm_weight.double()
    h = gn @ out_norm.collapse.reduce_weight.double().T
    ref = h / torch.sqrt((h ** 2).mean(-1, keepdim=True) + config.layernorm_epsilon)
    ref = ref * out_norm.weight.double()
    torch.testing.assert_close(out_norm(H.float()).double(), ref, rtol=1e-4, atol=1e-5)


def test_tiny_vwn_moe_trains(megatron_cpu):
    """A tiny VWN-MoE (r=2, DGHC) learns a deterministic token stream: its loss falls."""
    torch.manual_seed(0)
    model = build_vwn_gpt(vwn_config(n=4, m=2, moe=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    mask = causal_mask()
    losses = []
    for _ in range(40):
        input_ids, position_ids, labels = pattern_batch(8, generator=gen)
        loss = model(input_ids, position_ids, mask, labels=labels).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 4.0  # ~ln(128) at the start
    assert last < 0.5 * first, losses
    # DGHC parameters moved away from their init (they get gradients and are trained)
    ghc = model.decoder.layers[0].mlp_ghc
    assert ghc.dynamic_alpha_proj.abs().max() > 0


def test_context_parallel_needs_a_context_parallel_attention(megatron_cpu):
    from unittest import mock

    from megatron.core.models.gpt.gpt_model import GPTModel

    from nemo_vwn import VWNConfigError

    config = vwn_config(n=4, m=2, context_parallel_size=2)
    with mock.patch.object(GPTModel, "__init__", side_effect=AssertionError("allocated")):
        with pytest.raises(VWNConfigError, match="context_parallel_size=2 needs a context-parallel "
                                                 "attention: Transformer Engine"):
            build_vwn_gpt(config)
