"""Stage (d): a short bf16 training run of a small VWN GPT, torch GHC and Triton GHC side by side.

Both runs start from the same weights (the Triton model loads the torch model's state) and see the
same batches of a learnable stream (next token = (3 * token + 1) mod vocab, random start per row).
bf16 parameters with fp32 master copies and AdamW on the masters. Checks: every loss finite, the
loss falls (mean of the last quarter below the first step's by a margin), and the two backends
agree within bf16 tolerance (first step: same weights, same data; the last quarter's mean).
"""

from __future__ import annotations

FIRST_STEP_RTOL = 1e-2  # same weights and data: only the GHC arithmetic differs
LAST_QUARTER_RTOL = 5e-2  # after many bf16 steps the trajectories may drift apart a little
MIN_DROP = 0.05  # the loss must fall by at least 5 % of its first value


def _batches(steps, batch, seq, vocab, device):
    import torch

    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        tokens = [torch.randint(0, vocab, (batch, 1), generator=gen)]
        for _ in range(seq):
            tokens.append((3 * tokens[-1] + 1) % vocab)
        tokens = torch.cat(tokens, dim=1)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].to(device)))
    return out


def _train(model, batches, seq, lr, device):
    import torch
    from gpu_common import causal_mask

    params = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(masters, lr=lr, weight_decay=0.0)
    mask = causal_mask(seq, device)
    losses = []
    for input_ids, labels in batches:
        positions = torch.arange(seq, device=device)[None].expand(input_ids.shape[0], -1)
        loss = model(input_ids, positions, mask, labels=labels).float().mean()
        loss.backward()
        for p, master in zip(params, masters):
            master.grad = None if p.grad is None else p.grad.float()
            p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, master in zip(params, masters):
                p.copy_(master)
        losses.append(loss.item())
    return losses


def run(rec, cfg: dict, device: str, part: int = 0, parts: int = 1) -> None:
    import math

    import torch
    from gpu_common import build_gpt, gpt_config, model_settings

    shape = dict(num_layers=cfg["layers"], hidden_size=cfg["hidden"],
                 num_attention_heads=cfg["heads"], ffn_hidden_size=4 * cfg["hidden"],
                 normalization="RMSNorm", hidden_dropout=0.0, attention_dropout=0.0,
                 **model_settings(device, cfg["dtype"]))
    batches = _batches(cfg["steps"], cfg["batch"], cfg["seq"], cfg["vocab"], device)
    rec.info(**{k: cfg[k] for k in ("hidden", "layers", "seq", "batch", "vocab", "m", "n",
                                    "steps", "lr", "dtype")}, device=device)
    losses, weights = {}, None
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        config = gpt_config(dict(n=cfg["n"], m=cfg["m"], ghc_impl=impl), **shape)
        model = build_gpt(config, cfg["vocab"], cfg["seq"]).to(device)
        if weights is None:
            weights = {k: v.detach().clone() for k, v in model.named_parameters()}
        else:  # the same starting point: the torch model's weights, parameter by parameter
            params = dict(model.named_parameters())
            if params.keys() != weights.keys():
                raise RuntimeError(f"{impl} model's parameters differ from the torch model's")
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(weights[name])
        losses[impl] = _train(model, batches, cfg["seq"], cfg["lr"], device)
        rec.row(impl=impl, losses=losses[impl])
        del model
    quarter = max(1, cfg["steps"] // 4)
    for impl, run_losses in losses.items():
        rec.check(f"{impl}: every loss finite", all(math.isfinite(v) for v in run_losses))
        first, last = run_losses[0], sum(run_losses[-quarter:]) / quarter
        rec.check(f"{impl}: loss falls", last < (1 - MIN_DROP) * first,
                  f"first {first:.4f}, last-{quarter} mean {last:.4f}")
    tor, tri = losses["torch"], losses["triton"]
    first_rel = abs(tri[0] - tor[0]) / abs(tor[0])
    mean_tor, mean_tri = sum(tor[-quarter:]) / quarter, sum(tri[-quarter:]) / quarter
    last_rel = abs(mean_tri - mean_tor) / abs(mean_tor)
    max_rel = max(abs(a - b) / abs(b) for a, b in zip(tri, tor))
    rec.info(first_step_rel_diff=first_rel, last_quarter_rel_diff=last_rel,
             max_step_rel_diff=max_rel)
    rec.check("triton == torch, first step", first_rel < FIRST_STEP_RTOL,
              f"{first_rel:.2e} < {FIRST_STEP_RTOL:.0e}")
    rec.check("triton == torch, last quarter mean", last_rel < LAST_QUARTER_RTOL,
              f"{last_rel:.2e} < {LAST_QUARTER_RTOL:.0e}")
