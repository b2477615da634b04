"""Validation losses of a trained model: next-token and, for MTP models, next-(1+j)-token.

    nemo-vwn evaluate --checkpoint runs/x/checkpoints --hf-dir runs/x_hf --data runs/data
    evaluate_checkpoint("runs/x/checkpoints", "runs/data", seq_length=64)
    evaluate_models([("checkpoint", "runs/x/checkpoints"), ("hf", "runs/x_hf")], "runs/data", 64)

Megatron-Bridge's evaluation reports only the next-token loss (upstream logs MTP losses in
training only). This evaluator loads a Bridge checkpoint or a Hugging Face model directory
(``export-hf``'s VWN directories, or any transformers causal LM, e.g. the model a checkpoint was
upcycled from), draws the validation split of a dataset built by ``nemo-vwn data`` (the same
split and seed as training) and, per token,

    next-token loss       CE(main logits_t, token_{t+1})
    next-(1+j)-token loss CE(depth-j logits_t, token_{t+1+j})   (MTP depth j = 1..k)

For a Megatron model the depth-j logits are the shared LM head's outputs that megatron's
``process_mtp_loss`` computes for each depth (captured with a forward hook on the output layer, in
call order: depths 1..k, then the main head), so the same code evaluates VWN and stock GPT models
with MTP; for an HF model they are ``VWNForCausalLM``'s ``mtp_logits``. All models of one call are
evaluated in one fresh process on the same samples, so their losses are directly comparable.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

KINDS = ("checkpoint", "hf")


def _ce(logits, targets):
    """logits [s, b, V], targets [b, s] -> per-token CE [b, s]."""
    import torch

    flat = logits.float().transpose(0, 1).reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(flat, targets.reshape(-1),
                                             reduction="none").view(targets.shape)


def shifted_losses(depth_logits: list, labels, loss_mask, start: int = 1):
    """(loss sums, token counts) of MTP depths ``start``.. : ``depth_logits[i]`` [s, b, V] is
    depth j = start + i, which predicts token t+1+j = labels[t+j]."""
    import torch

    sums, counts = [], []
    for j, logits in enumerate(depth_logits, start=start):
        target = torch.zeros_like(labels)
        valid = torch.zeros_like(loss_mask)
        if j:
            target[:, :-j], valid[:, :-j] = labels[:, j:], loss_mask[:, j:]
        else:
            target, valid = labels, loss_mask
        sums.append((_ce(logits, target) * valid).sum().item())
        counts.append(valid.sum().item())
    return sums, counts


def batch_losses(model, tokens, positions, labels, loss_mask, attention_mask):
    """(loss sums, token counts) for the main head and each MTP depth on one batch."""
    import torch

    depths = model.config.mtp_num_layers or 0
    captured = []
    hook = model.output_layer.register_forward_hook(
        lambda module, args, output: captured.append(output[0].detach().clone()))  # CE is in place
    try:
        with torch.no_grad():
            main = model(tokens, positions, attention_mask, labels=labels)  # [b, s]
    finally:
        hook.remove()
    sums, counts = shifted_losses(captured[:depths], labels, loss_mask)
    return [(main * loss_mask).sum().item()] + sums, [loss_mask.sum().item()] + counts


def hf_batch_losses(model, tokens, labels, loss_mask):
    """The same for a transformers causal LM (``VWNForCausalLM``: its MTP depths too)."""
    from nemo_vwn.convert.models import hf_logits

    main, depths = hf_logits(model, tokens)  # [b, s, V] each
    return shifted_losses([t.transpose(0, 1) for t in [main, *depths]], labels, loss_mask,
                          start=0)


def validation_samples(data_dir: str, seq_length: int, num_samples: int) -> list:
    """The first ``num_samples`` samples of ``data_dir``'s validation split (as training draws
    them: Bridge's dataset provider, the dataset config of ``nemo_vwn.data.bridge``)."""
    from megatron.bridge.data.utils import pretrain_train_valid_test_datasets_provider
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from nemo_vwn.data.bridge import dataset_config, tokenizer_config

    with tempfile.TemporaryDirectory() as cache:
        cfg = dataset_config(data_dir, seq_length, num_workers=0, path_to_cache=cache)
        cfg.finalize()
        cfg.tokenizer = build_tokenizer(tokenizer_config(data_dir))
        _, valid, _ = pretrain_train_valid_test_datasets_provider([0, num_samples, 0], cfg)
        return [valid[i] for i in range(num_samples)]


def _load_hf(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    from nemo_vwn.convert.hf_dir import load_hf_model, read_hf_config_json

    if read_hf_config_json(path).get("model_type") == "vwn":
        return load_hf_model(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                local_files_only=True).eval()


def evaluate_models_rank(rank: int, world_size: int, models: Sequence, data_dir: str,
                         seq_length: int, num_samples: int = 256, batch_size: int = 8) -> list:
    """One process: per-token validation losses of each ``(kind, path)`` in ``models`` (kind
    "checkpoint": an iteration directory; "hf": an HF model directory) on the same samples."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    import torch

    from nemo_vwn.convert.models import causal_mask, init_layout, load_models

    init_layout(rank, world_size, 1, 1, 1)
    samples = validation_samples(data_dir, seq_length, num_samples)
    mask = causal_mask(seq_length)
    results = []
    for kind, path in models:
        model = load_models(path, 1, 1, 1)[0] if kind == "checkpoint" else _load_hf(path)
        sums, counts = None, None
        for start in range(0, num_samples, batch_size):
            batch = samples[start:start + batch_size]
            tokens, labels = (torch.stack([s[k] for s in batch]) for k in ("tokens", "labels"))
            loss_mask = torch.stack([s["loss_mask"] for s in batch]).float()
            if kind == "checkpoint":
                positions = torch.stack([s["position_ids"] for s in batch])
                found = batch_losses(model, tokens, positions, labels, loss_mask, mask)
            else:
                found = hf_batch_losses(model, tokens, labels, loss_mask)
            sums = found[0] if sums is None else [a + b for a, b in zip(sums, found[0])]
            counts = found[1] if counts is None else [a + b for a, b in zip(counts, found[1])]
        result = {"model": path, "kind": kind, "next_token_loss": sums[0] / counts[0],
                  "tokens": int(counts[0]),
                  # the loaded model's own size and vocab: what was trained, not what a recipe
                  # says
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "vocab_size": (getattr(model, "vocab_size", None)
                                 or getattr(model.config, "vocab_size", None))}
        for j in range(1, len(sums)):
            result[f"next_{j + 1}_token_loss"] = sums[j] / counts[j]
        results.append(result)
        del model
    return results


def check_models(models: Sequence) -> list:
    """``(kind, path)`` pairs with checkpoint paths resolved to their iteration directory; clear
    errors for an unknown kind, a missing/damaged checkpoint or a directory without config.json,
    before anything is loaded."""
    import json

    from nemo_vwn.convert.checkpoint import CheckpointError, resolve_checkpoint

    if not models:
        raise CheckpointError("nothing to evaluate: give --checkpoint DIR and/or --hf-dir DIR")
    checked = []
    for kind, path in models:
        if kind not in KINDS:
            raise CheckpointError(f"model kind {kind!r} is not one of {list(KINDS)}")
        if kind == "checkpoint":
            checked.append((kind, resolve_checkpoint(path)))
            continue
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise CheckpointError(f"--hf-dir {path} is not a Hugging Face model directory (no "
                                  "config.json)")
        try:
            with open(config) as handle:
                json.load(handle)
        except ValueError as exc:
            raise CheckpointError(f"corrupted HF config {config}: {exc}") from exc
        checked.append((kind, os.path.abspath(path)))
    return checked


def default_seq_length(models: Sequence) -> Optional[int]:
    """The sequence length of the first checkpoint among ``models`` that was trained on a dataset
    (its ``run_config.yaml``), else the first checkpoint model's (e.g. an upcycled checkpoint
    records only the model's), else None."""
    from nemo_vwn.bridge.checkpoints import read_saved_config

    found = {"dataset": None, "model": None}
    for kind, path in models:
        if kind == "checkpoint":
            saved = read_saved_config(path)
            for section in found:
                value = (saved.get(section) or {}).get("seq_length")
                found[section] = found[section] or (int(value) if value else None)
    return found["dataset"] or found["model"]


def evaluate_models(models: Sequence, data_dir: str, seq_length: Optional[int] = None,
                    num_samples: int = 256, batch_size: int = 8) -> list:
    """``evaluate_models_rank`` in a fresh process (megatron's global state stays clean here);
    ``seq_length`` None: the first checkpoint's (``default_seq_length``)."""
    from nemo_vwn.convert.checkpoint import CheckpointError
    from nemo_vwn.data.build import load_manifest
    from nemo_vwn.distributed import run_distributed

    models = check_models(models)
    load_manifest(data_dir)  # a DataError naming the directory if it is not a built dataset
    seq_length = seq_length or default_seq_length(models)
    if not seq_length:
        raise CheckpointError("--seq-length is needed: no checkpoint among the models records "
                              "the sequence length it was trained with")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("seq_length", seq_length)):
        if value < 1:
            raise CheckpointError(f"{name} must be a positive integer, got {value}")
    return run_distributed(
        "nemo_vwn.evaluate:evaluate_models_rank", 1,
        kwargs=dict(models=[list(m) for m in models], data_dir=os.path.abspath(data_dir),
                    seq_length=seq_length, num_samples=num_samples, batch_size=batch_size),
        sys_path=[])[0]


def evaluate_checkpoint(checkpoint: str, data_dir: str, seq_length: int, num_samples: int = 256,
                        batch_size: int = 8) -> dict:
    """The losses of one Bridge checkpoint (``evaluate_models``)."""
    return evaluate_models([("checkpoint", checkpoint)], data_dir, seq_length, num_samples,
                           batch_size)[0]


# --------------------------------------------------------------------------- nemo-vwn evaluate
def add_arguments(parser) -> None:
    """The ``nemo-vwn evaluate`` flags (standard library only: the parser imports no torch)."""
    parser.add_argument("--checkpoint", dest="models", action="append", metavar="DIR",
                        type=lambda path: ("checkpoint", path),
                        help="a Bridge checkpoint (checkpoints/ dir or iter_* dir); repeatable")
    parser.add_argument("--hf-dir", dest="models", action="append", metavar="DIR",
                        type=lambda path: ("hf", path),
                        help="a Hugging Face model directory (export-hf's, or any causal LM); "
                             "repeatable")
    parser.add_argument("--data", required=True, help="dataset directory from `nemo-vwn data`")
    parser.add_argument("--seq-length", type=int, default=None,
                        help="tokens per sample (default: what the first checkpoint trained "
                             "on a dataset used)")
    parser.add_argument("--num-samples", type=int, default=256,
                        help="validation samples (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)


def run_cli(args) -> int:
    """Evaluate the models of ``args``; print one JSON list (a dict per model, in order)."""
    import json
    import sys

    from nemo_vwn.bridge import console

    models = check_models(args.models or [])  # before the log and the child process
    handle, path = tempfile.mkstemp(prefix="nemo-vwn-evaluate-", suffix=".log")
    os.close(handle)
    if not args.verbose:
        console.route_output(path, python_stdout=False)
    try:
        results = evaluate_models(models, args.data, args.seq_length, args.num_samples,
                                  args.batch_size)
    finally:
        if not args.verbose:
            console.restore_output()
    print(json.dumps(results, indent=2))
    print(f"[nemo-vwn] megatron's output: {path}", file=sys.stderr)
    return 0
