"""Upcycling pretrained Hugging Face models into VWN checkpoints (nemo_vwn.convert.upcycle_hf).

No downloads: each family's model is made here from its transformers config class with random
weights (perturbed around the init so that norms and biases are not at identity / zero) and saved
with ``save_pretrained``. Each is upcycled at r = 1.5 (n, m = 3, 2) or r = 2 (4, 2) and its logits
compared with (a) the Megatron baseline Bridge imported and (b) the HF model's own transformers
forward. Every error path writes nothing.
"""

import json
import math
import os
import time

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from nemo_vwn.convert.checkpoint import CheckpointError, resolve_checkpoint  # noqa: E402

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


def family_model(family):
    """A tiny randomly initialised transformers causal LM of ``family``."""
    import transformers as tf

    classes = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        # QKV biases; a tied LM head (as Qwen2.5-0.5B), which the wide VWN table unties
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(head_dim=16)),  # QK norms
        "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(head_dim=16, **MOE)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(sliding_window=None)),
        # OLMoE's QK norms span all heads: its models (and Bridge's mapping) have no GQA
        "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM, dict(num_experts=4, num_experts_per_tok=2,
                                                             num_key_value_heads=4)),
    }
    config_cls, model_cls, extra = classes[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**dict(TINY, **extra)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", autouse=True)
def bridge_runtime():
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()


def save_family(family, path):
    family_model(family).save_pretrained(str(path))
    return path


def no_output_left(path):
    return not path.exists() and not [p for p in path.parent.iterdir()
                                      if p.name.startswith(f".{path.name}.tmp-")]


CASES = [("llama", 3, 2), ("qwen2", 4, 2), ("qwen3", 3, 2), ("qwen3_moe", 4, 2),
         ("mistral", 3, 2)]  # the CLI test runs llama at r = 2; OLMoE: see below
_UPCYCLED = {}


def upcycled(family, n, m, tmp_path_factory):
    """(root, report) of ``family`` upcycled at (n, m) (built once per session)."""
    from nemo_vwn.convert.upcycle_hf import upcycle_hf

    if (family, n, m) not in _UPCYCLED:
        root = tmp_path_factory.mktemp(f"{family}_{n}x{m}")
        hf_dir = save_family(family, root / "hf")
        _UPCYCLED[(family, n, m)] = root, upcycle_hf(str(hf_dir), str(root / "vwn"), n=n, m=m)
    return _UPCYCLED[(family, n, m)]


@pytest.mark.parametrize("family,n,m", CASES, ids=[f"{f}-{n}x{m}" for f, n, m in CASES])
def test_upcycled_hf_model_matches_its_logits(megatron_cpu_session, tmp_path_factory, family, n,
                                              m):
    from nemo_vwn.convert.upcycle_hf import HF_TOLERANCE

    root, report = upcycled(family, n, m, tmp_path_factory)
    print(f"{family} r={n / m:g}: HF max rel logit diff {report['hf_max_rel_logit_diff']:.3g}, "
          f"baseline diff {report['baseline_max_abs_logit_diff']:.3g}, {report['seconds']} s")
    assert report["baseline_max_abs_logit_diff"] == 0.0  # linear collapse: bit for bit
    assert report["hf_max_rel_logit_diff"] <= HF_TOLERANCE
    assert report["model_type"] == family and report["virtual_width_n"] == n
    assert os.path.exists(os.path.join(resolve_checkpoint(str(root / "vwn")), "metadata.json"))


TRAIN_STEPS = 6
GATED_BY_DYNAMIC_PROJ = ("norm_weight", "dynamic_alpha_scale", "dynamic_beta_scale")
"""DGHC parameters whose gradient flows only through ``dynamic_*_proj`` (method section 3: the
dynamic part is ``scale * tanh(rmsnorm(H; norm_weight) @ proj)``). ``proj`` starts at zero (the
function-preserving upcycle keeps GHC's zero init), so at step 1 their gradient is exactly zero;
from step 2 (``proj`` moved) it is not."""


@pytest.mark.parametrize("family,n,m", CASES, ids=[f"{f}-{n}x{m}" for f, n, m in CASES])
def test_upcycled_checkpoint_trains(megatron_cpu_session, tmp_path_factory, family, n, m):
    """A few AdamW steps of megatron's own forward + per-token loss on one fixed batch lower the
    loss of the loaded checkpoint; step 1 gives every non-expert parameter (the GHC / collapse /
    wide-embedding ones included) a finite, non-zero gradient (experts may receive no token).

    The batch is fixed and nothing is random in the forward (no dropout), so the loss of a model
    whose updates did not reach it would not move at all: any fall is the optimizer's. The margin
    (a fall of at least 20 % of the first loss within 6 steps) is far above zero and well below
    what a fixed batch of 128 random tokens, memorised at lr 1e-2, gives every family."""
    from nemo_vwn.convert.models import causal_mask, load_vwn_checkpoint, single_process_megatron

    root, _ = upcycled(family, n, m, tmp_path_factory)
    started = time.monotonic()
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, TINY["vocab_size"], (4, 33), generator=gen)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s]
    positions = torch.arange(32)[None].expand(4, 32)
    with single_process_megatron():
        _, (model,) = load_vwn_checkpoint(resolve_checkpoint(str(root / "vwn")))
        model.train()
        params = dict(model.named_parameters())
        assert any("ghc" in name for name in params) and all(p.requires_grad
                                                             for p in params.values())
        optimizer = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.0)
        losses = []
        for step in range(1, TRAIN_STEPS + 1):
            loss = model(inputs, positions, causal_mask(32), labels=labels).float().mean()
            optimizer.zero_grad()
            loss.backward()
            assert torch.isfinite(loss), (family, step, loss)
            grads = {name: p.grad for name, p in params.items()}
            bad = [name for name, g in grads.items() if g is not None and
                   not torch.isfinite(g).all()]
            assert not bad, f"{family} step {step}: non-finite gradients of {bad}"
            if step <= 2:
                gated = {name for name in params if name.endswith(GATED_BY_DYNAMIC_PROJ)}
                if step == 1:
                    assert all(params[name.rsplit(".", 1)[0] + ".dynamic_alpha_proj"]
                               .abs().max() == 0 for name in gated)
                expected = [name for name in params if ".experts." not in name and
                            (step == 2 or name not in gated)]
                zero = [name for name in expected
                        if grads[name] is None or grads[name].abs().max() == 0]
                assert not zero, f"{family} step {step}: no gradient reached {zero}"
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():  # after the last update
            losses.append(model(inputs, positions, causal_mask(32), labels=labels).mean().item())
    seconds = time.monotonic() - started
    print(f"{family} r={n / m:g}: loss before {losses[0]:.3f}, after {TRAIN_STEPS} AdamW steps "
          f"{losses[-1]:.3f} ({' -> '.join(f'{x:.3f}' for x in losses)}), "
          f"load + train {seconds:.1f} s")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses


def test_upcycled_checkpoint_loads_with_the_verified_function(megatron_cpu_session,
                                                              tmp_path_factory):
    """The saved checkpoint is a VWN checkpoint whose logits equal the HF model's, in one
    process and at TP=2."""
    from transformers import AutoModelForCausalLM

    from nemo_vwn.convert.models import (
        hf_logits,
        load_vwn_checkpoint,
        megatron_logits,
        probe_batch,
        single_process_megatron,
    )
    from nemo_vwn.convert.reshard import reshard

    root, report = upcycled("qwen3_moe", 4, 2, tmp_path_factory)
    with single_process_megatron():
        provider, (model,) = load_vwn_checkpoint(resolve_checkpoint(str(root / "vwn")))
        assert (provider.virtual_width_n, provider.virtual_width_m) == (4, 2)
        assert provider.num_moe_experts == 4
        tokens = probe_batch(TINY["vocab_size"], 16)
        ours = megatron_logits(model, tokens)[0][..., :TINY["vocab_size"]]
    reference = AutoModelForCausalLM.from_pretrained(str(root / "hf"), dtype=torch.float32)
    main, _ = hf_logits(reference.eval(), tokens)
    scale = max(1.0, main.abs().max().item())
    assert (ours - main).abs().max().item() / scale <= 1e-4
    # the comparison is sensitive: one changed HF expert weight moves the logits far beyond it
    with torch.no_grad():
        reference.model.layers[0].mlp.experts.gate_up_proj.add_(0.5)
    assert (ours - hf_logits(reference, tokens)[0]).abs().max().item() / scale > 1e-2
    # TP=2: the same logits as in one process, before saving and after reloading
    check = reshard(str(root / "vwn"), str(root / "tp2"), tp=2)
    assert check["target_vs_source_max_abs_diff"] <= 1e-4
    assert check["saved_vs_source_max_abs_diff"] <= 1e-4


def test_olmoe_upcycles_with_transformer_engine_and_fails_clearly_without(
        megatron_cpu_session, tmp_path_factory, tmp_path):
    """Bridge's OLMoE mapping knows only TE's grouped-GEMM expert names: with TE it upcycles
    like the others; without TE (CPU) it is a clear error before any weight is read."""
    from nemo_vwn.convert.upcycle_hf import HF_TOLERANCE, upcycle_hf
    from nemo_vwn.layer_specs import HAVE_TE

    if HAVE_TE and torch.cuda.is_available():
        _, report = upcycled("olmoe", 3, 2, tmp_path_factory)
        assert report["hf_max_rel_logit_diff"] <= HF_TOLERANCE
        return
    hf_dir = save_family("olmoe", tmp_path / "hf")
    with pytest.raises(CheckpointError, match="OLMoE without Transformer Engine"):
        upcycle_hf(str(hf_dir), str(tmp_path / "out"), n=3, m=2)
    assert no_output_left(tmp_path / "out")


def test_cli_upcycles_an_hf_model(megatron_cpu_session, tmp_path, capsys):
    from nemo_vwn.cli import main

    hf_dir = save_family("llama", tmp_path / "hf")
    status = main(["convert", "upcycle", "--hf-model", str(hf_dir), "--output",
                   str(tmp_path / "vwn"), "--n", "4", "--m", "2", "--static"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads(printed[printed.rindex("\n{") + 1:])
    assert report["ghc_dynamic"] is False and report["hf_max_rel_logit_diff"] <= 1e-4
    # an existing output is refused (and left as it is)
    assert main(["convert", "upcycle", "--hf-model", str(hf_dir), "--output",
                 str(tmp_path / "vwn"), "--n", "3", "--m", "2"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- errors
def write_config(path, config):
    config.save_pretrained(str(path))  # config.json only: the errors come before any weight
    return path


@pytest.mark.parametrize("problem,message", [
    ("missing", "HF model directory not found"),
    ("no_config", "not a Hugging Face model directory"),
    ("unknown_family", "model_type 'gpt2' is not a family VWN upcycling supports; supported: "
                       "llama"),
    ("mla", "uses what VWN upcycling does not cover: multi-latent attention"),
    ("sliding_window", "does not cover: sliding-window attention"),
    ("mistral_window", "does not cover: sliding-window attention .*sliding_window=8"),
    ("vwn", "already a VWN model"),
    ("n_below_m", "virtual_width_n=1 must be >= virtual_width_m=2"),
    ("bad_collapse", "collapse='none' is not one of"),
    ("exists", "exists; pass --overwrite"),
])
def test_upcycle_hf_errors(tmp_path, problem, message):
    import transformers as tf

    from nemo_vwn.convert.upcycle_hf import upcycle_hf

    hf_dir = tmp_path / "hf"
    kwargs = dict(n=4, m=2)
    if problem == "no_config":
        hf_dir.mkdir()
    elif problem == "unknown_family":
        write_config(hf_dir, tf.GPT2Config(n_layer=2, n_embd=64, n_head=4))
    elif problem == "mla":
        write_config(hf_dir, tf.DeepseekV3Config(hidden_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, kv_lora_rank=16,
                                                 q_lora_rank=16))
    elif problem == "sliding_window":
        write_config(hf_dir, tf.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=8))
    elif problem == "mistral_window":
        write_config(hf_dir, tf.MistralConfig(**TINY, sliding_window=8))
    elif problem == "vwn":
        from nemo_vwn.hf import VWNHFConfig

        write_config(hf_dir, VWNHFConfig(hidden_size=64, num_attention_heads=4))
    elif problem != "missing":
        write_config(hf_dir, tf.LlamaConfig(**TINY))
    if problem == "n_below_m":
        kwargs = dict(n=1, m=2)
    elif problem == "bad_collapse":
        kwargs["collapse"] = "none"
    out = tmp_path / "out"
    if problem == "exists":
        out.mkdir()
    with pytest.raises(CheckpointError, match=message):
        upcycle_hf(str(hf_dir), str(out), **kwargs)
    if problem == "exists":
        assert out.exists() and not list(out.iterdir())  # left as it was
    else:
        assert no_output_left(out)
