"""Hugging Face export and import of VWN checkpoints through Megatron-Bridge's conversion framework.

    export_hf(checkpoint, output)  Megatron-Bridge checkpoint -> HF directory (config.json,
                                   model.safetensors, configuration_vwn.py + modeling_vwn.py with
                                   an auto_map, generation_config.json, tokenizer if known)
    import_hf(hf_dir, output)      HF directory -> Megatron-Bridge checkpoint (torch_dist)

Weights move through ``AutoBridge`` and the registered ``VWNBridge`` (nemo_vwn.hf.bridge): its
parameter mappings (QKV fusion, gated MLP, experts, GHC/collapse/MTP) do the renaming/reshaping.
Both directions are checked, and write nothing unless every check passes (``atomic_output``):

* inputs: a missing or corrupted checkpoint / HF directory (``nemo_vwn.convert.hf_dir``: an
  unreadable config or weights, a weight set that does not match the config: missing,
  unexpected or mis-shaped tensors), a checkpoint that is not VWN, Megatron features the HF class
  does not implement, and an explicitly requested ``expected`` config (n, m, hidden size,
  experts ...) that differs;
* completeness: on import every Megatron parameter is first set to NaN, so a parameter the
  mappings did not write is caught; every HF tensor must be consumed;
* function (``verify=True``): the logits of a fixed probe batch (and of every MTP depth) from the
  Megatron model and from the HF model read back from the written directory must agree within
  ``tolerance`` (fp32; see ``DEFAULT_TOLERANCE``), checked by ``nemo_vwn.convert.verify``;
* an existing output is replaced only with ``overwrite``.

Everything runs in this process (one rank, TP=PP=EP=1: torch_dist checkpoints are layout-free).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Optional

import torch

from nemo_vwn.convert.checkpoint import (
    CheckpointError,
    atomic_output,
    check_matches,
    resolve_checkpoint,
)
from nemo_vwn.convert.hf_dir import (
    check_weight_set,
    copy_tokenizer,
    expected_hf_tensors,
    hf_weight_shapes,
    load_hf_model,
    read_vwn_hf_config,
    write_hf_directory,
)
from nemo_vwn.convert.models import (
    apply_overrides,
    as_fp32,
    build_models,
    hf_logits,
    load_vwn_checkpoint,
    megatron_logits,
    probe_batch,
    runtime_overrides,
    single_process_megatron,
)
from nemo_vwn.convert.verify import compare_logits, verify_logits

PROBE_TOKENS = 16
DEFAULT_TOLERANCE = 1e-4
"""Max |Δlogit| accepted between Megatron and HF in fp32, relative to max(1, max |logit|).
Both compute the same function with differently ordered fp32 reductions (fused QKV GEMM vs three
GEMMs, megatron's baddbmm attention, token permutation in the MoE dispatcher), so only rounding may
differ, while any mapping or semantics error (a transposed or swapped tensor, a wrong norm) moves
logits by O(1) (tests/convert/test_hf.py prints the measured differences)."""

EXPECTABLE = ("virtual_width_n", "virtual_width_m", "hidden_size", "num_moe_experts",
              "num_layers", "mtp_num_layers")
"""Fields ``expected`` may pin (Megatron names), e.g. ``{"virtual_width_n": 4}``."""


def check_expected_keys(expected: Optional[dict]) -> None:
    """Raise for a field ``expected`` may not pin (only ``EXPECTABLE``)."""
    unknown = sorted(set(expected or {}) - set(EXPECTABLE))
    if unknown:
        raise CheckpointError(f"expected: unknown field(s) {unknown}; allowed: {list(EXPECTABLE)}")


def check_expected(provider, expected: Optional[dict]) -> None:
    """``check_matches`` with counts normalised: no experts / no MTP is 0 (not None)."""
    actual = {k: getattr(provider, k, None) for k in EXPECTABLE}
    for k in ("num_moe_experts", "mtp_num_layers"):
        actual[k] = actual[k] or 0
    check_matches(SimpleNamespace(**actual), expected or {})


def _refuse_existing(output: str, overwrite: bool) -> None:
    if os.path.exists(output) and not overwrite:  # fail before loading anything
        raise CheckpointError(f"output {os.path.abspath(output)} exists; pass --overwrite to "
                              "replace it")


def _probe_tokens(config, provider) -> torch.Tensor:
    return probe_batch(min(config.vocab_size, provider.vocab_size),
                       min(PROBE_TOKENS, config.max_position_embeddings))


# ---------------------------------------------------------------------------------- export
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
    check_expected_keys(expected)
    _refuse_existing(output, overwrite)
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge

    from nemo_vwn.hf.bridge import UnsupportedFeatureError, hf_config_from_provider

    with single_process_megatron():
        provider, models = load_vwn_checkpoint(iteration_dir)
        check_expected(provider, expected)
        model = models[0]
        try:
            config = hf_config_from_provider(
                provider, vocab_rows=model.embedding.word_embeddings.weight.shape[0])
        except UnsupportedFeatureError as exc:
            raise CheckpointError(f"cannot export {iteration_dir}: {exc}") from exc
        bridge = AutoBridge.from_hf_config(config)
        weights = {name: tensor for name, tensor in
                   bridge.export_hf_weights(models, cpu=True, show_progress=False)}
        check_weight_set({k: tuple(v.shape) for k, v in weights.items()},
                         expected_hf_tensors(config), f"export of {iteration_dir}")
        report = {"checkpoint": iteration_dir, "tensors": len(weights),
                  "parameters": sum(v.numel() for k, v in weights.items()
                                    if not (config.tie_word_embeddings and k == "lm_head.weight")),
                  "config": {k: getattr(config, k) for k in (
                      "virtual_width_n", "virtual_width_m", "hidden_size", "num_hidden_layers",
                      "num_experts", "mtp_num_layers", "vwn_embedding", "vwn_collapse",
                      "ghc_dynamic", "vocab_size")}}
        with atomic_output(output, overwrite=overwrite) as tmp:
            write_hf_directory(tmp, config, weights)
            report["tokenizer"] = copy_tokenizer(iteration_dir, tmp)
            if verify:
                tokens = _probe_tokens(config, provider)
                report["max_rel_logit_diff"] = verify_logits(
                    megatron_logits(as_fp32(model), tokens),
                    hf_logits(load_hf_model(tmp), tokens), tolerance, relative=True,
                    subject="the exported HF model", against="the Megatron checkpoint")
    report["output"] = os.path.abspath(output)
    return report


# ---------------------------------------------------------------------------------- import
def _import_weights(bridge, models, config, hf_dir: str) -> None:
    """Load the HF tensors into ``models``; raise for a parameter left unset or an HF tensor
    left unused."""
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
    unused = sorted(set(hf_weight_shapes(hf_dir)) - used)
    if unused:
        raise CheckpointError(f"import of {hf_dir} did not use HF tensors: "
                              f"{', '.join(unused[:8])}")


def import_hf(hf_dir: str, output: str, overwrite: bool = False, expected: Optional[dict] = None,
              verify: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Import a VWN Hugging Face directory (as written by ``export_hf``) into a Megatron-Bridge
    checkpoint at ``output`` (``output/iter_0000000``, loadable by ``load_megatron_model`` and as
    a pretrained checkpoint for training). ``expected``: Megatron fields (``EXPECTABLE``) the
    imported model must have, e.g. ``{"virtual_width_n": 4, "hidden_size": 2048}``."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    check_expected_keys(expected)
    config = read_vwn_hf_config(hf_dir)
    from nemo_vwn.hf.bridge import UnsupportedFeatureError, provider_from_hf_config

    try:
        requested = provider_from_hf_config(config)
    except (UnsupportedFeatureError, ValueError) as exc:
        raise CheckpointError(f"cannot import {hf_dir}: {exc}") from exc
    check_expected(requested, expected)
    check_weight_set(hf_weight_shapes(hf_dir), expected_hf_tensors(config), hf_dir)
    _refuse_existing(output, overwrite)
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge
    from megatron.bridge.training.model_load_save import save_megatron_model

    with single_process_megatron():
        try:
            bridge = AutoBridge.from_hf_pretrained(hf_dir, local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read {hf_dir} with Megatron-Bridge: {exc}") from exc
        provider = bridge.to_megatron_provider(load_weights=False)
        apply_overrides(provider, runtime_overrides(provider))
        models = build_models(provider)
        _import_weights(bridge, models, config, hf_dir)
        report = {"hf_dir": os.path.abspath(hf_dir), "parameters":
                  sum(p.numel() for p in models[0].parameters())}
        with atomic_output(output, overwrite=overwrite) as tmp:
            save_megatron_model(models, tmp)
            if verify:  # after saving: verification upcasts a bf16/fp16 model to fp32
                tokens = _probe_tokens(config, provider)
                report["max_rel_logit_diff"] = verify_logits(
                    hf_logits(load_hf_model(hf_dir), tokens),
                    megatron_logits(as_fp32(models[0]), tokens), tolerance, relative=True,
                    subject="the imported Megatron model", against="the HF model")
    report["output"] = os.path.abspath(output)
    return report


__all__ = ["DEFAULT_TOLERANCE", "EXPECTABLE", "check_expected", "check_expected_keys",
           "compare_logits", "export_hf", "hf_logits", "import_hf", "megatron_logits",
           "probe_batch", "runtime_overrides"]
