"""Hugging Face export and import of VWN checkpoints through Megatron-Bridge's conversion framework.

    export_hf(checkpoint, output)  Megatron-Bridge checkpoint -> HF directory (config.json,
                                   model.safetensors, configuration_vwn.py + modeling_vwn.py with
                                   an auto_map, generation_config.json, tokenizer if known)
    import_hf(hf_dir, output)      HF directory -> Megatron-Bridge checkpoint (torch_dist)

Weights move through ``AutoBridge`` and the registered ``VWNBridge`` (nemo_vwn.hf.bridge): its
parameter mappings (QKV fusion, gated MLP, experts, GHC/collapse/MTP) do the renaming/reshaping.
Both directions are checked, and write nothing unless every check passes (``atomic_output``):

* inputs: a missing or corrupted checkpoint / HF directory (unreadable config or weights, a
  weight set that does not match the config: missing, unexpected or mis-shaped tensors), a
  checkpoint that is not VWN, Megatron features the HF class does not implement, and an explicitly
  requested ``expected`` config (n, m, hidden size, experts ...) that differs;
* completeness: on import every Megatron parameter is first set to NaN, so a parameter the
  mappings did not write is caught; every HF tensor must be consumed;
* function (``verify=True``): the logits of a fixed probe batch (and of every MTP depth) from the
  Megatron model and from the HF model read back from the written directory must agree within
  ``tolerance`` (fp32; see ``DEFAULT_TOLERANCE``);
* an existing output is replaced only with ``overwrite``.

Everything runs in this process (one rank, TP=PP=EP=1: torch_dist checkpoints are layout-free).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Optional

import torch

from nemo_vwn.convert.checkpoint import (
    CheckpointError,
    atomic_output,
    check_matches,
    load_provider,
    resolve_checkpoint,
)

PROBE_BATCH = 2
PROBE_TOKENS = 16
DEFAULT_TOLERANCE = 1e-4
"""Max |Δlogit| accepted between Megatron and HF in fp32, relative to max(1, max |logit|).
Both compute the same function with differently ordered fp32 reductions (fused QKV GEMM vs three
GEMMs, megatron's baddbmm attention, token permutation in the MoE dispatcher); measured
differences on the test models are ~1e-6, so 1e-4 leaves room for depth and width while any
mapping or semantics error (a transposed or swapped tensor, a wrong norm) moves logits by O(1)."""

EXPECTABLE = ("virtual_width_n", "virtual_width_m", "hidden_size", "num_moe_experts",
              "num_layers", "mtp_num_layers")
"""Fields ``expected`` may pin (Megatron names), e.g. ``{"virtual_width_n": 4}``."""

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------------------------- runtime
def _without_upstream_mtp_spec():
    """Bridge's provide() without its TE-only upstream MTP spec (see bridge/provider.py)."""
    from nemo_vwn.bridge.provider import _without_upstream_mtp_spec as guard

    return guard()


@contextlib.contextmanager
def _single_process_megatron():
    """torch.distributed + megatron's parallel state for one rank (reused if already set up)."""
    from nemo_vwn.runtime import single_process

    try:
        with single_process():
            yield
    except RuntimeError as err:
        if "expected one process" in str(err):
            raise CheckpointError(f"HF export/import runs in one process: {err}") from None
        raise


def runtime_overrides(provider) -> dict:
    """Provider settings for building the model on this machine, one rank, for conversion only.

    Always: TP=PP=CP=EP=1, no recompute, plain-torch GHC. Without CUDA: megatron's local modules,
    fusions off and the allgather MoE dispatcher (the CPU settings of nemo_vwn.runtime)."""
    overrides = dict(
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, context_parallel_size=1,
        expert_model_parallel_size=1, expert_tensor_parallel_size=1, sequence_parallel=False,
        virtual_pipeline_model_parallel_size=None, pipeline_model_parallel_layout=None,
        num_layers_in_first_pipeline_stage=None, num_layers_in_last_pipeline_stage=None,
        hierarchical_context_parallel_sizes=None, overlap_moe_expert_parallel_comm=False,
        delay_wgrad_compute=False, recompute_granularity=None, recompute_method=None,
        recompute_num_layers=None, ghc_recompute=False, ghc_impl="torch",
        init_model_with_meta_device=False, perform_initialization=False,
    )
    if getattr(provider, "moe_token_dispatcher_type", None) == "flex":
        overrides["moe_token_dispatcher_type"] = "allgather"
    if not torch.cuda.is_available():
        from nemo_vwn.runtime import CPU_MOE_SETTINGS, CPU_MODEL_SETTINGS

        overrides.update(CPU_MODEL_SETTINGS, fp8=None, fp8_param=False)
        if provider.num_moe_experts:
            overrides.update(moe_token_dispatcher_type=CPU_MOE_SETTINGS["moe_token_dispatcher_type"],
                             moe_grouped_gemm=False, moe_router_fusion=False,
                             moe_permute_fusion=False)
    return overrides


def _apply(provider, overrides: dict):
    for key, value in overrides.items():
        if hasattr(provider, key):
            setattr(provider, key, value)
    return provider


def _build(provider) -> list:
    """Finalize the provider and build its model (one rank, CPU init without CUDA)."""
    from nemo_vwn.convert.reshard import clear_training_hooks

    provider.finalize()
    with _without_upstream_mtp_spec():
        models = provider.provide_distributed_model(
            wrap_with_ddp=False, use_cpu_initialization=not torch.cuda.is_available())
    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return models


# ---------------------------------------------------------------------------------- logits
def probe_batch(vocab_size: int, seq: int = PROBE_TOKENS, batch: int = PROBE_BATCH):
    """A fixed batch of token ids [batch, seq] below ``vocab_size``."""
    gen = torch.Generator().manual_seed(2024)
    return torch.randint(0, vocab_size, (batch, seq), generator=gen)


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [b, s, V], [MTP depth j logits [b, s, V] ...]) of a VWNGPTModel, fp32, on CPU.

    The MTP depths run megatron's own ``VWNMultiTokenPredictionBlock`` on the decoder's last wide
    state (captured at the collapse's input), then the shared collapse + norm + LM head."""
    b, s = tokens.shape
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    positions = torch.arange(s, device=device)[None].expand(b, s)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=device), diagonal=1)[None, None]
    captured = []
    hook = model.decoder.final_layernorm.register_forward_pre_hook(
        lambda module, args: captured.append(args[0]) if not captured else None)
    try:
        logits = model(tokens, positions, mask)
    finally:
        hook.remove()
    depths = []
    if getattr(model, "mtp", None) is not None and model.config.mtp_num_layers:
        rotary = model.rotary_pos_emb(s) if model.position_embedding_type == "rope" else None
        states = model.mtp(input_ids=tokens, position_ids=positions, hidden_states=captured[0],
                           embedding=model.embedding, attention_mask=mask, rotary_pos_emb=rotary)
        weight = (model.shared_embedding_or_output_weight()
                  if model.share_embeddings_and_output_weights else None)
        for state in states:
            out, _ = model.output_layer(model.decoder.final_layernorm(state), weight=weight)
            depths.append(out.transpose(0, 1).float().cpu())
    return logits.float().cpu(), depths


@torch.no_grad()
def hf_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same as ``megatron_logits`` for a VWNForCausalLM."""
    out = model(tokens, use_cache=False, output_mtp_logits=bool(model.config.mtp_num_layers))
    return out.logits.float(), [t.float() for t in (out.mtp_logits or ())]


def compare_logits(reference, other) -> float:
    """Max |Δ| over the main and every MTP depth's logits, relative to max(1, max |logit|)."""
    (ref_main, ref_mtp), (main, mtp) = reference, other
    if len(ref_mtp) != len(mtp) or ref_main.shape != main.shape:
        return float("inf")
    worst = 0.0
    for a, b in zip([ref_main, *ref_mtp], [main, *mtp]):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            return float("inf")  # NaN/inf never passes (and max() would drop a NaN)
        scale = max(1.0, a.abs().max().item())
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


# ---------------------------------------------------------------------------------- HF side
def _hf_modules():
    import nemo_vwn.hf as hf  # registers the Auto* classes

    return hf


def _expected_hf_tensors(config) -> dict:
    """name -> shape of every tensor a VWNForCausalLM(config) loads (built on the meta device)."""
    hf = _hf_modules()
    with torch.device("meta"):
        model = hf.VWNForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _read_hf_config(hf_dir: str):
    hf = _hf_modules()
    if not os.path.exists(hf_dir):
        raise CheckpointError(f"HF model directory not found: {hf_dir}")
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"HF model path must be a directory, got a file: {hf_dir}")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"corrupted HF config {path}: {exc}") from exc
    if raw.get("model_type") != hf.VWNHFConfig.model_type:
        raise CheckpointError(f"{path} has model_type {raw.get('model_type')!r}; import-hf reads "
                              "VWN models (model_type 'vwn', as written by export-hf)")
    try:
        return hf.VWNHFConfig.from_pretrained(hf_dir, local_files_only=True)
    except Exception as exc:  # invalid field values: VWNHFConfig.validate_vwn names them
        raise CheckpointError(f"invalid HF config {path}: {exc}") from exc


def _hf_weight_shapes(hf_dir: str) -> dict:
    """name -> shape of the tensors stored in the directory's safetensors file(s) (headers only)."""
    from safetensors import safe_open

    index = os.path.join(hf_dir, HF_INDEX)
    if os.path.exists(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"corrupted weight index {index}: {exc}") from exc
    elif os.path.exists(os.path.join(hf_dir, HF_WEIGHTS)):
        files = [HF_WEIGHTS]
    else:
        raise CheckpointError(f"{hf_dir} has no weights ({HF_WEIGHTS} or {HF_INDEX})")
    shapes = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
            raise CheckpointError(f"incomplete HF model: weight file {path} is missing")
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as exc:
            raise CheckpointError(f"corrupted weight file {path}: {exc}") from exc
    return shapes


def _check_weight_set(found: dict, expected: dict, where: str) -> None:
    """Missing / unexpected / mis-shaped tensors, named, as one error."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k}: {found[k]} != {expected[k]}" for k in set(found) & set(expected)
                    if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape (stored != config)", shapes)):
            if items:
                parts.append(f"{label}: {', '.join(items[:8])}"
                             + (f" (+{len(items) - 8} more)" if len(items) > 8 else ""))
        raise CheckpointError(f"{where}: weights do not match the config (n, m, hidden size, "
                              f"experts, layers ...): " + "; ".join(parts))


def _load_hf_model(hf_dir: str, dtype=torch.float32):
    hf = _hf_modules()
    model = hf.VWNForCausalLM.from_pretrained(hf_dir, dtype=dtype, local_files_only=True)
    return model.eval()


def _write_hf_directory(tmp: str, config, weights: dict) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    hf = _hf_modules()
    config.auto_map = dict(hf.AUTO_MAP)
    config.architectures = ["VWNForCausalLM"]
    config.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, HF_WEIGHTS),
              metadata={"format": "pt"})
    source = os.path.dirname(os.path.abspath(hf.__file__))
    for name in hf.MODELING_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
    GenerationConfig.from_model_config(config).save_pretrained(tmp)


def _copy_tokenizer(iteration_dir: str, provider, tmp: str) -> Optional[str]:
    """Copy the checkpoint's HF tokenizer (a local directory named by its run config), if any."""
    try:
        from megatron.bridge.training.checkpointing import read_run_config

        tok = (read_run_config(os.path.join(iteration_dir, "run_config.yaml")) or {}).get("tokenizer")
    except Exception:
        return None
    if not isinstance(tok, dict) or tok.get("tokenizer_type") != "HuggingFaceTokenizer":
        return None
    source = tok.get("tokenizer_model")
    if not source or not os.path.isdir(str(source)):
        return None
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(tmp)
    except Exception:
        return None
    return str(source)


# ---------------------------------------------------------------------------------- export
def _load_megatron_checkpoint(iteration_dir: str):
    """(provider, [model]) of a VWN Bridge checkpoint, built for this machine, weights loaded."""
    from megatron.bridge.training.model_load_save import build_and_load_model
    from torch.distributed.checkpoint.api import CheckpointException

    provider = load_provider(iteration_dir)
    if getattr(provider, "virtual_width_n", None) is None:
        raise CheckpointError(
            f"{iteration_dir} is not a VWN checkpoint (its model is a {type(provider).__name__} "
            "without virtual_width_n); export baselines with Megatron-Bridge's own bridges")
    _apply(provider, runtime_overrides(provider))
    try:
        with _without_upstream_mtp_spec():
            models = build_and_load_model(iteration_dir, provider,
                                          use_cpu_init=not torch.cuda.is_available(),
                                          skip_temp_dist_context=True)
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        raise CheckpointError(f"cannot load the weights of {iteration_dir} (corrupted or "
                              f"incomplete checkpoint?): {type(exc).__name__}: {exc}") from exc
    models = models if isinstance(models, list) else [models]
    from nemo_vwn.convert.reshard import clear_training_hooks

    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return provider, models


def export_hf(checkpoint: str, output: str, overwrite: bool = False,
              expected: Optional[dict] = None, verify: bool = True,
              tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Export a VWN Megatron-Bridge checkpoint to a Hugging Face model directory.

    ``checkpoint``: a ``checkpoints/`` directory (its latest iteration) or an ``iter_*`` dir.
    ``expected``: Megatron fields (``EXPECTABLE``) the checkpoint must have, e.g.
    ``{"virtual_width_n": 4, "num_moe_experts": 8}``. Returns a report (dict).
    """
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    iteration_dir = resolve_checkpoint(checkpoint)
    _check_expected_keys(expected)
    if os.path.exists(output) and not overwrite:  # fail before loading anything
        raise CheckpointError(f"output {os.path.abspath(output)} exists; pass --overwrite to "
                              "replace it")
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge

    from nemo_vwn.hf.bridge import UnsupportedFeatureError, hf_config_from_provider

    with _single_process_megatron():
        provider, models = _load_megatron_checkpoint(iteration_dir)
        _check_expected(provider, expected)
        model = models[0]
        try:
            config = hf_config_from_provider(
                provider, vocab_rows=model.embedding.word_embeddings.weight.shape[0])
        except UnsupportedFeatureError as exc:
            raise CheckpointError(f"cannot export {iteration_dir}: {exc}") from exc
        bridge = AutoBridge.from_hf_config(config)
        weights = {name: tensor for name, tensor in
                   bridge.export_hf_weights(models, cpu=True, show_progress=False)}
        _check_weight_set({k: tuple(v.shape) for k, v in weights.items()},
                          _expected_hf_tensors(config), f"export of {iteration_dir}")
        report = {"checkpoint": iteration_dir, "tensors": len(weights),
                  "parameters": sum(v.numel() for k, v in weights.items()
                                    if not (config.tie_word_embeddings and k == "lm_head.weight")),
                  "config": {k: getattr(config, k) for k in (
                      "virtual_width_n", "virtual_width_m", "hidden_size", "num_hidden_layers",
                      "num_experts", "mtp_num_layers", "vwn_embedding", "vwn_collapse",
                      "ghc_dynamic", "vocab_size")}}
        with atomic_output(output, overwrite=overwrite) as tmp:
            _write_hf_directory(tmp, config, weights)
            tokenizer = _copy_tokenizer(iteration_dir, provider, tmp)
            report["tokenizer"] = tokenizer
            if verify:
                tokens = probe_batch(min(config.vocab_size, provider.vocab_size),
                                     min(PROBE_TOKENS, config.max_position_embeddings))
                reference = megatron_logits(_as_fp32(model), tokens)
                diff = compare_logits(reference, hf_logits(_load_hf_model(tmp), tokens))
                report["max_rel_logit_diff"] = diff
                if not diff <= tolerance:
                    raise CheckpointError(
                        f"verification failed: HF logits differ from Megatron's by {diff:.3g} "
                        f"(relative; tolerance {tolerance:g}); no output written")
    report["output"] = os.path.abspath(output)
    return report


def _as_fp32(model):
    """Verification runs in fp32 (bf16/fp16 checkpoints are compared after an exact upcast)."""
    if next(model.parameters()).dtype != torch.float32:
        model.float()
        model.config.params_dtype = torch.float32
        model.config.bf16 = model.config.fp16 = False
    return model


def _check_expected_keys(expected: Optional[dict]) -> None:
    unknown = sorted(set(expected or {}) - set(EXPECTABLE))
    if unknown:
        raise CheckpointError(f"expected: unknown field(s) {unknown}; allowed: {list(EXPECTABLE)}")


def _check_expected(provider, expected: Optional[dict]) -> None:
    """``check_matches`` with counts normalised: no experts / no MTP is 0 (not None)."""
    from types import SimpleNamespace

    actual = {k: getattr(provider, k, None) for k in EXPECTABLE}
    for k in ("num_moe_experts", "mtp_num_layers"):
        actual[k] = actual[k] or 0
    check_matches(SimpleNamespace(**actual), expected or {})


# ---------------------------------------------------------------------------------- import
def import_hf(hf_dir: str, output: str, overwrite: bool = False, expected: Optional[dict] = None,
              verify: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Import a VWN Hugging Face directory (as written by ``export_hf``) into a Megatron-Bridge
    checkpoint at ``output`` (``output/iter_0000000``, loadable by ``load_megatron_model`` and as
    a pretrained checkpoint for training). ``expected``: Megatron fields (``EXPECTABLE``) the
    imported model must have, e.g. ``{"virtual_width_n": 4, "hidden_size": 2048}``."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    _check_expected_keys(expected)
    config = _read_hf_config(hf_dir)
    from nemo_vwn.hf.bridge import UnsupportedFeatureError, provider_from_hf_config

    try:
        requested = provider_from_hf_config(config)
    except (UnsupportedFeatureError, ValueError) as exc:
        raise CheckpointError(f"cannot import {hf_dir}: {exc}") from exc
    _check_expected(requested, expected)
    _check_weight_set(_hf_weight_shapes(hf_dir), _expected_hf_tensors(config), hf_dir)
    if os.path.exists(output) and not overwrite:
        raise CheckpointError(f"output {os.path.abspath(output)} exists; pass --overwrite to "
                              "replace it")
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge
    from megatron.bridge.training.model_load_save import save_megatron_model

    with _single_process_megatron():
        try:
            bridge = AutoBridge.from_hf_pretrained(hf_dir, local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read {hf_dir} with Megatron-Bridge: {exc}") from exc
        provider = bridge.to_megatron_provider(load_weights=False)
        _apply(provider, runtime_overrides(provider))
        models = _build(provider)
        model = models[0]
        with torch.no_grad():  # a parameter the mappings miss stays NaN and is caught below
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
        tasks = [t for t in bridge.get_conversion_tasks(models) if t is not None]
        try:
            bridge.load_hf_weights(models)
        except Exception as exc:
            raise CheckpointError(f"cannot load the weights of {hf_dir}: {exc}") from exc
        unset = [name for name, p in model.named_parameters() if torch.isnan(p).any()]
        if unset:
            raise CheckpointError(f"import of {hf_dir} left parameters unset (no mapping or no HF "
                                  f"tensor): {', '.join(unset[:8])}")
        used = set()
        for task in tasks:
            hf_param = task.mapping.hf_param
            used.update([hf_param] if isinstance(hf_param, str) else hf_param.values())
        if config.tie_word_embeddings:
            used.add("lm_head.weight")  # the tied alias of the table
        unused = sorted(set(_hf_weight_shapes(hf_dir)) - used)
        if unused:
            raise CheckpointError(f"import of {hf_dir} did not use HF tensors: "
                                  f"{', '.join(unused[:8])}")
        report = {"hf_dir": os.path.abspath(hf_dir), "parameters":
                  sum(p.numel() for p in model.parameters())}
        with atomic_output(output, overwrite=overwrite) as tmp:
            save_megatron_model(models, tmp)
            if verify:  # after saving: verification upcasts a bf16/fp16 model to fp32
                tokens = probe_batch(min(config.vocab_size, provider.vocab_size),
                                     min(PROBE_TOKENS, config.max_position_embeddings))
                diff = compare_logits(hf_logits(_load_hf_model(hf_dir), tokens),
                                      megatron_logits(_as_fp32(model), tokens))
                report["max_rel_logit_diff"] = diff
                if not diff <= tolerance:
                    raise CheckpointError(
                        f"verification failed: Megatron logits differ from the HF model's by "
                        f"{diff:.3g} (relative; tolerance {tolerance:g}); no output written")
    report["output"] = os.path.abspath(output)
    return report


__all__ = ["DEFAULT_TOLERANCE", "EXPECTABLE", "compare_logits", "export_hf", "hf_logits",
           "import_hf", "megatron_logits", "probe_batch", "runtime_overrides"]
