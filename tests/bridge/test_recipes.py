"""Recipes: valid ConfigContainers, twins that differ only in VWN, overrides and their errors."""

import dataclasses

import pytest

from nemo_vwn.runtime import prepare_runtime


@pytest.fixture(scope="module", autouse=True)
def bridge():
    prepare_runtime()


def test_every_recipe_builds_a_valid_container(tmp_path):
    from megatron.bridge.training.config import ConfigContainer

    from nemo_vwn.recipes import all_recipes

    recipes = all_recipes()
    assert len(recipes) >= 4
    for name, info in recipes.items():
        cfg = info.function(output_dir=str(tmp_path / name))
        assert isinstance(cfg, ConfigContainer), name
        cfg.model.finalize()  # Bridge's deferred validation (VWN fields included)
        assert (type(cfg.model).__name__ == "VWNModelProvider") == info.vwn, name
        assert info.twin in recipes and recipes[info.twin].twin == name


def test_twins_differ_only_in_vwn(tmp_path):
    from nemo_vwn.recipes import all_recipes

    for name, info in all_recipes().items():
        if not info.vwn:
            continue
        vwn = info.function(output_dir=str(tmp_path / "a"))
        base = all_recipes()[info.twin].function(output_dir=str(tmp_path / "a"))
        vwn_fields = {f.name for f in dataclasses.fields(vwn.model)}
        base_fields = {f.name for f in dataclasses.fields(base.model)}
        extra = vwn_fields - base_fields
        assert extra and all(f.startswith(("virtual_width", "ghc_", "vwn_")) for f in extra)
        differing = sorted(f for f in base_fields
                           if f not in ("transformer_layer_spec",)
                           and getattr(vwn.model, f) != getattr(base.model, f))
        assert differing == [], (name, differing)
        for section in ("train", "optimizer", "scheduler", "ddp", "dataset", "tokenizer", "rng"):
            assert getattr(vwn, section) == getattr(base, section), (name, section)


def test_overrides_change_what_they_say_and_bad_keys_fail_clearly(tmp_path):
    from nemo_vwn.bridge.training import OverrideError
    from nemo_vwn.recipes import UnknownRecipeError, build_recipe

    cfg = build_recipe("tiny_vwn_moe_cpu", str(tmp_path),
                       ["train.train_iters=7", "model.virtual_width_n=6", "optimizer.lr=0.01"])
    assert cfg.train.train_iters == 7 and cfg.model.virtual_width_n == 6
    assert cfg.optimizer.lr == 0.01
    with pytest.raises(OverrideError,
                       match="model has no field 'virtual_width_k'.*virtual_width_n"):
        build_recipe("tiny_vwn_moe_cpu", str(tmp_path), ["model.virtual_width_k=6"])
    with pytest.raises(OverrideError, match="has no field 'trian'.*valid fields:.*train"):
        build_recipe("tiny_vwn_moe_cpu", str(tmp_path), ["trian.train_iters=3"])
    with pytest.raises(OverrideError, match="not of the form"):
        build_recipe("tiny_vwn_moe_cpu", str(tmp_path), ["train.train_iters"])
    with pytest.raises(UnknownRecipeError, match="available recipes: .*tiny_vwn_moe_cpu"):
        build_recipe("tiny_vwn", str(tmp_path))


def test_invalid_vwn_override_fails_in_finalize(tmp_path):
    from nemo_vwn import VWNConfigError
    from nemo_vwn.recipes import build_recipe

    cfg = build_recipe("tiny_vwn_moe_cpu", str(tmp_path), ["model.virtual_width_n=1"])
    with pytest.raises(VWNConfigError, match="virtual_width_n=1 must be >= virtual_width_m=2"):
        cfg.model.finalize()


def test_vwn_recipes_use_the_vwn_weight_decay_groups(tmp_path):
    from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider
    from nemo_vwn.recipes import all_recipes

    for name, info in all_recipes().items():
        cfg = info.function(output_dir=str(tmp_path))
        is_vwn_provider = isinstance(cfg.optimizer_config_override_provider,
                                     VWNOptimizerConfigOverrideProvider)
        assert is_vwn_provider == info.vwn, name


def test_baseline_twin_with_mtp_builds_on_cpu(tmp_path, megatron_cpu):
    """Bridge's default MTP spec needs TE; the CPU twins build upstream MTP from local modules."""
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.multi_token_prediction import MultiTokenPredictionBlock

    from nemo_vwn.recipes import build_recipe

    cfg = build_recipe("tiny_moe_cpu", str(tmp_path), ["model.mtp_num_layers=1"])
    cfg.model.vocab_size = 128
    cfg.model.finalize()
    cfg.model._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    model = cfg.model.provide()
    assert isinstance(model.mtp, MultiTokenPredictionBlock)
    assert type(model).__name__ == "GPTModel"
