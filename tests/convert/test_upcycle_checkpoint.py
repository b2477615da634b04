"""Upcycling a real Bridge baseline checkpoint, then continuing pretraining from it as VWN."""

import json
import os

import pytest

from nemo_vwn.distributed import run_distributed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(recipe, out, overrides):
    return run_distributed("tests.bridge.workers:pretrain_and_record", world_size=1,
                           kwargs={"recipe": recipe, "output_dir": str(out),
                                   "overrides": ["validation.eval_iters=0"] + overrides},
                           sys_path=[REPO_ROOT], timeout=600)[0]


@pytest.fixture(scope="module")
def baseline_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    _train("tiny_moe_cpu", out, ["train.train_iters=2", "checkpoint.save_interval=2"])
    return str(out / "checkpoints")


def test_upcycle_then_continue_pretraining(baseline_checkpoint, tmp_path, capsys):
    from nemo_vwn.cli import main

    upcycled = tmp_path / "upcycled"
    status = main(["convert", "upcycle", "--checkpoint", baseline_checkpoint, "--output",
                   str(upcycled), "--n", "4", "--m", "2"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads(printed[printed.index("{"):])
    assert report["logits_max_abs_diff"] == 0.0  # the baseline's function, bit for bit
    assert report["provider"] == "VWNModelProvider" and report["vwn_collapse"] == "linear"

    # continued pretraining of the VWN recipe starts from the upcycled weights
    run = _train("tiny_vwn_moe_cpu", tmp_path / "continued", [
        "train.train_iters=2", "checkpoint.save_interval=1000", "model.vwn_collapse=linear",
        "model.vwn_collapse_init=identity", f"checkpoint.pretrained_checkpoint={upcycled}"])
    fresh = _train("tiny_vwn_moe_cpu", tmp_path / "fresh", [
        "train.train_iters=2", "checkpoint.save_interval=1000", "model.vwn_collapse=linear",
        "model.vwn_collapse_init=identity"])
    first = lambda r: r["records"][0][0] / r["records"][0][1]  # noqa: E731
    assert first(run) != pytest.approx(first(fresh))  # it really loaded the upcycled weights

    # errors: upcycling a VWN checkpoint, an existing output, a bad n/m
    assert main(["convert", "upcycle", "--checkpoint", str(upcycled), "--output",
                 str(tmp_path / "again"), "--n", "6", "--m", "2"]) == 2
    assert "already a VWN checkpoint" in capsys.readouterr().out
    assert main(["convert", "upcycle", "--checkpoint", baseline_checkpoint, "--output",
                 str(upcycled), "--n", "4", "--m", "2"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().out
    assert main(["convert", "upcycle", "--checkpoint", baseline_checkpoint, "--output",
                 str(tmp_path / "x"), "--n", "1", "--m", "2"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "again").exists()


def test_upcycled_provider_survives_bridge_remove_non_pickleables():
    """HF export of an upcycled checkpoint: Bridge cleans the model config (the provider that
    ``to_vwn_provider`` made, with its ``VWNSpecAdapter``) with ``remove_non_pickleables`` before
    it broadcasts it; that assigns fields on copies of the objects it reaches and must not raise
    (it raised FrozenInstanceError on the adapter's ``base``) nor touch the original."""
    import pickle

    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()  # before Bridge is imported (CPU stand-ins for Transformer Engine)
    from megatron.bridge.models.conversion.utils import remove_non_pickleables
    from megatron.bridge.models.gpt_provider import GPTModelProvider, default_layer_spec

    from nemo_vwn.bridge.apply import VWNSpecAdapter, to_vwn_provider

    baseline = GPTModelProvider(num_layers=2, hidden_size=64, num_attention_heads=4,
                                ffn_hidden_size=128, vocab_size=256)
    provider = to_vwn_provider(baseline, 4, 2, vwn_collapse="linear",
                               vwn_collapse_init="identity")
    assert isinstance(provider.transformer_layer_spec, VWNSpecAdapter)
    for depth in (2, 3):  # the depths Bridge's param mappings use
        cleaned = remove_non_pickleables(provider, max_depth=depth)
        assert isinstance(cleaned.transformer_layer_spec, VWNSpecAdapter)
        assert cleaned.transformer_layer_spec is not provider.transformer_layer_spec
        restored = pickle.loads(pickle.dumps(cleaned))
        assert (restored.virtual_width_n, restored.virtual_width_m) == (4, 2)
    assert provider.transformer_layer_spec.base is default_layer_spec  # original left as it was
