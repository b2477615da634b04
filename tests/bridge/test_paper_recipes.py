"""The paper's configurations: sizes match their names, the size formula matches real builds.

Sizes are counted WITHOUT allocating memory: ``nemo_vwn.bridge.params.count_parameters`` works
from the provider fields; it is checked here against models built on the meta device (small
configs covering every term of the formula, and full-size paper models, which on the meta device
take seconds and no memory) and against the published sizes of open MoE models.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nemo_vwn.runtime import prepare_runtime

# A baseline's total / activated parameters must be within this fraction of its paper name.
TOLERANCE = 0.15


@pytest.fixture(scope="module", autouse=True)
def bridge():
    prepare_runtime()


def paper_recipes():
    from nemo_vwn.recipes import all_recipes

    return {name: info for name, info in all_recipes().items() if name.startswith("paper_")}


def test_every_paper_size_has_vwn_and_mtp_recipes_with_twins():
    from nemo_vwn.recipes.paper import PAPER_RUNS

    recipes = paper_recipes()
    assert len(recipes) == 4 * len(PAPER_RUNS) == 24
    expected_r = {("moe_0p4b_4b", 1.5), ("moe_2p5b_25b", 1.5), ("moe_a0p8b", 2), ("moe_a0p8b", 4),
                  ("moe_a0p8b", 8), ("moe_a3p3b", 8)}
    assert {(run.model, run.r) for run in PAPER_RUNS} == expected_r
    for name, info in recipes.items():
        cfg = info.function()
        model = cfg.model
        assert (model.mtp_num_layers == 1) == name.endswith("_mtp"), name
        assert recipes[info.twin].twin == name
        if info.vwn:
            run = info.function.paper_run
            assert (model.virtual_width_m, model.virtual_width_n) == (run.m, run.n)
            assert model.ghc_dynamic and model.ghc_recompute
            assert model.vwn_collapse == ("linear" if run.r == 1.5 else "norm_linear")
            assert model.vwn_embedding == ("factorized" if run.r == 8 else "wide")
        # H100 layout: bf16, distributed optimizer, EP over the job's GPUs, divisible batches
        size = info.function.paper_model
        assert cfg.mixed_precision == "bf16_mixed" and cfg.optimizer.bf16
        assert cfg.optimizer.use_distributed_optimizer and cfg.ddp.use_distributed_optimizer
        dp = size.gpus // (model.tensor_model_parallel_size * model.pipeline_model_parallel_size)
        assert model.expert_model_parallel_size == size.gpus
        assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp) == 0
        assert model.num_moe_experts % model.expert_model_parallel_size == 0
        assert cfg.train.train_iters * cfg.train.global_batch_size * 4096 >= size.tokens
        cfg.model.finalize()


def test_baselines_match_their_names():
    """Every baseline's total and activated parameters within TOLERANCE of the paper's name
    (the MoE-A* names give the activated size only). MTP baselines are counted with their MTP
    depth (one more MoE layer) and must be within the tolerance as well."""
    from nemo_vwn.recipes import recipe_size

    checked = 0
    for name, info in paper_recipes().items():
        if info.vwn:
            continue
        size = info.function.paper_model
        count = recipe_size(name)
        assert abs(count.activated / size.target_activated - 1) <= TOLERANCE, (name, count)
        if size.target_total is not None:
            assert abs(count.total / size.target_total - 1) <= TOLERANCE, (name, count)
        assert (count.mtp > 0) == name.endswith("_mtp"), name
        checked += 1
    assert checked == 12


def test_vwn_variants_add_only_vwn_parameters():
    """VWN twin minus baseline = the VWN-specific parameters; r=8 uses the factorized table."""
    from nemo_vwn.recipes import all_recipes, recipe_size

    recipes = paper_recipes()
    for name, info in recipes.items():
        if not info.vwn or name.endswith("_mtp"):
            continue
        vwn, base = recipe_size(name), recipe_size(info.twin)
        assert vwn.total - base.total == vwn.vwn > 0, name
        assert vwn.activated - base.activated == vwn.vwn, name
    # the factorized r=8 table vs the wide one it replaces
    from nemo_vwn.bridge.params import count_parameters

    cfg = all_recipes()["paper_moe_a3p3b_vwn_r8"].function()
    wide = dataclasses.replace(cfg.model, vwn_embedding="wide")
    assert count_parameters(wide).embedding == 151936 * 16384
    assert count_parameters(cfg.model).embedding == 151936 * 2048 + 16384 * 2048


def test_sizes_are_computed_without_building_anything(monkeypatch):
    from nemo_vwn.recipes import all_recipes, recipe_size

    def no_modules(*args, **kwargs):
        raise AssertionError("recipe_size built a torch module")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_modules)
    for name in all_recipes():
        assert recipe_size(name).total > 0


def test_formula_reproduces_published_sizes():
    """Published total/activated sizes of open MoE models (model cards / papers), within 2%."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    from nemo_vwn.bridge.params import count_parameters

    common = dict(normalization="RMSNorm", position_embedding_type="rope", gated_linear_unit=True,
                  activation_func=F.silu, add_bias_linear=False,
                  share_embeddings_and_output_weights=False)
    published = {
        # name: (fields, total, activated)
        "OLMoE-1B-7B": (dict(num_layers=16, hidden_size=2048, num_attention_heads=16,
                             ffn_hidden_size=1024, num_moe_experts=64, moe_router_topk=8,
                             moe_ffn_hidden_size=1024, vocab_size=50304, qk_layernorm=True),
                        6.9e9, 1.3e9),
        "Qwen3-30B-A3B": (dict(num_layers=48, hidden_size=2048, num_attention_heads=32,
                               num_query_groups=4, kv_channels=128, ffn_hidden_size=6144,
                               num_moe_experts=128, moe_router_topk=8, moe_ffn_hidden_size=768,
                               vocab_size=151936, qk_layernorm=True), 30.5e9, 3.3e9),
        "DeepSeekMoE-16B": (dict(num_layers=28, hidden_size=2048, num_attention_heads=16,
                                 ffn_hidden_size=10944, num_moe_experts=64, moe_router_topk=6,
                                 moe_ffn_hidden_size=1408, moe_shared_expert_intermediate_size=2816,
                                 moe_layer_freq=[0] + [1] * 27, vocab_size=102400), 16.4e9, 2.8e9),
        "Qwen1.5-MoE-A2.7B": (dict(num_layers=24, hidden_size=2048, num_attention_heads=16,
                                   ffn_hidden_size=5632, num_moe_experts=60, moe_router_topk=4,
                                   moe_ffn_hidden_size=1408, add_qkv_bias=True,
                                   moe_shared_expert_intermediate_size=5632,
                                   moe_shared_expert_gate=True, vocab_size=151936), 14.3e9, 2.7e9),
    }
    for name, (fields, total, activated) in published.items():
        count = count_parameters(GPTModelProvider(**common, **fields))
        assert abs(count.total / total - 1) < 0.02, (name, count.total)
        assert abs(count.activated / activated - 1) < 0.02, (name, count.activated)


# --------------------------------------------------------------------------- meta-device builds
def _local_mtp_block_spec(config, vp_stage=None):
    """Bridge's mtp_block_spec with the local modules (Bridge hard-codes TE, absent on CPU)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    if not config.mtp_num_layers:
        return None
    spec = config.transformer_layer_spec
    spec = spec(config, vp_stage=vp_stage) if callable(spec) else spec
    return get_gpt_mtp_block_spec(config, spec, use_transformer_engine=False, vp_stage=vp_stage)


def meta_count(provider, monkeypatch):
    """Build ``provider``'s model on the meta device (one process, no parallelism) and return
    (total parameters, activated parameters measured from the built expert modules)."""
    import megatron.bridge.models.gpt_provider as gpt_provider
    from megatron.core.process_groups_config import ProcessGroupCollection

    monkeypatch.setattr(gpt_provider, "mtp_block_spec", _local_mtp_block_spec)
    for name, value in dict(init_model_with_meta_device=True, use_cpu_initialization=True,
                            perform_initialization=False, tensor_model_parallel_size=1,
                            pipeline_model_parallel_size=1, expert_model_parallel_size=1,
                            sequence_parallel=False, moe_token_dispatcher_type="allgather",
                            moe_permute_fusion=False).items():
        setattr(provider, name, value)
    provider.finalize()
    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    model = provider.provide()
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)  # nothing was allocated
    total = sum(p.numel() for p in params)
    inactive = 0
    for name, module in model.named_modules():
        if name.endswith("mlp.experts"):
            experts = sum(p.numel() for p in module.parameters())
            E, k = provider.num_moe_experts, provider.moe_router_topk
            inactive += experts * (E - k) // E
    return total, total - inactive


SMALL = dict(num_layers=3, hidden_size=64, num_attention_heads=4, num_query_groups=2,
             ffn_hidden_size=96, vocab_size=300, seq_length=32, normalization="RMSNorm",
             position_embedding_type="rope", gated_linear_unit=True, activation_func=F.silu,
             qk_layernorm=True, add_bias_linear=False, share_embeddings_and_output_weights=False)
SMALL_MOE = dict(num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32,
                 moe_layer_freq=[0, 1, 1], moe_shared_expert_intermediate_size=48,
                 moe_shared_expert_gate=True)
SMALL_CASES = {
    "dense": SMALL,
    "dense_layernorm_biases_tied_learned_positions": dict(
        SMALL, normalization="LayerNorm", add_bias_linear=True, gated_linear_unit=False,
        activation_func=F.gelu, share_embeddings_and_output_weights=True,
        position_embedding_type="learned_absolute", qk_layernorm=False),
    "moe_shared_experts_dense_first_mtp": dict(SMALL, **SMALL_MOE, mtp_num_layers=1),
    "moe_two_mtp_depths": dict(SMALL, num_moe_experts=4, moe_router_topk=1,
                               moe_router_pre_softmax=True, moe_ffn_hidden_size=16,
                               mtp_num_layers=2),
}
VWN_CASES = {
    "r2_wide_norm_linear": dict(n=4, m=2),
    "r1.5_linear": dict(n=3, m=2, vwn_collapse="linear"),
    "r4_factorized": dict(n=8, m=2, vwn_embedding="factorized"),
    "r2_static_ghc": dict(n=4, m=2, dynamic=False),
}


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
def test_formula_matches_meta_builds_of_small_configs(case, megatron_cpu, monkeypatch):
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    from nemo_vwn.bridge.apply import to_vwn_provider
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.recipes.common import stock_layer_spec
    from nemo_vwn.runtime import CPU_MODEL_SETTINGS

    def provider():
        return GPTModelProvider(**SMALL_CASES[case], **CPU_MODEL_SETTINGS,
                                transformer_layer_spec=stock_layer_spec)

    count = count_parameters(provider())
    assert (count.total, count.activated) == meta_count(provider(), monkeypatch)
    for vwn_case, kwargs in VWN_CASES.items():
        count = count_parameters(to_vwn_provider(provider(), **kwargs))
        built = meta_count(to_vwn_provider(provider(), **kwargs), monkeypatch)
        assert (count.total, count.activated) == built, vwn_case


@pytest.mark.parametrize("size", ["moe_0p4b_4b", "moe_2p5b_25b", "moe_a0p8b", "moe_a3p3b"])
def test_formula_matches_meta_builds_of_paper_models(size, megatron_cpu, monkeypatch):
    """Full-size baseline and VWN twins (with MTP, the largest variant of each size and r)."""
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.recipes import all_recipes

    names = sorted(name for name in paper_recipes()
                   if name.startswith(f"paper_{size}_") and name.endswith("_mtp"))
    names = [n for n in names if "_base_" not in n] + [next(n for n in names if "_base_" in n)]
    for name in names:
        provider = all_recipes()[name].function().model
        count = count_parameters(provider)
        assert (count.total, count.activated) == meta_count(provider, monkeypatch), name


def test_recipes_cli_lists_sizes(capsys):
    from nemo_vwn.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "params total/activated" in lines["recipe"]
    assert "30.53B/3.35B" in lines["paper_moe_a3p3b_base_r8"]
    assert "4.04B/404.91M" in lines["paper_moe_0p4b_4b_base_r1p5"]
    assert "0.21M/0.17M" in lines["tiny_vwn_moe_cpu"]


def test_our_recipes_are_apply_vwn_of_their_twins(tmp_path):
    """Applying VWN to a baseline twin gives its VWN recipe's model, field for field."""
    from nemo_vwn.bridge import apply_vwn
    from nemo_vwn.recipes import all_recipes
    from tests.bridge.test_apply import _same, container_differences

    for vwn_name, base_name, kwargs in [
        ("tiny_vwn_moe_cpu", "tiny_moe_cpu", dict(n=4, m=2)),
        ("paper_moe_a0p8b_vwn_r8_mtp", "paper_moe_a0p8b_base_r8_mtp",
         dict(n=64, m=8, vwn_embedding="factorized", ghc_recompute=True)),
    ]:
        recipes = all_recipes()
        expected = recipes[vwn_name].function(output_dir=str(tmp_path))
        applied = apply_vwn(recipes[base_name].function(output_dir=str(tmp_path)), **kwargs)
        for f in dataclasses.fields(expected.model):
            if f.name == "transformer_layer_spec":
                continue
            assert _same(getattr(expected.model, f.name), getattr(applied.model, f.name)), f.name
        assert container_differences(expected, applied) == []
