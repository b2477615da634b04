"""The evaluator's next-(1+j)-token losses equal upstream's own MTP loss (training-mode tracker)."""

import pytest
import torch

from nemo_vwn.evaluate import batch_losses
from nemo_vwn.testing.models import (
    build_stock_gpt,
    build_vwn_gpt,
    causal_mask,
    make_batch,
    stock_config,
    vwn_config,
)


def _stock_with_mtp(k):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_block_spec,
        get_gpt_mtp_block_spec,
    )

    config = stock_config(mtp_num_layers=k)
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False,
                                      normalization="RMSNorm")
    mtp = get_gpt_mtp_block_spec(config, spec.layer_specs[-1], use_transformer_engine=False)
    return build_stock_gpt(config, mtp_block_spec=mtp)


@pytest.mark.parametrize("kind", ["vwn", "stock"])
def test_batch_losses_match_the_mtp_loss_megatron_logs(megatron_cpu, kind):
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    k = 2
    model = (build_vwn_gpt(vwn_config(n=4, m=2, mtp_num_layers=k)) if kind == "vwn"
             else _stock_with_mtp(k))
    input_ids, position_ids, labels = make_batch(batch_size=2)
    loss_mask = torch.ones_like(labels, dtype=torch.float32)
    sums, counts = batch_losses(model.eval(), input_ids, position_ids, labels, loss_mask,
                                causal_mask())
    assert counts == [32, 30, 28]  # 2 sequences of 16; depth j loses its last j positions
    MTPLossLoggingHelper.tracker.clear()
    with torch.no_grad():
        main = model.train()(input_ids, position_ids, causal_mask(), labels=labels)
    logged = MTPLossLoggingHelper.tracker["loss_values"]  # per depth: sum / valid tokens
    torch.testing.assert_close(torch.tensor([s / c for s, c in zip(sums[1:], counts[1:])]),
                               logged, rtol=1e-5, atol=1e-5)
    assert sums[0] / counts[0] == pytest.approx(main.mean().item(), rel=1e-5)
