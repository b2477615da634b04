"""Continued pretraining: a recipe's training settings on a pretrained (e.g. upcycled) checkpoint.

    nemo-vwn pretrain --recipe tiny_vwn_dense_cpu --from runs/llama_vwn --data runs/data ...
    cfg = build_continued_recipe("tiny_vwn_dense_cpu", "runs/llama_vwn", "runs/cont",
                                 ["model.tensor_model_parallel_size=2"], data_dir="runs/data")
    cfg = continue_from(llama3_8b_pretrain_config(), "runs/llama_vwn")   # any Bridge recipe

Megatron-Bridge's own field for this is ``checkpoint.pretrained_checkpoint``: when the run's load
directory holds no checkpoint, Bridge loads the model weights from it (``finetune``: no optimizer,
scheduler or RNG state; the run starts at iteration 0). ``--from DIR`` is the CLI spelling that
sets it (``checkpoint.pretrained_checkpoint=DIR`` as an override means the same). What the run is
made of:

* the model (every architecture field, the VWN fields, the layer spec) is the checkpoint's own
  provider, re-instantiated from its ``run_config.yaml``: a recipe's model fields would not match
  the weights;
* from the recipe: optimizer, schedule, data, tokenizer, checkpointing, logging, and the model's
  layout and runtime fields (``LAYOUT_FIELDS``: TP/PP/CP/EP, sequence parallel, recompute, dtype,
  sequence length, GHC backend, CPU/TE settings), then the command-line overrides (e.g.
  ``model.tensor_model_parallel_size=2``);
* a model-shape override (``SHAPE_FIELDS``) that disagrees with the checkpoint is an error before
  anything is built (``check_pretrained_checkpoint``), as is a dataset whose tokenizer has more
  tokens than the model's vocabulary.

Precedence (``nemo_vwn.bridge.resume``): resume-by-default wins. A rerun whose output directory
already holds an intact checkpoint continues from it (optimizer, schedule and data position
included) and the pretrained checkpoint is not read; ``--fresh`` moves that run aside and starts
again at iteration 0 from the pretrained weights.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

PRETRAINED_KEY = "checkpoint.pretrained_checkpoint"

LAYOUT_FIELDS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
    "expert_model_parallel_size", "expert_tensor_parallel_size", "sequence_parallel",
    "virtual_pipeline_model_parallel_size", "pipeline_model_parallel_layout",
    "num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage",
    "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split",
    "pipeline_dtype", "recompute_granularity", "recompute_method", "recompute_num_layers",
    "ghc_recompute", "ghc_impl", "params_dtype", "bf16", "fp16", "seq_length",
    # runtime: what the recipe's machine needs (nemo_vwn.runtime.CPU_MODEL_SETTINGS on CPU)
    "use_cpu_initialization", "gradient_accumulation_fusion", "bias_activation_fusion",
    "bias_dropout_fusion", "masked_softmax_fusion", "persist_layer_norm", "apply_rope_fusion",
    "transformer_impl", "attention_backend", "cross_entropy_loss_fusion",
    "moe_token_dispatcher_type", "moe_router_fusion", "moe_permute_fusion",
)
"""Model fields taken from the recipe: how the model is run, not what it computes."""

SHAPE_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
    "kv_channels", "vocab_size", "num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk",
    "virtual_width_m", "virtual_width_n", "ghc_dynamic", "vwn_embedding", "vwn_collapse",
    "mtp_num_layers", "gated_linear_unit", "add_bias_linear", "add_qkv_bias", "normalization",
    "share_embeddings_and_output_weights", "position_embedding_type",
)
"""Model fields the checkpoint fixes: an override that changes one cannot load its weights."""


def split_pretrained(pretrained: Optional[str], overrides: Sequence[str]):
    """(pretrained checkpoint or None, the other overrides): ``--from DIR`` and an override
    ``checkpoint.pretrained_checkpoint=DIR`` are the same request; two different ones an error."""
    from nemo_vwn.bridge.checkpoints import CheckpointError

    rest, named = [], []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == PRETRAINED_KEY:
            named.append(value)
        else:
            rest.append(item)
    choices = {os.path.abspath(p) for p in named + ([pretrained] if pretrained else []) if p}
    if len(choices) > 1:
        raise CheckpointError(f"--from and {PRETRAINED_KEY} name different checkpoints: "
                              f"{', '.join(sorted(choices))}; give one")
    return (choices.pop() if choices else None), rest


def check_pretrained_checkpoint(path: str, overrides: Sequence[str] = (),
                                data_dir: Optional[str] = None) -> str:
    """The intact iteration directory of ``path`` (``--from``), checked before megatron is
    imported: it exists, is a Bridge checkpoint whose shards pass the integrity check
    (``nemo_vwn.bridge.checkpoints.require_intact``), no ``model.<shape field>`` override differs
    from it, and the dataset's tokenizer fits its vocabulary."""
    import json

    import yaml

    from nemo_vwn.bridge.checkpoints import CheckpointError, read_saved_config
    from nemo_vwn.convert.checkpoint import resolve_checkpoint

    where = f"--from {path}"
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(
            os.path.join(path, "latest_checkpointed_iteration.txt")):
        raise CheckpointError(f"{where} is a Hugging Face model directory, not a Megatron-Bridge "
                              "checkpoint; upcycle it first: nemo-vwn convert upcycle "
                              f"--hf-model {path} --output OUT --n N --m M")
    try:
        iteration_dir = resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    model = read_saved_config(iteration_dir)["model"]
    wrong = []
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.lstrip("+~").partition(".")
        if section == "model" and name in SHAPE_FIELDS and name in model:
            wanted = yaml.safe_load(value) if value else None
            if wanted != model[name]:
                wrong.append(f"model.{name}={wanted!r} (the checkpoint's: {model[name]!r})")
    if wrong:
        raise CheckpointError(f"{where}: the model comes from the checkpoint, and these overrides "
                              f"change its shape: {', '.join(wrong)}; drop them")
    manifest = os.path.join(data_dir, "manifest.json") if data_dir else None
    if manifest and os.path.isfile(manifest) and model.get("vocab_size"):
        with open(manifest) as handle:
            tokens = json.load(handle).get("vocab_size")
        if tokens and tokens > model["vocab_size"]:
            raise CheckpointError(f"--data {data_dir}: its tokenizer has {tokens} tokens, more "
                                  f"than the vocabulary of {where} ({model['vocab_size']}); "
                                  "continue on data tokenized with the model's own tokenizer")
    return iteration_dir


def continue_from(cfg, checkpoint: str, overrides: Sequence[str] = ()):
    """``cfg`` (any Bridge ``ConfigContainer``) set up to continue pretraining ``checkpoint``:
    the checkpoint's model with ``cfg.model``'s ``LAYOUT_FIELDS``, ``pretrained_checkpoint`` set,
    the tokenizer kept at the model's vocabulary; then ``overrides``. Returns ``cfg``."""
    from nemo_vwn.bridge.checkpoints import CheckpointError
    from nemo_vwn.bridge.training import apply_overrides
    from nemo_vwn.convert.checkpoint import load_provider

    iteration_dir = check_pretrained_checkpoint(checkpoint, overrides)
    provider = load_provider(iteration_dir)
    for name in LAYOUT_FIELDS:
        if hasattr(cfg.model, name) and hasattr(provider, name):
            setattr(provider, name, getattr(cfg.model, name))
    if cfg.dataset is not None:
        provider.seq_length = cfg.dataset.seq_length
    saved = {name: getattr(provider, name) for name in SHAPE_FIELDS if hasattr(provider, name)}
    cfg.model = provider
    cfg.checkpoint.pretrained_checkpoint = iteration_dir
    if cfg.tokenizer is not None:
        cfg.tokenizer.use_tokenizer_vocab_size = False  # the checkpoint's vocabulary stays
        if cfg.tokenizer.tokenizer_type == "NullTokenizer":  # mock data: the model's token ids
            cfg.tokenizer.vocab_size = provider.vocab_size
    if hasattr(provider, "virtual_width_n"):  # VWN weight-decay groups (nemo_vwn.optim)
        from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider

        current = cfg.optimizer_config_override_provider
        if not isinstance(current, VWNOptimizerConfigOverrideProvider):
            cfg.optimizer_config_override_provider = VWNOptimizerConfigOverrideProvider(
                base=current)
    cfg = apply_overrides(cfg, overrides)
    changed = [f"model.{name}={getattr(cfg.model, name)!r} (the checkpoint's: {value!r})"
               for name, value in saved.items() if getattr(cfg.model, name) != value]
    if changed:
        raise CheckpointError(f"--from {checkpoint}: the model comes from the checkpoint, and "
                              f"these settings change its shape: {', '.join(changed)}")
    return cfg


def build_continued_recipe(name: str, checkpoint: str, output_dir: Optional[str] = None,
                           overrides: Sequence[str] = (), data_dir: Optional[str] = None):
    """Recipe ``name``'s ConfigContainer (on ``data_dir`` when given) continuing ``checkpoint``
    (``continue_from``): what ``nemo-vwn pretrain --recipe NAME --from CHECKPOINT`` trains."""
    from nemo_vwn.recipes import build_recipe

    cfg = build_recipe(name, output_dir, (), data_dir=data_dir)
    return continue_from(cfg, checkpoint, overrides)
