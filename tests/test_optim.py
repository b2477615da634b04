"""Weight-decay groups of VWN parameters (docs/method.md §4) with megatron's optimizers."""

import os

import pytest

from nemo_vwn.distributed import run_distributed
from nemo_vwn.testing.models import build_vwn_gpt, vwn_config
from tests.workers import target
from tests.workers.optimizer import distributed_optimizer_parity

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def effective_weight_decay(model, ghc_scale_weight_decay=False):
    """{param name: weight decay applied} after megatron's scheduler sets wd = wd * wd_mult."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from nemo_vwn.optim import get_vwn_megatron_optimizer

    names = {id(p): n for n, p in model.named_parameters()}
    ddp = DistributedDataParallel(config=model.config, module=model,
                                  ddp_config=DistributedDataParallelConfig())
    config = OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1, bf16=False)
    optimizer = get_vwn_megatron_optimizer(config, [ddp])
    OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=0.0, lr_warmup_steps=0,
                            lr_decay_steps=10, lr_decay_style="constant", start_wd=0.1,
                            end_wd=0.1, wd_incr_steps=10, wd_incr_style="constant")
    decay = {}
    for inner in optimizer.chained_optimizers:
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                decay[names[id(param)]] = group["weight_decay"]
    assert len(decay) == len(names)
    return decay


@pytest.mark.parametrize("scale_decay", [False, True])
def test_weight_decay_groups(megatron_cpu, scale_decay):
    model = build_vwn_gpt(vwn_config(n=4, m=2, mtp_num_layers=1,
                                     ghc_scale_weight_decay=scale_decay))
    wd = effective_weight_decay(model)
    ghc = "decoder.layers.0.self_attention_ghc."
    expected = {
        ghc + "static_alpha": 0.0, ghc + "static_beta": 0.0, ghc + "norm_weight": 0.0,
        ghc + "dynamic_alpha_proj": 0.1, ghc + "dynamic_beta_proj": 0.1,
        ghc + "dynamic_alpha_scale": 0.1 if scale_decay else 0.0,
        ghc + "dynamic_beta_scale": 0.1 if scale_decay else 0.0,
        "decoder.layers.1.mlp_ghc.static_beta": 0.0,
        "mtp.layers.0.mtp_model_layer.mlp_ghc.static_alpha": 0.0,
        "decoder.final_layernorm.collapse.group_norm_weight": 0.0,
        "decoder.final_layernorm.collapse.reduce_weight": 0.1,
        "decoder.final_layernorm.weight": 0.0,
        "decoder.layers.0.input_layernorm.weight": 0.0,
        "decoder.layers.0.self_attention.linear_qkv.weight": 0.1,
        "decoder.layers.0.self_attention.linear_qkv.bias": 0.0,
        "embedding.word_embeddings.weight": 0.1,
        "mtp.layers.0.block_mixer.weight": 0.1,
        "mtp.layers.0.hnorm.weight": 0.0,
        "output_layer.weight": 0.1,
    }
    assert {name: wd[name] for name in expected} == expected


def test_distributed_optimizer_dp2_matches_dp1():
    results = run_distributed(target(distributed_optimizer_parity), world_size=2,
                              kwargs={"steps": 3}, sys_path=[REPO_ROOT])
    for row in results:
        print(row)
        assert row["distributed_optimizer_shards"] > 0, row  # state really is sharded over DP
        assert row["param_max_abs_diff"] < 1e-5, row
        assert row["no_decay_param_moved_only_by_grad"], row
    ref = results[0]["ref_losses"]
    assert ref[-1] < ref[0]  # it trains
    for step, full_batch_loss in enumerate(ref):  # the two halves average to the full batch
        halves = (results[0]["losses"][step] + results[1]["losses"][step]) / 2
        assert abs(halves - full_batch_loss) < 1e-5, (step, halves, full_batch_loss)
