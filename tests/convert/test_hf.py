"""Hugging Face export/import of VWN checkpoints (nemo_vwn.convert.hf, nemo_vwn.hf).

Four tiny Megatron checkpoints (every parameter randomised, so a swapped or mis-shaped mapping
changes logits) cover: dense GELU-with-bias (padded vocabulary), MoE with SwiGLU experts, GQA,
pre-softmax routing, a dense layer among MoE layers and 2 MTP depths; MoE with sigmoid routing,
expert bias, top-k scaling, fp32 router, LayerNorm, QK-norm, learned positions at r = 4; and a
factorized, tied embedding (GELU after the up-projection) with static GHC at r = 1.5 with the
linear collapse and a repeated MTP layer. Each is exported, read by transformers, imported back
and compared.
"""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from nemo_vwn.convert.checkpoint import CheckpointError, resolve_checkpoint  # noqa: E402

TOLERANCE = 1e-5
"""Megatron vs HF logits, fp32, max |Δ|: the HF model computes the same function with the same
op order for the GHC/collapse and plain (unfused) attention/MLP, so only reduction-order rounding
may differ (~1e-7 at these logit magnitudes of ~1-5); measured: 0 (bit-identical) on all four."""

BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
            normalization="RMSNorm", position_embedding_type="rope", hidden_dropout=0.0,
            attention_dropout=0.0, share_embeddings_and_output_weights=False, vocab_size=100,
            seq_length=16, virtual_width_m=2, virtual_width_n=4)
MOE = dict(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, moe_aux_loss_coeff=0.0,
           add_bias_linear=False)
VARIANTS = {
    "dense": dict(should_pad_vocab=True),  # vocabulary 100 -> table of 128 rows
    "moe_mtp": dict(MOE, gated_linear_unit=True, activation_func=F.silu, num_query_groups=2,
                    moe_router_pre_softmax=True, moe_layer_freq=[1, 0], mtp_num_layers=2),
    "moe_sigmoid": dict(MOE, moe_router_score_function="sigmoid",
                        moe_router_enable_expert_bias=True, moe_router_topk_scaling_factor=2.0,
                        moe_router_dtype="fp32", moe_router_load_balancing_type="none",
                        qk_layernorm=True, normalization="LayerNorm",
                        position_embedding_type="learned_absolute", virtual_width_n=8),
    "factorized": dict(vwn_embedding="factorized", vwn_embedding_up_act="gelu",
                       share_embeddings_and_output_weights=True,
                       ghc_dynamic=False, virtual_width_n=3, vwn_collapse="linear",
                       add_bias_linear=False, add_qkv_bias=True, mtp_num_layers=2,
                       mtp_use_repeated_layer=True),
}


@pytest.fixture(scope="module", autouse=True)
def bridge_runtime():
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()


def provider_for(name):
    from nemo_vwn.bridge.provider import VWNModelProvider
    from nemo_vwn.convert.models import runtime_overrides

    provider = VWNModelProvider(**dict(BASE, **VARIANTS[name]))
    for key, value in runtime_overrides(provider).items():
        setattr(provider, key, value)
    provider.perform_initialization = True  # conversion skips init; a fresh model needs it
    return provider


def build_checkpoint(name, path):
    """A randomised tiny VWN model of variant ``name`` saved as a Bridge checkpoint."""
    from megatron.bridge.training.model_load_save import save_megatron_model

    from nemo_vwn.convert.models import build_models
    from nemo_vwn.testing.cpu import set_parallel_layout

    set_parallel_layout(seed=1234)
    models = build_models(provider_for(name))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in [*models[0].parameters(), *models[0].buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
    save_megatron_model(models, str(path))
    return models[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


_CONVERTED = {}


def convert_variant(name, workdir):
    """name, original model, and the paths/reports of export and import(export) (built once)."""
    if name not in _CONVERTED:
        _CONVERTED[name] = _convert(name, workdir)
    return _CONVERTED[name]


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, workdir, megatron_cpu_session):
    return convert_variant(request.param, workdir)


@pytest.fixture(scope="module")
def moe_mtp(workdir, megatron_cpu_session):
    """The MoE + MTP variant (for checks one model is enough for)."""
    return convert_variant("moe_mtp", workdir)


def _convert(name, workdir):
    from nemo_vwn.convert.hf import export_hf, import_hf

    root = workdir / name
    model = build_checkpoint(name, root / "megatron")
    export = export_hf(str(root / "megatron"), str(root / "hf"))
    imported = import_hf(str(root / "hf"), str(root / "reimported"))
    return dict(name=name, model=model, root=root, megatron=root / "megatron", hf=root / "hf",
                reimported=root / "reimported", export=export, imported=imported)


def load_hf(path):
    from transformers import AutoModelForCausalLM

    import nemo_vwn.hf  # noqa: F401  (registers model_type "vwn")

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def max_abs(a, b):
    return max((x - y).abs().max().item() for x, y in zip([a[0], *a[1]], [b[0], *b[1]]))


# ---------------------------------------------------------------------------------- function
def test_hf_logits_match_megatron(converted):
    from nemo_vwn.convert.hf import hf_logits, megatron_logits, probe_batch

    model, hf_model = converted["model"], load_hf(converted["hf"])
    assert type(hf_model).__name__ == "VWNForCausalLM"
    tokens = probe_batch(BASE["vocab_size"])
    reference, ours = megatron_logits(model, tokens), hf_logits(hf_model, tokens)
    k = VARIANTS[converted["name"]].get("mtp_num_layers", 0)
    assert len(reference[1]) == len(ours[1]) == k  # every MTP depth is compared too
    diff = max_abs(reference, ours)
    print(f"{converted['name']}: max |logit diff| = {diff:.3g}, max |logit| = "
          f"{reference[0].abs().max().item():.3g}, export report {converted['export']}")
    assert diff <= TOLERANCE
    assert converted["export"]["max_rel_logit_diff"] <= TOLERANCE
    assert converted["imported"]["max_rel_logit_diff"] <= TOLERANCE
    # The comparison is sensitive to the VWN parameters: perturbing one GHC tensor of the HF
    # model (static A for static GHC, W_A for DGHC) moves the logits far beyond the tolerance.
    ghc = hf_model.model.layers[0].attn_ghc
    tensor = ghc.dynamic_alpha_proj if ghc.dynamic else ghc.static_alpha
    with torch.no_grad():
        tensor.add_(0.5)
    assert max_abs(reference, hf_logits(hf_model, tokens)) > 1e-2


def test_import_of_export_reproduces_every_parameter(converted):
    from nemo_vwn.convert.models import load_vwn_checkpoint, single_process_megatron

    with single_process_megatron():
        provider_a, (a,) = load_vwn_checkpoint(resolve_checkpoint(converted["megatron"]))
        provider_b, (b,) = load_vwn_checkpoint(resolve_checkpoint(converted["reimported"]))
    state_a = {k: v for k, v in a.state_dict().items() if "_extra_state" not in k}
    state_b = {k: v for k, v in b.state_dict().items() if "_extra_state" not in k}
    assert sorted(state_a) == sorted(state_b)
    assert any("_ghc." in k for k in state_a) and any("collapse" in k for k in state_a)
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, different
    for field in ("virtual_width_n", "virtual_width_m", "hidden_size", "num_moe_experts",
                  "vocab_size", "make_vocab_size_divisible_by", "mtp_num_layers", "ghc_dynamic",
                  "vwn_embedding", "vwn_collapse", "share_embeddings_and_output_weights"):
        assert getattr(provider_a, field) == getattr(provider_b, field), field


def test_hf_generation_runs_and_uses_the_cache_correctly(converted):
    hf_model = load_hf(converted["hf"])
    prompt = torch.tensor([[5, 17, 3, 42, 8], [9, 1, 77, 23, 60]])
    generated = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                  do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 11) and torch.equal(generated[:, :5], prompt)
    tokens = prompt  # greedy decoding without a KV cache must pick the same tokens
    for _ in range(6):
        next_token = hf_model(tokens, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    assert torch.equal(generated, tokens)


def test_exported_directory_is_self_contained(converted):
    hf_dir = converted["hf"]
    files = set(os.listdir(hf_dir))
    assert {"config.json", "model.safetensors", "configuration_vwn.py", "modeling_vwn.py",
            "generation_config.json"} <= files
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "vwn" and config["architectures"] == ["VWNForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vwn.VWNForCausalLM"
    if converted["name"] == "dense":
        assert config["vocab_size"] == 128 and config["megatron_vocab_size"] == 100
    if converted["name"] == "factorized":
        assert config["tie_word_embeddings"] is True
    for name in ("configuration_vwn.py", "modeling_vwn.py"):  # only torch/transformers/relative
        tree = ast.parse((hf_dir / name).read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        modules |= {node.module or "." for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and not node.level}
        assert {m.split(".")[0] for m in modules} <= {"__future__", "math", "dataclasses",
                                                      "typing", "torch", "transformers"}, modules


REMOTE_CODE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("nemo_vwn", "megatron"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModelForCausalLM
    hf_dir, tokens_file = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    tokens = torch.load(tokens_file)
    with torch.no_grad():
        out = model(tokens, output_mtp_logits=True)
    generated = model.generate(tokens[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    torch.save({"logits": out.logits, "mtp": list(out.mtp_logits), "generated": generated,
                "class": type(model).__module__}, tokens_file + ".out")
    assert not [m for m in sys.modules if m.split(".")[0] in ("nemo_vwn", "megatron")]
""")


def test_trust_remote_code_loads_without_nemo_vwn(moe_mtp, tmp_path):
    converted = moe_mtp
    from nemo_vwn.convert.hf import hf_logits, probe_batch

    tokens = probe_batch(BASE["vocab_size"])
    torch.save(tokens, tmp_path / "tokens.pt")
    (tmp_path / "script.py").write_text(REMOTE_CODE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               PYTHONPATH="")
    result = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(converted["hf"]),
                             str(tmp_path / "tokens.pt")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "tokens.pt.out")
    assert out["class"].startswith("transformers_modules")  # the directory's own code ran
    main, mtp = hf_logits(load_hf(converted["hf"]), tokens)
    assert torch.equal(out["logits"], main) and len(out["mtp"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(out["mtp"], mtp))
    assert out["generated"].shape == (2, 7)


def test_bridge_is_registered_with_megatron_bridge(moe_mtp):
    converted = moe_mtp
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.conversion.param_mapping import (
        GatedMLPMapping,
        QKVMapping,
        ReplicatedMapping,
    )

    import nemo_vwn.hf.bridge  # noqa: F401

    assert "VWNForCausalLM" in AutoBridge.list_supported_models()
    assert AutoBridge.can_handle(str(converted["hf"]))
    bridge = AutoBridge.from_hf_pretrained(str(converted["hf"]))
    registry = bridge._model_bridge.mapping_registry()
    kinds = {type(registry.megatron_to_hf_lookup(name)) for name in (
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.mlp.experts.local_experts.3.linear_fc1.weight",
        "decoder.layers.1.mlp.linear_fc1.weight",  # the dense layer among MoE layers
        "decoder.layers.1.mlp_ghc.dynamic_beta_scale",
        "mtp.layers.1.block_mixer.weight")}
    assert kinds == {QKVMapping, GatedMLPMapping, ReplicatedMapping}
    provider = bridge.to_megatron_provider(load_weights=False)
    assert type(provider).__name__ == "VWNModelProvider"
    assert (provider.virtual_width_n, provider.num_moe_experts, provider.mtp_num_layers,
            provider.moe_layer_freq) == (4, 4, 2, [1, 0])


# ---------------------------------------------------------------------------------- errors
def no_output_left(path):
    parent = path.parent
    return not path.exists() and not [p for p in parent.iterdir() if p.name.startswith(
        f".{path.name}.tmp-")]


@pytest.fixture(scope="module")
def dense(workdir, megatron_cpu_session):
    """A dense checkpoint and its export (for the error cases)."""
    from nemo_vwn.convert.hf import export_hf

    root = workdir / "errors"
    build_checkpoint("dense", root / "megatron")
    export_hf(str(root / "megatron"), str(root / "hf"), verify=False)
    return root


def copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_export_errors(dense, tmp_path):
    from nemo_vwn.convert.hf import export_hf

    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_hf(str(tmp_path / "nope"), str(out))
    with pytest.raises(CheckpointError, match="config mismatch: virtual_width_n: checkpoint 4 "
                                              "!= requested 6"):
        export_hf(str(dense / "megatron"), str(out), expected={"virtual_width_n": 6})
    with pytest.raises(CheckpointError, match="num_moe_experts: checkpoint 0 != requested 8"):
        export_hf(str(dense / "megatron"), str(out), expected={"num_moe_experts": 8})
    with pytest.raises(CheckpointError, match="unknown field"):
        export_hf(str(dense / "megatron"), str(out), expected={"n": 6})
    assert no_output_left(out)
    # a corrupted checkpoint: truncate the largest tensor file
    broken = copy_tree(dense / "megatron", tmp_path / "broken")
    iteration = next(p for p in broken.iterdir() if p.name.startswith("iter_"))
    shard = max((p for p in iteration.iterdir() if p.suffix == ".distcp"),
                key=lambda p: p.stat().st_size)
    intact_bytes = shard.read_bytes()
    shard.write_bytes(intact_bytes[:100])
    # the integrity check (bridge.checkpoints.require_intact) names the short shard before loading
    with pytest.raises(CheckpointError, match=rf"is incomplete: .*{shard.name}: 100 bytes"):
        export_hf(str(broken), str(out))
    # full length but garbage bytes (no manifest here: save_megatron_model writes none), so the
    # structure check passes and the load itself fails, with the same error type
    shard.write_bytes(bytes(len(intact_bytes)))
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        export_hf(str(broken), str(out))
    (iteration / "run_config.yaml").unlink()
    with pytest.raises(CheckpointError, match="run_config.yaml is missing"):
        export_hf(str(broken), str(out))
    assert no_output_left(out)
    # an existing output needs overwrite; with it, the output is replaced
    out.mkdir()
    (out / "old").write_text("x")
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        export_hf(str(dense / "megatron"), str(out))
    assert (out / "old").exists()
    export_hf(str(dense / "megatron"), str(out), overwrite=True, verify=False)
    assert not (out / "old").exists() and (out / "model.safetensors").exists()


def test_failed_verification_writes_nothing(dense, tmp_path, monkeypatch):
    import nemo_vwn.convert.hf as conv

    real = conv.hf_logits
    monkeypatch.setattr(conv, "hf_logits", lambda m, t: (real(m, t)[0] + 1e-2, real(m, t)[1]))
    with pytest.raises(CheckpointError, match="verification failed"):
        conv.export_hf(str(dense / "megatron"), str(tmp_path / "out"))
    assert no_output_left(tmp_path / "out")
    with pytest.raises(CheckpointError, match="verification failed"):
        conv.import_hf(str(dense / "hf"), str(tmp_path / "back"))
    assert no_output_left(tmp_path / "back")


def edit_config(hf_dir, **changes):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("problem,message", [
    ("missing", "HF model directory not found"),
    ("no_config", "not a Hugging Face model directory"),
    ("bad_json", "corrupted HF config"),
    ("other_model", "model_type 'llama'; import-hf reads VWN models"),
    ("invalid_field", "virtual_width_m=3 must divide hidden_size=64"),
    ("no_weights", "has no weights"),
    ("truncated_weights", "corrupted weight file"),
    ("config_vs_weights", "weights do not match the config .*shape .*attn_ghc.static_alpha"),
    ("missing_tensor", "weights do not match the config .*missing: model.layers.1.mlp.down_proj"),
    ("expected_n", "config mismatch: virtual_width_n: checkpoint 4 != requested 8"),
    ("expected_m_hidden", "hidden_size: checkpoint 64 != requested 128, virtual_width_m: "
                          "checkpoint 2 != requested 1"),
    ("expected_experts", "num_moe_experts: checkpoint 0 != requested 4"),
    ("exists", "exists; pass --overwrite"),
])
def test_import_errors(dense, tmp_path, problem, message):
    from safetensors.torch import load_file, save_file

    from nemo_vwn.convert.hf import import_hf

    hf_dir = tmp_path / "hf"
    if problem != "missing":
        copy_tree(dense / "hf", hf_dir)
    expected = {"expected_n": {"virtual_width_n": 8},
                "expected_m_hidden": {"virtual_width_m": 1, "hidden_size": 128},
                "expected_experts": {"num_moe_experts": 4}}.get(problem)
    weights = hf_dir / "model.safetensors"
    if problem == "no_config":
        (hf_dir / "config.json").unlink()
    elif problem == "bad_json":
        (hf_dir / "config.json").write_text("{not json")
    elif problem == "other_model":
        edit_config(hf_dir, model_type="llama")
    elif problem == "invalid_field":
        edit_config(hf_dir, virtual_width_m=3)
    elif problem == "no_weights":
        weights.unlink()
    elif problem == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif problem == "config_vs_weights":
        edit_config(hf_dir, virtual_width_n=6)  # weights are for n = 4
    elif problem == "missing_tensor":
        tensors = load_file(str(weights))
        del tensors["model.layers.1.mlp.down_proj.weight"]
        save_file(tensors, str(weights), metadata={"format": "pt"})
    out = tmp_path / "out"
    if problem == "exists":
        out.mkdir()
    with pytest.raises(CheckpointError, match=message):
        import_hf(str(hf_dir), str(out), expected=expected)
    if problem == "exists":
        assert out.exists() and not list(out.iterdir())
    else:
        assert no_output_left(out)


def test_unsupported_megatron_features_are_named():
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    from nemo_vwn.hf.bridge import UnsupportedFeatureError, hf_config_from_provider

    provider = provider_for("moe_mtp")
    provider.moe_shared_expert_intermediate_size = 64
    provider.rotary_interleaved = True
    provider.activation_func = torch.tanh
    with pytest.raises(UnsupportedFeatureError, match="rotary_interleaved=True.*"
                                                      "moe_shared_expert_intermediate_size=64.*"
                                                      "activation_func='tanh' has no HF"):
        hf_config_from_provider(provider)
    with pytest.raises(UnsupportedFeatureError, match="not a VWN config"):
        hf_config_from_provider(GPTModelProvider(num_layers=2, hidden_size=64,
                                                 num_attention_heads=4))


def test_hf_config_validation():
    from nemo_vwn.hf import VWNHFConfig

    with pytest.raises(ValueError, match="virtual_width_n=1 must be >= virtual_width_m=2"):
        VWNHFConfig(hidden_size=64, virtual_width_n=1, virtual_width_m=2)
    with pytest.raises(ValueError, match="'norm_linear' needs an integer r"):
        VWNHFConfig(hidden_size=64, virtual_width_n=3, virtual_width_m=2)
    with pytest.raises(ValueError, match="tie_word_embeddings=True needs vwn_embedding"):
        VWNHFConfig(hidden_size=64, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="hidden_act='tanh' is not one of"):
        VWNHFConfig(hidden_size=64, hidden_act="tanh")


# ---------------------------------------------------------------------------------- CLI
def test_cli_export_and_import(dense, tmp_path, capsys):
    from nemo_vwn.cli import main

    out = tmp_path / "hf"
    assert main(["convert", "export-hf", "--checkpoint", str(dense / "megatron"),
                 "--output", str(out), "--n", "4", "--m", "2"]) == 0
    printed = capsys.readouterr().out
    # the report is the last thing printed (Megatron's loader prints a dict of its own earlier)
    start = [m.start() for m in re.finditer(r"(?m)^\{$", printed)][-1]
    report = json.loads(printed[start:])
    assert report["max_rel_logit_diff"] <= TOLERANCE and (out / "modeling_vwn.py").exists()
    back = tmp_path / "back"
    assert main(["convert", "import-hf", "--hf-dir", str(out), "--output", str(back),
                 "--hidden-size", "64", "--experts", "0"]) == 0
    assert (back / "latest_checkpointed_iteration.txt").exists()
    capsys.readouterr()
    assert main(["convert", "import-hf", "--hf-dir", str(out), "--output", str(back)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().out
    assert main(["convert", "export-hf", "--checkpoint", str(dense / "megatron"),
                 "--output", str(tmp_path / "x"), "--n", "6"]) == 2
    assert "virtual_width_n: checkpoint 4 != requested 6" in capsys.readouterr().out
