"""``continue_from`` (nemo_vwn.recipes.continued) on a family's own Megatron-Bridge recipe.

Bridge 0.6.2's Qwen3 recipes build their model with ``AutoBridge.from_hf_pretrained("Qwen/...")``,
a hub download; here that call is pointed at a tiny local Qwen3 directory (random weights), the
same one that is upcycled, so the recipe is built exactly as Bridge writes it, without a download.
"""

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

N, M = 3, 2
VOCAB = 128


def bridge_recipe_module():
    """``megatron.bridge.recipes.qwen.h100.qwen3``, imported without running
    ``megatron/bridge/recipes/__init__.py`` (it imports every family's recipes, flux's included,
    which need ``diffusers``: not installed here), as tests/bridge/test_apply.py does."""
    from nemo_vwn.runtime import prepare_runtime
    from tests.bridge.test_apply import import_bridge_recipe

    prepare_runtime()  # the CPU shim: Bridge's PEFT modules import transformer_engine
    return import_bridge_recipe("megatron.bridge.recipes.qwen.h100.qwen3")


@pytest.fixture
def upcycled_qwen3(megatron_cpu_session, tmp_path):
    import transformers as tf

    from nemo_vwn.convert.upcycle_hf import upcycle_hf

    torch.manual_seed(0)
    tf.Qwen3ForCausalLM(tf.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=64)).save_pretrained(str(tmp_path / "hf"))
    upcycle_hf(str(tmp_path / "hf"), str(tmp_path / "vwn"), n=N, m=M)
    return tmp_path


def test_continue_from_the_qwen3_bridge_recipe(upcycled_qwen3, monkeypatch):
    """The checkpoint's VWN model; the recipe's optimizer, schedule, precision, TE and layout;
    the pretrained checkpoint set; the tokenizer at the model's vocabulary."""
    from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider
    from nemo_vwn.bridge.provider import VWNModelProvider
    from nemo_vwn.recipes.continued import continue_from

    qwen3 = bridge_recipe_module()
    from_hf_pretrained = qwen3.AutoBridge.from_hf_pretrained
    asked = []

    def local(path, **kwargs):
        asked.append(path)
        return from_hf_pretrained(str(upcycled_qwen3 / "hf"), **kwargs)

    monkeypatch.setattr(qwen3.AutoBridge, "from_hf_pretrained", local)
    recipe = qwen3.qwen3_600m_pretrain_1gpu_h100_bf16_config()
    assert asked == ["Qwen/Qwen3-0.6B"]
    # what the recipe sets, read before continue_from replaces its model
    layout = {f: getattr(recipe.model, f) for f in (
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
        "sequence_parallel", "transformer_impl", "cross_entropy_loss_fusion", "bf16")}
    assert layout["transformer_impl"] == "transformer_engine"  # not the checkpoint's "local"
    training = (recipe.optimizer.lr, recipe.optimizer.min_lr, recipe.train.train_iters,
                recipe.train.global_batch_size, recipe.scheduler.lr_warmup_iters,
                recipe.mixed_precision, recipe.dataset.seq_length)
    tokenizer_model = recipe.tokenizer.tokenizer_model

    cfg = continue_from(recipe, str(upcycled_qwen3 / "vwn"))
    model = cfg.model
    assert isinstance(model, VWNModelProvider)
    assert (model.virtual_width_n, model.virtual_width_m, model.hidden_size) == (N, M, 64)
    assert (model.num_layers, model.vocab_size, model.qk_layernorm) == (2, VOCAB, True)
    assert {f: getattr(model, f) for f in layout} == layout
    assert model.seq_length == recipe.dataset.seq_length
    assert (cfg.optimizer.lr, cfg.optimizer.min_lr, cfg.train.train_iters,
            cfg.train.global_batch_size, cfg.scheduler.lr_warmup_iters, cfg.mixed_precision,
            cfg.dataset.seq_length) == training
    assert cfg.checkpoint.pretrained_checkpoint == str(upcycled_qwen3 / "vwn" / "iter_0000000")
    # the tokenizer is still the recipe's (Qwen's own), but the vocabulary is the checkpoint's
    assert cfg.tokenizer.tokenizer_model == tokenizer_model
    assert cfg.tokenizer.use_tokenizer_vocab_size is False
    assert isinstance(cfg.optimizer_config_override_provider, VWNOptimizerConfigOverrideProvider)
