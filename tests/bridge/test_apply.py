"""apply_vwn on Megatron-Bridge's own recipes (vanilla GPT, OLMoE) and on ours.

The result must validate (``finalize()``), keep every non-VWN field and every other section of the
ConfigContainer, and - shrunk to CPU size with the local spec - build a VWNGPTModel that runs.
"""

import dataclasses
import functools
import importlib
import logging
import os
import pickle
import sys
import types

import pytest
import torch

from nemo_vwn.runtime import prepare_runtime


@pytest.fixture(scope="module", autouse=True)
def bridge():
    prepare_runtime()


def import_bridge_recipe(module: str):
    """Import a module under ``megatron.bridge.recipes`` without running that package's
    ``__init__``, which imports every model family (flux needs ``diffusers``, absent from the
    CPU stack). Sub-package ``__init__`` files still run."""
    if "megatron.bridge.recipes" not in sys.modules:
        import megatron.bridge

        package = types.ModuleType("megatron.bridge.recipes")
        package.__path__ = [os.path.join(os.path.dirname(megatron.bridge.__file__), "recipes")]
        sys.modules["megatron.bridge.recipes"] = package
    return importlib.import_module(module)


def vanilla_gpt():
    """Bridge's vanilla GPT recipe (bare GPTModelProvider, tied embeddings, learned positions,
    LayerNorm); it expects the sizes on the command line, so set small ones."""
    module = import_bridge_recipe("megatron.bridge.recipes.gpt.h100.vanilla_gpt")
    cfg = module.vanilla_gpt_pretrain_1gpu_h100_bf16_config()
    for name, value in dict(num_layers=2, hidden_size=64, num_attention_heads=4,
                            ffn_hidden_size=128, vocab_size=256).items():
        setattr(cfg.model, name, value)
    return cfg


def olmoe():
    """Bridge's OLMoE-7B pretraining recipe (OlMoEModelProvider, EP=8, TE, precision-aware
    optimizer). ``moe_permute_fusion`` needs Transformer Engine at finalize(): off on CPU."""
    module = import_bridge_recipe("megatron.bridge.recipes.olmoe.h100.olmoe_7b")
    cfg = module.olmoe_7b_pretrain_8gpu_h100_bf16_config()
    cfg.model.moe_permute_fusion = False
    return cfg


def _same(a, b) -> bool:
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return (a.func, a.args, a.keywords) == (b.func, b.args, b.keywords)
    return a is b or a == b


def model_differences(base, vwn) -> list:
    return sorted(f.name for f in dataclasses.fields(base)
                  if not _same(getattr(base, f.name), getattr(vwn, f.name)))


def container_differences(base, vwn) -> list:
    return sorted(f.name for f in dataclasses.fields(base)
                  if f.name not in ("model", "optimizer_config_override_provider")
                  and getattr(base, f.name) != getattr(vwn, f.name))


def test_vanilla_gpt_recipe(caplog):
    from nemo_vwn.bridge import VWNModelProvider, apply_vwn
    from nemo_vwn.bridge.apply import VWNSpecAdapter
    from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider

    base = vanilla_gpt()
    assert base.model.share_embeddings_and_output_weights  # Bridge's default: tied
    before = dataclasses.replace(base.model)
    with caplog.at_level(logging.WARNING, logger="nemo_vwn.bridge.apply"):
        cfg = apply_vwn(base, n=4, m=2)
    assert type(cfg.model) is VWNModelProvider
    assert (cfg.model.virtual_width_n, cfg.model.virtual_width_m) == (4, 2)
    assert cfg.model.ghc_dynamic is True
    # the wide table cannot be tied to the D-wide head: untied, and the log says so
    assert cfg.model.share_embeddings_and_output_weights is False
    assert "untying them" in caplog.text and "D'=128" in caplog.text
    assert model_differences(base.model, cfg.model) == [
        "share_embeddings_and_output_weights", "transformer_layer_spec"]
    assert isinstance(cfg.model.transformer_layer_spec, VWNSpecAdapter)
    assert cfg.model.transformer_layer_spec.base is base.model.transformer_layer_spec
    assert container_differences(base, cfg) == []
    assert isinstance(cfg.optimizer_config_override_provider, VWNOptimizerConfigOverrideProvider)
    assert model_differences(before, base.model) == []  # the input is left as it was
    assert type(base.model).__name__ == "GPTModelProvider"
    base.model.finalize()
    cfg.model.finalize()
    assert model_differences(base.model, cfg.model) == [
        "share_embeddings_and_output_weights", "transformer_layer_spec"]


def test_olmoe_recipe_keeps_its_provider_class_layout_and_optimizer():
    from megatron.bridge.models.olmoe.olmoe_provider import OlMoEModelProvider

    from nemo_vwn.bridge import apply_vwn
    from nemo_vwn.bridge.provider import VWNProviderMixin
    from nemo_vwn.config import VWNConfigMixin

    base = olmoe()
    cfg = apply_vwn(base, n=3, m=2, vwn_collapse="linear", ghc_recompute=True)
    model = cfg.model
    assert isinstance(model, OlMoEModelProvider) and isinstance(model, VWNProviderMixin)
    assert isinstance(model, VWNConfigMixin) and type(model).__name__ == "VWNOlMoEModelProvider"
    assert (model.vwn_collapse, model.ghc_recompute) == ("linear", True)
    assert model.virtual_hidden_size == 3072
    assert model_differences(base.model, model) == ["transformer_layer_spec"]
    assert model.expert_model_parallel_size == 8
    assert (model.num_moe_experts, model.moe_router_topk) == (64, 8)
    assert container_differences(base, cfg) == []
    assert cfg.optimizer.use_precision_aware_optimizer and cfg.mixed_precision.bf16
    base.model.finalize()
    model.finalize()
    assert model_differences(base.model, model) == ["transformer_layer_spec"]
    # the class is found by name (pickling; a config file's _target_) and round-trips
    import nemo_vwn.bridge.apply as apply_module

    assert apply_module.VWNOlMoEModelProvider is type(model)
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model) and model_differences(model, clone) == []


def test_gpt3_175b_recipe_keeps_its_pipeline_layout():
    """Bridge's GPT-3 175B recipe (TP4/PP8/VPP6) uses TE's fused full-layer spec: a clear error;
    with the standard spec the VWN variant keeps the whole layout."""
    from nemo_vwn.bridge import UnsupportedRecipeError, apply_vwn

    module = import_bridge_recipe("megatron.bridge.recipes.gpt.h100.gpt3_175b")
    base = module.gpt3_175b_pretrain_32gpu_h100_bf16_config()
    with pytest.raises(UnsupportedRecipeError, match="use_transformer_engine_full_layer_spec"):
        apply_vwn(base, n=16, m=8)
    base.model.use_transformer_engine_full_layer_spec = False
    cfg = apply_vwn(base, n=16, m=8, vwn_embedding="factorized")  # tied D-wide table: kept
    assert model_differences(base.model, cfg.model) == ["transformer_layer_spec"]
    assert container_differences(base, cfg) == []
    layout = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
              "virtual_pipeline_model_parallel_size", "sequence_parallel")
    assert [getattr(cfg.model, f) for f in layout] == [4, 8, 6, True]
    base.model.finalize()
    cfg.model.finalize()
    assert model_differences(base.model, cfg.model) == ["transformer_layer_spec"]

def _cpu(provider, **sizes):
    from nemo_vwn.runtime import CPU_MODEL_SETTINGS

    values = dict(CPU_MODEL_SETTINGS, params_dtype=torch.float32, bf16=False, seq_length=32,
                  pipeline_dtype=None, **sizes)
    for name, value in values.items():
        setattr(provider, name, value)


def _forward(cfg, vocab):
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemo_vwn import VWNGPTModel

    cfg.model.finalize()
    cfg.model._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    torch.manual_seed(0)
    model = cfg.model.provide()
    assert isinstance(model, VWNGPTModel)
    tokens = torch.randint(0, vocab, (2, 32))
    positions = torch.arange(32).expand(2, 32)
    mask = torch.ones(1, 1, 32, 32, dtype=torch.bool).triu(1)
    loss = model(tokens, positions, mask, labels=tokens)
    assert loss.shape == (2, 32) and torch.isfinite(loss).all()
    loss.mean().backward()
    return model


def test_shrunk_vanilla_gpt_builds_and_runs_on_cpu(megatron_cpu):
    from megatron.bridge.models.gpt_provider import local_layer_spec

    from nemo_vwn.bridge import apply_vwn

    base = vanilla_gpt()
    _cpu(base.model)
    base.model.transformer_layer_spec = local_layer_spec  # the recipe's default spec needs TE
    cfg = apply_vwn(base, n=4, m=2)
    model = _forward(cfg, vocab=256)
    assert model.embedding.word_embeddings.weight.shape == (256, 128)  # D' = 2 * 64
    assert type(model.decoder.final_layernorm).__name__ == "VWNOutputNorm"
    assert model.position_embedding_type == "learned_absolute"  # the recipe's choice, kept


def test_shrunk_olmoe_builds_and_runs_on_cpu_with_its_attention(megatron_cpu):
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.models.olmoe.olmoe_provider import OLMoESelfAttention

    from nemo_vwn.bridge import apply_vwn
    from nemo_vwn.runtime import CPU_MOE_SETTINGS

    def olmoe_local_spec(config):  # OLMoE's spec on megatron's local modules (TE is absent)
        spec = local_layer_spec(config)
        spec.submodules.self_attention.module = OLMoESelfAttention
        return spec

    base = olmoe()
    _cpu(base.model, num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=4,
         kv_channels=16, ffn_hidden_size=64, moe_ffn_hidden_size=32, num_moe_experts=4,
         moe_router_topk=2, vocab_size=128, expert_model_parallel_size=1, moe_grouped_gemm=False,
         **CPU_MOE_SETTINGS)
    base.model.transformer_layer_spec = olmoe_local_spec
    cfg = apply_vwn(base, n=3, m=2, vwn_collapse="linear")
    model = _forward(cfg, vocab=128)
    layer = model.decoder.layers[0]
    assert type(layer).__name__ == "VWNTransformerLayer"
    assert isinstance(layer.self_attention, OLMoESelfAttention)  # the recipe's attention, kept
    assert type(layer.mlp).__name__ == "MoELayer"


def test_block_spec_recipe_with_dense_first_layer_and_mtp(megatron_cpu):
    """A DeepSeek-style provider: spec = partial(get_gpt_decoder_block_spec, ...) with a dense
    first layer (moe_layer_freq), plus multi-token prediction; built and run through Bridge."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    from nemo_vwn.bridge import apply_vwn
    from nemo_vwn.recipes.tiny import tiny_moe_cpu
    from nemo_vwn.runtime import CPU_MOE_SETTINGS

    base = tiny_moe_cpu()
    base.model = GPTModelProvider(
        num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
        num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, moe_layer_freq=[0, 1],
        mtp_num_layers=1, normalization="RMSNorm", position_embedding_type="rope",
        share_embeddings_and_output_weights=False, vocab_size=128,
        transformer_layer_spec=functools.partial(get_gpt_decoder_block_spec,
                                                 use_transformer_engine=False),
        **CPU_MOE_SETTINGS)
    _cpu(base.model)
    cfg = apply_vwn(base, n=8, m=2, vwn_embedding="factorized")
    model = _forward(cfg, vocab=128)
    kinds = [type(layer.mlp).__name__ for layer in model.decoder.layers]
    assert kinds == ["MLP", "MoELayer"]
    assert type(model.mtp.layers[0].mtp_model_layer.mlp).__name__ == "MoELayer"
    assert model.embedding.up_proj_weight.shape == (256, 64)  # factorized: D -> D' = 4 * 64


def test_custom_optimizer_overrides_are_kept():
    from megatron.bridge.training.config import OptimizerConfigOverrideProvider

    from nemo_vwn.bridge import apply_vwn
    from nemo_vwn.recipes.tiny import tiny_moe_cpu

    @dataclasses.dataclass
    class MyOverrides(OptimizerConfigOverrideProvider):
        def build_config_overrides(self, context):
            return {"mine": {"lr_mult": 0.5}}

    base = tiny_moe_cpu()
    base.optimizer_config_override_provider = MyOverrides()
    cfg = apply_vwn(base, n=4, m=2)
    overrides = cfg.optimizer_config_override_provider.build_config_overrides(None)
    assert overrides["mine"] == {"lr_mult": 0.5}
    assert [v for k, v in overrides.items() if k != "mine"] == [{"wd_mult": 0.0}]


def test_errors_name_the_problem():
    from megatron.bridge.models import MambaModelProvider

    from nemo_vwn import VWNConfigError
    from nemo_vwn.bridge import UnsupportedRecipeError, apply_vwn
    from nemo_vwn.recipes.tiny import tiny_moe_cpu

    cfg = tiny_moe_cpu()
    with pytest.raises(VWNConfigError, match="virtual_width_m=3 must divide hidden_size=64"):
        apply_vwn(cfg, n=6, m=3)
    with pytest.raises(VWNConfigError, match="'norm_linear'.*Use vwn_collapse='linear'"):
        apply_vwn(cfg, n=3, m=2)
    with pytest.raises(VWNConfigError, match="unknown VWN field.*'vwn_embeding'.*vwn_embedding"):
        apply_vwn(cfg, n=4, m=2, vwn_embeding="wide")
    with pytest.raises(VWNConfigError, match="vwn_embedding='huge' is not one of"):
        apply_vwn(cfg, n=4, m=2, vwn_embedding="huge")
    mamba = tiny_moe_cpu()
    mamba.model = MambaModelProvider()
    with pytest.raises(UnsupportedRecipeError, match="GPT model provider.*got MambaModelProvider"):
        apply_vwn(mamba, n=4, m=2)
    with pytest.raises(UnsupportedRecipeError, match="ConfigContainer"):
        apply_vwn(object(), n=4, m=2)
    tied = vanilla_gpt()
    with pytest.raises(VWNConfigError, match="ties the embedding table.*factorized"):
        apply_vwn(tied, n=4, m=2, untie_embeddings=False)
    kept = apply_vwn(tied, n=4, m=2, vwn_embedding="factorized")  # D-wide table: tie kept
    assert kept.model.share_embeddings_and_output_weights is True
    full_te = vanilla_gpt()
    full_te.model.use_transformer_engine_full_layer_spec = True
    with pytest.raises(UnsupportedRecipeError, match="use_transformer_engine_full_layer_spec"):
        apply_vwn(full_te, n=4, m=2)

