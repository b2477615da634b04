"""Megatron models for the conversions: process layout, building, loading and probe logits.

Every conversion (upcycle, reshard, export-hf, import-hf, upcycle from HF) and the evaluator
share these steps:

* layout: ``init_layout`` (one rank of a TP x PP x EP group, for the multi-process conversions)
  or ``single_process_megatron`` (one rank in this process, for the HF conversions);
* building: ``runtime_overrides`` (a provider's settings for building it on this machine, one
  rank, for conversion only) and ``build_models`` (finalize + provide, eval mode);
* loading: ``load_models`` (a Bridge checkpoint at any layout) and ``load_vwn_checkpoint`` (a VWN
  checkpoint, built for this machine, one rank);
* logits: ``probe_batch`` (a fixed batch of token ids), ``probe_logits`` (the full, vocab-gathered
  logits of a model at any layout, through megatron's forward-only schedule),
  ``megatron_logits`` / ``hf_logits`` (one process, main and every MTP depth).

Comparing two sets of logits and failing clearly is ``nemo_vwn.convert.verify``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from nemo_vwn.convert.checkpoint import CheckpointError, load_provider

PROBE_SEED = 2024

TRAINING_HOOKS = ("grad_scale_func", "no_sync_func", "grad_sync_func", "param_sync_func",
                  "finalize_model_grads_func", "mtp_grad_scale_func", "moe_grad_scale_func")


# ---------------------------------------------------------------------------------- layout
def init_layout(rank: int, world_size: int, tp: int, pp: int, ep: int) -> None:
    """torch.distributed (NCCL on GPU, gloo on CPU) and megatron's TP x PP x EP groups."""
    from megatron.core import parallel_state, tensor_parallel

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                             pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=ep)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


@contextlib.contextmanager
def single_process_megatron() -> Iterator[None]:
    """torch.distributed + megatron's parallel state for one rank (reused if already set up)."""
    from nemo_vwn.runtime import single_process

    try:
        with single_process():
            yield
    except RuntimeError as err:
        if "expected one process" in str(err):
            raise CheckpointError(f"this conversion runs in one process: {err}") from None
        raise


# ---------------------------------------------------------------------------------- building
def clear_training_hooks(config) -> None:
    """A restored run config still names the training loop's hooks (loss scaling, grad sync);
    they are meaningless outside that loop."""
    for hook in TRAINING_HOOKS:
        if hasattr(config, hook):
            setattr(config, hook, None)


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
        from nemo_vwn.runtime import CPU_MODEL_SETTINGS, CPU_MOE_SETTINGS

        overrides.update(CPU_MODEL_SETTINGS, fp8=None, fp8_param=False)
        if provider.num_moe_experts:
            overrides.update(
                moe_token_dispatcher_type=CPU_MOE_SETTINGS["moe_token_dispatcher_type"],
                moe_grouped_gemm=False, moe_router_fusion=False, moe_permute_fusion=False)
    return overrides


def apply_overrides(provider, overrides: dict):
    """Set every override the provider has a field for; returns the provider."""
    for key, value in overrides.items():
        if hasattr(provider, key):
            setattr(provider, key, value)
    return provider


def build_models(provider) -> list:
    """Finalize the provider and build its model (one rank, CPU init without CUDA), eval mode."""
    from nemo_vwn.bridge.provider import without_upstream_mtp_spec

    provider.finalize()
    with without_upstream_mtp_spec():
        models = provider.provide_distributed_model(
            wrap_with_ddp=False, use_cpu_initialization=not torch.cuda.is_available())
    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return models


# ---------------------------------------------------------------------------------- loading
def load_models(path: str, tp: int, pp: int, ep: int) -> list:
    """A Bridge checkpoint's model(s) for this rank of a TP x PP x EP layout, eval mode."""
    from megatron.bridge.training.model_load_save import load_megatron_model

    overrides = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                 "expert_model_parallel_size": ep}
    if pp > 1:
        overrides["pipeline_dtype"] = torch.float32
    models = load_megatron_model(path, use_cpu_init=not torch.cuda.is_available(),
                                 skip_temp_dist_context=True, mp_overrides=overrides)
    models = models if isinstance(models, list) else [models]
    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return models


def load_vwn_checkpoint(iteration_dir: str):
    """(provider, [model]) of a VWN Bridge checkpoint, built for this machine, weights loaded."""
    from megatron.bridge.training.model_load_save import build_and_load_model
    from torch.distributed.checkpoint.api import CheckpointException

    from nemo_vwn.bridge.provider import without_upstream_mtp_spec

    provider = load_provider(iteration_dir)
    if getattr(provider, "virtual_width_n", None) is None:
        raise CheckpointError(
            f"{iteration_dir} is not a VWN checkpoint (its model is a {type(provider).__name__} "
            "without virtual_width_n); export baselines with Megatron-Bridge's own bridges")
    apply_overrides(provider, runtime_overrides(provider))
    try:
        with without_upstream_mtp_spec():
            models = build_and_load_model(iteration_dir, provider,
                                          use_cpu_init=not torch.cuda.is_available(),
                                          skip_temp_dist_context=True)
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        raise CheckpointError(f"cannot load the weights of {iteration_dir} (corrupted or "
                              f"incomplete checkpoint?): {type(exc).__name__}: {exc}") from exc
    models = models if isinstance(models, list) else [models]
    for model in models:
        model.eval()
    clear_training_hooks(models[0].config)
    return provider, models


def as_fp32(model):
    """Verification runs in fp32 (bf16/fp16 checkpoints are compared after an exact upcast)."""
    if next(model.parameters()).dtype != torch.float32:
        model.float()
        model.config.params_dtype = torch.float32
        model.config.bf16 = model.config.fp16 = False
    return model


# ---------------------------------------------------------------------------------- logits
def probe_batch(vocab_size: int, seq: int = 16, batch: int = 2) -> torch.Tensor:
    """A fixed batch of token ids [batch, seq] below ``vocab_size``."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(0, vocab_size, (batch, seq), generator=gen)


def causal_mask(seq: int, device=None) -> torch.Tensor:
    """Megatron's boolean attention mask [1, 1, s, s]: True = masked out."""
    return torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=device), diagonal=1)[None, None]


def probe_logits(models: list, seq: int) -> torch.Tensor:
    """Full (vocab-gathered) logits [b, s, V] of the probe batch on every rank of any layout
    (megatron's forward-only schedule; the last pipeline stage's output, shared with all ranks)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = models[0].config
    tokens = probe_batch(min(config.vocab_size or 0, 256) or 256, seq)
    positions = torch.arange(seq).unsqueeze(0).expand(tokens.shape[0], -1)
    mask = causal_mask(seq)

    def forward_step(data_iterator, model):
        out = model(tokens, positions, mask, runtime_gather_output=True)
        return out, lambda output: (output.float().sum() * 0, {"logits": output.detach().clone()})

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=models,
            num_microbatches=1, seq_length=seq, micro_batch_size=tokens.shape[0],
            forward_only=True)
    mine = outputs[0]["logits"] if outputs else None
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return next(g for g in gathered if g is not None)


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [b, s, V], [MTP depth j logits [b, s, V] ...]) of a (VWN)GPTModel, fp32, on CPU.

    The MTP depths of a VWN model run megatron's own ``VWNMultiTokenPredictionBlock`` on the
    decoder's last wide state (captured at the collapse's input), then the shared collapse + norm
    + LM head. A model without MTP gives an empty list."""
    b, s = tokens.shape
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    positions = torch.arange(s, device=device)[None].expand(b, s)
    mask = causal_mask(s, device)
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
    """The same as ``megatron_logits`` for a transformers causal LM (a ``VWNForCausalLM`` also
    gives its MTP depths)."""
    tokens = tokens.to(next(model.parameters()).device)
    if getattr(model.config, "mtp_num_layers", 0) and hasattr(model, "mtp_logits"):
        out = model(tokens, use_cache=False, output_mtp_logits=True)
        return out.logits.float().cpu(), [t.float().cpu() for t in (out.mtp_logits or ())]
    return model(tokens, use_cache=False).logits.float().cpu(), []
