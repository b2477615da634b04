"""Stage (c): a VWN GPT-MoE against its baseline twin (same backbone, megatron's GPTModel).

For each r (paper shapes), backend and GHC recompute off/on: fwd + bwd step time (median of
interleaved rounds: baseline and the r's variants step in turn, so drift hits all alike), tokens/s,
the allocator's peak above the resident memory (CUDA), and next to each measured time ratio the
roofline ratio (baseline time + the extra bytes at copy bandwidth, ``vwn_extra_bytes``).
issue 18's target: the measured overhead within 1.25x of what the extra bytes alone cost.
"""

from __future__ import annotations

import statistics
import time


def _step(model, batch, mask):
    input_ids, position_ids, labels = batch
    model(input_ids, position_ids, mask, labels=labels).float().mean().backward()
    model.zero_grad(set_to_none=True)  # only parameters stay resident between steps


def _timed_step(model, batch, mask, device):
    import torch
    from gpu_common import synchronize

    synchronize(device)
    resident = peak = None
    if device == "cuda":
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    _step(model, batch, mask)
    synchronize(device)
    seconds = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - resident
    return seconds, peak


def run(rec, cfg: dict, device: str, part: int = 0, parts: int = 1) -> None:
    import torch
    from gpu_common import (
        backends,
        build_gpt,
        causal_mask,
        copy_bandwidth,
        dtype_of,
        gpt_config,
        model_settings,
        moe_settings,
        vwn_extra_bytes,
    )

    D, L, seq, batch, vocab = cfg["hidden"], cfg["layers"], cfg["seq"], cfg["batch"], cfg["vocab"]
    elem = torch.finfo(dtype_of(cfg["dtype"])).bits // 8
    shape = dict(num_layers=L, hidden_size=D, num_attention_heads=cfg["heads"],
                 ffn_hidden_size=4 * D, normalization="RMSNorm", hidden_dropout=0.0,
                 attention_dropout=0.0, **model_settings(device, cfg["dtype"]),
                 **moe_settings(cfg["experts"], cfg["topk"], cfg["moe_ffn"]))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    data = (tokens[:, :-1].to(device), torch.arange(seq, device=device)[None].expand(batch, -1),
            tokens[:, 1:].to(device))
    mask = causal_mask(seq, device)
    copy_bps = copy_bandwidth(device, cfg["copy_mib"])
    rec.info(copy_GBps=copy_bps / 1e9, tokens_per_step=batch * seq, hidden=D, layers=L, seq=seq,
             batch=batch, vocab=vocab, experts=cfg["experts"], topk=cfg["topk"],
             dtype=cfg["dtype"], backends=backends(), device=device)
    torch.manual_seed(0)
    base = build_gpt(gpt_config(None, **shape), vocab, seq).to(device)
    _step(base, data, mask)  # warm-up
    for m, n in cfg["shapes"]:
        variants = []
        for impl in backends():
            for recompute in cfg["recompute"]:
                torch.manual_seed(0)
                config = gpt_config(dict(n=n, m=m, ghc_impl=impl, ghc_recompute=recompute),
                                    **shape)
                variants.append((impl, recompute, build_gpt(config, vocab, seq).to(device)))
        for _, _, model in variants:
            _step(model, data, mask)  # warm-up (and kernel compiles)
        times = {id(base): [], **{id(v[2]): [] for v in variants}}
        peaks = {}
        for _ in range(cfg["rounds"]):
            for model in [base] + [v[2] for v in variants]:
                seconds, peak = _timed_step(model, data, mask, device)
                times[id(model)].append(seconds)
                peaks[id(model)] = peak
        t_base = statistics.median(times[id(base)])
        extra = vwn_extra_bytes(m, n, D, L, batch * seq, vocab, elem)
        t_extra = extra / copy_bps
        for impl, recompute, model in variants:
            t = statistics.median(times[id(model)])
            peak, base_peak = peaks[id(model)], peaks[id(base)]
            rec.row(m=m, n=n, r=n / m, impl=impl, recompute=recompute, step_ms=t * 1e3,
                    base_step_ms=t_base * 1e3, step_ratio=t / t_base,
                    roofline_ratio=(t_base + t_extra) / t_base, extra_GB=extra / 1e9,
                    overhead_vs_roofline=(t - t_base) / t_extra,
                    tokens_per_s=batch * seq / t, base_tokens_per_s=batch * seq / t_base,
                    peak_MB=None if peak is None else peak / 1e6,
                    peak_ratio=None if peak is None else peak / base_peak)
        del variants, model
        if device == "cuda":
            torch.cuda.empty_cache()
