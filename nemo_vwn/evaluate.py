"""Validation losses of a trained checkpoint: next-token and, for MTP models, next-(1+j)-token.

Megatron-Bridge's evaluation reports only the next-token loss (upstream logs MTP losses in
training only). This evaluator loads a checkpoint, draws the validation split of a dataset built by
``nemo-vwn data`` (the same split and seed as training) and, per token,

    next-token loss       CE(main logits_t, token_{t+1})
    next-(1+j)-token loss CE(depth-j logits_t, token_{t+1+j})   (MTP depth j = 1..k)

The depth-j logits are the shared LM head's outputs that megatron's ``process_mtp_loss`` computes
for each depth (captured with a forward hook on the output layer, in call order: depths 1..k,
then the main head), so the same code evaluates VWN and stock GPT models with MTP.
"""

from __future__ import annotations

import os
import tempfile

import torch


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [s, b, V], targets [b, s] -> per-token CE [b, s]."""
    flat = logits.float().transpose(0, 1).reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(flat, targets.reshape(-1),
                                             reduction="none").view(targets.shape)


def batch_losses(model, tokens, positions, labels, loss_mask, attention_mask):
    """(loss sums, token counts) for the main head and each MTP depth on one batch."""
    depths = model.config.mtp_num_layers or 0
    captured = []
    hook = model.output_layer.register_forward_hook(
        lambda module, args, output: captured.append(output[0].detach().clone()))  # CE is in place
    try:
        with torch.no_grad():
            main = model(tokens, positions, attention_mask, labels=labels)  # [b, s]
    finally:
        hook.remove()
    sums, counts = [(main * loss_mask).sum().item()], [loss_mask.sum().item()]
    for j in range(1, depths + 1):
        logits = captured[j - 1]  # depth j predicts token t+1+j = labels[t+j]
        target = torch.zeros_like(labels)
        target[:, :-j] = labels[:, j:]
        valid = torch.zeros_like(loss_mask)
        valid[:, :-j] = loss_mask[:, j:]
        sums.append((_ce(logits, target) * valid).sum().item())
        counts.append(valid.sum().item())
    return sums, counts


def evaluate_rank(rank: int, world_size: int, checkpoint: str, data_dir: str, seq_length: int,
                  num_samples: int = 256, batch_size: int = 8) -> dict:
    """One process: per-token validation losses of ``checkpoint`` on ``data_dir``'s valid split."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from megatron.bridge.data.utils import pretrain_train_valid_test_datasets_provider
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from nemo_vwn.convert.models import causal_mask, init_layout, load_models
    from nemo_vwn.data.bridge import dataset_config, tokenizer_config

    init_layout(rank, world_size, 1, 1, 1)
    model = load_models(checkpoint, 1, 1, 1)[0]
    depths = model.config.mtp_num_layers or 0
    with tempfile.TemporaryDirectory() as cache:
        cfg = dataset_config(data_dir, seq_length, num_workers=0, path_to_cache=cache)
        cfg.finalize()
        cfg.tokenizer = build_tokenizer(tokenizer_config(data_dir))
        _, valid, _ = pretrain_train_valid_test_datasets_provider([0, num_samples, 0], cfg)
        samples = [valid[i] for i in range(num_samples)]
    mask = causal_mask(seq_length)
    sums, counts = [0.0] * (1 + depths), [0.0] * (1 + depths)
    for start in range(0, num_samples, batch_size):
        batch = samples[start:start + batch_size]
        batch_sums, batch_counts = batch_losses(
            model, torch.stack([s["tokens"] for s in batch]),
            torch.stack([s["position_ids"] for s in batch]),
            torch.stack([s["labels"] for s in batch]),
            torch.stack([s["loss_mask"] for s in batch]).float(), mask)
        sums = [a + b for a, b in zip(sums, batch_sums)]
        counts = [a + b for a, b in zip(counts, batch_counts)]
    result = {"next_token_loss": sums[0] / counts[0], "tokens": int(counts[0]),
              # the loaded model's own size and vocab: what was trained, not what a recipe says
              "parameters": sum(p.numel() for p in model.parameters()),
              "vocab_size": model.config.vocab_size}
    for j in range(1, depths + 1):
        result[f"next_{j + 1}_token_loss"] = sums[j] / counts[j]
    return result


def evaluate_checkpoint(checkpoint: str, data_dir: str, seq_length: int, num_samples: int = 256,
                        batch_size: int = 8) -> dict:
    """``evaluate_rank`` in a fresh process (megatron's global state stays clean here)."""
    from nemo_vwn.convert.checkpoint import resolve_checkpoint
    from nemo_vwn.distributed import run_distributed

    return run_distributed(
        "nemo_vwn.evaluate:evaluate_rank", 1,
        kwargs=dict(checkpoint=resolve_checkpoint(checkpoint), data_dir=os.path.abspath(data_dir),
                    seq_length=seq_length, num_samples=num_samples, batch_size=batch_size),
        sys_path=[])[0]
