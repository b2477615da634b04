"""Pieces shared by the recipes: the CPU training container and the baseline (non-VWN) layer spec.

Every recipe returns a Megatron-Bridge ``ConfigContainer``; its VWN variant and its baseline twin
differ only in the model provider (VWNModelProvider vs GPTModelProvider with the same fields).
"""

from __future__ import annotations

import os
from typing import Optional

from megatron.bridge.training.config import (
    CheckpointConfig,
    ConfigContainer,
    DistributedInitConfig,
    GPTDatasetConfig,
    LoggerConfig,
    RNGConfig,
    SchedulerConfig,
    TokenizerConfig,
    TrainingConfig,
    ValidationConfig,
)
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig

from nemo_vwn.bridge.baseline import LocalGPTModelProvider  # noqa: F401  (re-exported)
from nemo_vwn.layer_specs import HAVE_TE
from nemo_vwn.recipes import default_output_dir


def stock_layer_spec(config, vp_stage: Optional[int] = None):
    """The baseline twin's spec: upstream's per-stage GPT block spec (TE when usable)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    use_te = bool(HAVE_TE) and getattr(config, "transformer_impl", "local") == "transformer_engine"
    return get_gpt_decoder_block_spec(config, use_transformer_engine=use_te,
                                      normalization=config.normalization, vp_stage=vp_stage)


def cpu_pretrain_container(
    model,
    name: str,
    output_dir: Optional[str] = None,
    train_iters: int = 100,
    global_batch_size: int = 8,
    micro_batch_size: int = 4,
    seq_length: int = 64,
    lr: float = 3e-3,
    min_lr: float = 3e-4,
    warmup_iters: int = 10,
    eval_interval: int = 25,
    save_interval: Optional[int] = None,
    vocab_size: int = 512,
    seed: int = 1234,
) -> ConfigContainer:
    """A ConfigContainer for CPU runs: gloo, fp32, plain Adam, mock data (NullTokenizer)."""
    output_dir = output_dir or default_output_dir(name)
    model.seq_length = seq_length
    cfg = ConfigContainer(
        model=model,
        # exit_signal_handler: on SIGTERM (a scheduler's preemption) save, then exit.
        train=TrainingConfig(train_iters=train_iters, global_batch_size=global_batch_size,
                             micro_batch_size=micro_batch_size, exit_signal_handler=True),
        validation=ValidationConfig(eval_interval=eval_interval, eval_iters=2),
        optimizer=OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=0.01,
                                  adam_beta1=0.9, adam_beta2=0.95, bf16=False, fp16=False,
                                  use_distributed_optimizer=False, clip_grad=1.0),
        scheduler=SchedulerConfig(lr_decay_style="cosine", lr_warmup_iters=warmup_iters,
                                  lr_decay_iters=train_iters, start_weight_decay=0.01,
                                  end_weight_decay=0.01),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=False,
                                          grad_reduce_in_fp32=False,
                                          overlap_grad_reduce=False, overlap_param_gather=False),
        dataset=GPTDatasetConfig(random_seed=seed, seq_length=seq_length, blend=None,
                                 blend_per_split=None, split="9999,8,2", dataloader_type="single",
                                 reset_position_ids=False, reset_attention_mask=False,
                                 eod_mask_loss=False, num_workers=0),
        logger=LoggerConfig(log_interval=5, tensorboard_dir=os.path.join(output_dir, "tb")),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=vocab_size),
        # load = save: a rerun resumes (nemo-vwn points load at the newest intact iteration).
        checkpoint=CheckpointConfig(save_interval=save_interval or train_iters,
                                    save=os.path.join(output_dir, "checkpoints"),
                                    load=os.path.join(output_dir, "checkpoints"),
                                    ckpt_format="torch_dist"),
        rng=RNGConfig(seed=seed),
        dist=DistributedInitConfig(distributed_backend="gloo"),
        mixed_precision=None,
    )
    if hasattr(model, "virtual_width_n"):  # VWN weight-decay groups (nemo_vwn.optim)
        from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider

        cfg.optimizer_config_override_provider = VWNOptimizerConfigOverrideProvider()
    return cfg


def h100_pretrain_container(
    model,
    name: str,
    output_dir: Optional[str] = None,
    *,
    train_iters: int,
    global_batch_size: int,
    micro_batch_size: int,
    seq_length: int,
    lr: float,
    min_lr: float,
    warmup_iters: int,
    weight_decay: float = 0.1,
    adam_beta2: float = 0.95,
    vocab_size: int,
    seed: int = 1234,
    eval_interval: int = 2000,
    save_interval: int = 2000,
) -> ConfigContainer:
    """A ConfigContainer for H100 runs: NCCL, bf16 mixed precision, distributed Adam with cosine
    decay, Megatron DDP with overlapped grad-reduce/param-gather, torch_dist checkpoints, mock data
    with a NullTokenizer of the model's vocab size (point ``dataset``/``tokenizer`` at real data,
    e.g. ``nemo-vwn pretrain --data DIR``). The defaults follow Megatron-Bridge's own pretraining
    recipes (``megatron.bridge.recipes.common._pretrain_common``): Adam betas (0.9, 0.95),
    eps 1e-8, grad clip 1.0, grad-reduce in fp32.
    """
    output_dir = output_dir or default_output_dir(name)
    model.seq_length = seq_length
    cfg = ConfigContainer(
        model=model,
        train=TrainingConfig(train_iters=train_iters, global_batch_size=global_batch_size,
                             micro_batch_size=micro_batch_size, manual_gc=True,
                             manual_gc_interval=100, exit_signal_handler=True),
        validation=ValidationConfig(eval_interval=eval_interval, eval_iters=32),
        optimizer=OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr,
                                  weight_decay=weight_decay, adam_beta1=0.9,
                                  adam_beta2=adam_beta2, adam_eps=1e-8, bf16=True, fp16=False,
                                  use_distributed_optimizer=True, clip_grad=1.0),
        scheduler=SchedulerConfig(lr_decay_style="cosine", lr_warmup_iters=warmup_iters,
                                  lr_decay_iters=train_iters, start_weight_decay=weight_decay,
                                  end_weight_decay=weight_decay,
                                  weight_decay_incr_style="constant"),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True,
                                          overlap_grad_reduce=True, overlap_param_gather=True,
                                          check_for_nan_in_grad=True, average_in_collective=True),
        dataset=GPTDatasetConfig(random_seed=seed, seq_length=seq_length, blend=None,
                                 blend_per_split=None, split="9999,8,2", dataloader_type="single",
                                 reset_position_ids=False, reset_attention_mask=False,
                                 eod_mask_loss=False, num_workers=8, data_sharding=True,
                                 skip_getting_attention_mask_from_dataset=True),
        logger=LoggerConfig(log_interval=10, tensorboard_dir=os.path.join(output_dir, "tb")),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=vocab_size),
        checkpoint=CheckpointConfig(save_interval=save_interval,
                                    save=os.path.join(output_dir, "checkpoints"),
                                    load=os.path.join(output_dir, "checkpoints"),
                                    ckpt_format="torch_dist", fully_parallel_save=True),
        rng=RNGConfig(seed=seed),
        dist=DistributedInitConfig(),
        mixed_precision="bf16_mixed",
    )
    if hasattr(model, "virtual_width_n"):  # VWN weight-decay groups (nemo_vwn.optim)
        from nemo_vwn.bridge.optim import VWNOptimizerConfigOverrideProvider

        cfg.optimizer_config_override_provider = VWNOptimizerConfigOverrideProvider()
    return cfg
