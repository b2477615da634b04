"""Upcycle a pretrained Hugging Face model into a VWN Megatron-Bridge checkpoint, verified.

    upcycle_hf(hf_model, output, n, m)      (nemo-vwn convert upcycle --hf-model DIR ...)

The path joins what Bridge and this package already do:

1. the HF directory's family (``model_type``) is checked against what Bridge imports and what the
   VWN layer covers (``check_hf_family``: an unknown family, or a feature such as sliding-window
   attention, is a clear error before any weight is read);
2. ``AutoBridge.from_hf_pretrained(dir)`` gives the family's own provider (e.g. Bridge's OLMoE
   provider), built for this machine with one rank (``nemo_vwn.convert.models``) and loaded with
   the HF weights through the family's parameter mappings: the *baseline*;
3. ``nemo_vwn.bridge.to_vwn_provider`` makes its VWN variant (same backbone, identity collapse
   init), ``nemo_vwn.convert.upcycle.upcycle_weights`` the function-preserving VWN weights (the
   same choices as ``nemo-vwn convert upcycle --checkpoint``);
4. verification (``nemo_vwn.convert.verify``) on a fixed probe batch: the VWN model's logits
   against the baseline's (exact with the linear collapse) and against the original HF model's
   own ``transformers`` forward (relative ``HF_TOLERANCE``: the two frameworks round differently);
5. only then Bridge's ``save_megatron_model`` writes a ``torch_dist`` checkpoint (weights + run
   config, the HF tokenizer's metadata when the directory has one) into ``atomic_output``.

Continue pretraining from it with ``nemo-vwn pretrain --recipe R --from <output>`` (Bridge's
``checkpoint.pretrained_checkpoint``; the model is the checkpoint's, the training settings the
recipe's: ``nemo_vwn.recipes.continued``).
"""

from __future__ import annotations

import copy
import os
import time

import torch

from nemo_vwn.convert.checkpoint import CheckpointError, atomic_output
from nemo_vwn.convert.hf_dir import read_hf_config_json
from nemo_vwn.convert.models import (
    apply_overrides,
    build_models,
    hf_logits,
    megatron_logits,
    probe_batch,
    runtime_overrides,
    single_process_megatron,
)
from nemo_vwn.convert.verify import verify_logits

HF_TOLERANCE = 1e-4
"""Max |Δlogit| between the upcycled Megatron model and the HF model (fp32), relative to
max(1, max |logit|): the same function, computed by two frameworks with differently ordered fp32
reductions; a mapping error moves logits by O(1)."""

PROBE_TOKENS = 16

FAMILIES = {
    "llama": "Llama 2 / 3 / 3.x",
    "qwen2": "Qwen2 / Qwen2.5 dense",
    "qwen3": "Qwen3 dense",
    "qwen3_moe": "Qwen3-MoE",
    "olmoe": "OLMoE",
    "mistral": "Mistral (without sliding window)",
}
"""HF ``model_type`` -> family: the GPT / GPT-MoE families upcycling is tested on (tests/convert/
test_upcycle_hf.py builds a tiny model of each); other families Bridge imports are refused."""

COLLAPSE_CHOICES = ("linear", "norm_linear")
EMBEDDING_CHOICES = ("wide", "factorized")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _unsupported_features(raw: dict) -> list[str]:
    """Features of an HF config that the VWN upcycle does not cover, named."""
    problems = []
    layer_types = raw.get("layer_types") or []
    windowed = raw.get("sliding_window") is not None and raw.get("use_sliding_window", True)
    if windowed or any("sliding" in str(t) for t in layer_types):
        problems.append(f"sliding-window attention (use_sliding_window="
                        f"{raw.get('use_sliding_window')!r}, sliding_window="
                        f"{raw.get('sliding_window')!r})")
    if raw.get("kv_lora_rank") or raw.get("q_lora_rank"):
        problems.append("multi-latent attention (MLA: kv_lora_rank / q_lora_rank)")
    rope = raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if rope_type not in (None, "default", "llama3", "linear"):
        problems.append(f"rope_scaling type {rope_type!r} (Bridge maps llama3 / linear only)")
    return problems


def check_hf_family(hf_dir: str) -> dict:
    """The raw config of an HF directory whose family can be upcycled; raises naming the family
    or the unsupported feature otherwise (before any weight is read)."""
    raw = read_hf_config_json(hf_dir)
    model_type = raw.get("model_type")
    if model_type == "vwn":
        raise CheckpointError(f"{hf_dir} is already a VWN model (model_type 'vwn'); import it "
                              "with nemo-vwn convert import-hf")
    problems = _unsupported_features(raw)
    if problems:  # named first: they are why a family (e.g. DeepSeek-V3's MLA) is not covered
        raise CheckpointError(f"{hf_dir} (model_type {model_type!r}) uses what VWN upcycling "
                              f"does not cover: {'; '.join(problems)}")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{hf_dir}: model_type {model_type!r} is not a family VWN upcycling supports; "
            f"supported: {', '.join(f'{k} ({v})' for k, v in FAMILIES.items())}")
    return raw


def check_upcycle_arguments(n: int, m: int, collapse: str, embedding: str,
                            extra_slots: str) -> None:
    """Clear errors for the VWN choices before anything is loaded."""
    from nemo_vwn.convert.upcycle import EXTRA_SLOT_CHOICES

    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{name} must be a positive integer, got {value!r}")
    if n < m:
        raise CheckpointError(f"virtual_width_n={n} must be >= virtual_width_m={m}")
    for name, value, allowed in (("collapse", collapse, COLLAPSE_CHOICES),
                                 ("embedding", embedding, EMBEDDING_CHOICES),
                                 ("extra_slots", extra_slots, EXTRA_SLOT_CHOICES)):
        if value not in allowed:
            raise CheckpointError(f"{name}={value!r} is not one of {list(allowed)}")


def _provider_problems(provider) -> list[str]:
    """Features Bridge set on the family's provider that the VWN upcycle does not cover."""
    problems = []
    if getattr(provider, "window_size", None) is not None:
        problems.append(f"sliding-window attention (window_size={provider.window_size})")
    if getattr(provider, "multi_latent_attention", False):
        problems.append("multi-latent attention (MLA)")
    if getattr(provider, "heterogeneous_block_specs", False):
        problems.append("heterogeneous layers")
    return problems


def use_local_layer_spec(provider) -> None:
    """Without Transformer Engine (``transformer_impl="local"``): the family's layer spec with
    megatron's local modules (Bridge's family specs are built from TE modules)."""
    if getattr(provider, "transformer_impl", None) != "local":
        return
    from megatron.bridge.models import gpt_provider
    from megatron.bridge.models.olmoe.olmoe_provider import olmoe_layer_spec

    base = provider.transformer_layer_spec
    if base in (gpt_provider.default_layer_spec, gpt_provider.transformer_engine_layer_spec):
        provider.transformer_layer_spec = gpt_provider.local_layer_spec
    elif base is olmoe_layer_spec:
        raise CheckpointError(
            "OLMoE without Transformer Engine: Megatron-Bridge's OLMoE parameter mapping covers "
            "only grouped-GEMM experts (moe_grouped_gemm with TE), not megatron's local experts; "
            "upcycle OLMoE on a machine with Transformer Engine")
    elif base is not gpt_provider.local_layer_spec:
        name = getattr(base, "__qualname__", type(base).__name__)
        raise CheckpointError(f"the family's layer spec {name} needs Transformer Engine, which "
                              "this machine lacks; upcycle it on a machine with TE")


def _load_hf_reference(hf_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                 local_files_only=True)
    return model.eval()


def upcycle_hf(hf_model: str, output: str, n: int, m: int, dynamic: bool = True,
               collapse: str = "linear", embedding: str = "wide", extra_slots: str = "random",
               overwrite: bool = False, seed: int = 1234,
               tolerance: float = HF_TOLERANCE) -> dict:
    """Upcycle the HF model directory ``hf_model`` into a VWN checkpoint at ``output``.

    ``n``, ``m``: ``virtual_width_n`` / ``virtual_width_m`` (r = n/m); ``dynamic``: DGHC;
    ``collapse``, ``embedding``, ``extra_slots``: as ``nemo_vwn.convert.upcycle``. Returns a
    report with the max logit differences (against the Megatron baseline and the HF model) and
    the VWN fields to train with.
    """
    from nemo_vwn.runtime import prepare_runtime

    start = time.perf_counter()
    check_upcycle_arguments(n, m, collapse, embedding, extra_slots)
    raw = check_hf_family(hf_model)
    if os.path.exists(output) and not overwrite:
        raise CheckpointError(f"output {os.path.abspath(output)} exists; pass --overwrite to "
                              "replace it")
    prepare_runtime()
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge
    from megatron.bridge.training.model_load_save import save_megatron_model

    from nemo_vwn.convert.upcycle import upcycle_weights
    from nemo_vwn.convert.upcycle_checkpoint import build_vwn_model, upcycle_tolerance

    with single_process_megatron():
        try:
            bridge = AutoBridge.from_hf_pretrained(hf_model, torch_dtype=torch.float32)
            provider = bridge.to_megatron_provider(load_weights=False)
        except Exception as exc:
            raise CheckpointError(f"Megatron-Bridge cannot import {hf_model}: {exc}") from exc
        problems = _provider_problems(provider)
        if problems:
            raise CheckpointError(f"{hf_model} ({FAMILIES[raw['model_type']]}) uses what VWN "
                                  f"upcycling does not cover: {'; '.join(problems)}")
        apply_overrides(provider, runtime_overrides(provider))
        use_local_layer_spec(provider)
        provider.params_dtype, provider.bf16, provider.fp16 = torch.float32, False, False
        vwn_source = copy.deepcopy(provider)  # build_models finalizes its provider
        baseline = build_models(provider)
        try:
            bridge.load_hf_weights(baseline)
        except Exception as exc:
            raise CheckpointError(f"cannot load the weights of {hf_model}: {exc}") from exc
        vwn = build_vwn_model(vwn_source, n, m, dynamic, collapse, embedding)
        report = upcycle_weights(baseline[0], vwn, extra_slots=extra_slots,
                                 generator=torch.Generator().manual_seed(seed))
        reference = _load_hf_reference(hf_model)
        vocab = reference.config.vocab_size
        tokens = probe_batch(vocab, min(PROBE_TOKENS, raw.get("max_position_embeddings") or 16))
        hf_main, _ = hf_logits(reference, tokens)
        vwn_main = megatron_logits(vwn, tokens)[0][..., :vocab]  # drop Megatron's padded rows
        report["baseline_max_abs_logit_diff"] = verify_logits(
            megatron_logits(baseline[0], tokens)[0][..., :vocab], vwn_main,
            upcycle_tolerance(collapse), subject="the upcycled model",
            against="the Megatron baseline")
        report["hf_max_rel_logit_diff"] = verify_logits(
            hf_main, vwn_main, tolerance, relative=True, subject="the upcycled model",
            against=f"the HF model {hf_model}")
        tokenizer = hf_model if any(os.path.exists(os.path.join(hf_model, f))
                                    for f in TOKENIZER_FILES) else None
        with atomic_output(output, overwrite=overwrite) as tmp:
            save_megatron_model([vwn], tmp, hf_tokenizer_path=tokenizer)
    report.update(family=FAMILIES[raw["model_type"]], model_type=raw["model_type"],
                  hf_model=os.path.abspath(hf_model), output=os.path.abspath(output),
                  provider=type(vwn.config).__name__, virtual_width_n=n, virtual_width_m=m,
                  ghc_dynamic=dynamic, vwn_collapse=collapse, vwn_collapse_init="identity",
                  vwn_embedding=embedding, tokenizer=tokenizer,
                  seconds=round(time.perf_counter() - start, 2))
    return report


def supported_families() -> dict:
    """HF ``model_type`` -> family name of what ``upcycle_hf`` accepts."""
    return dict(FAMILIES)


__all__ = ["FAMILIES", "HF_TOLERANCE", "check_hf_family", "check_upcycle_arguments",
           "supported_families", "upcycle_hf"]
