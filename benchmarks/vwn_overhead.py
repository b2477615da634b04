"""Parameter and activation-memory overhead of VWN vs its baseline, side by side in one run.

    .venv/bin/python benchmarks/vwn_overhead.py [--moe] [--hidden 256] [--seq 256]

For each virtual-width factor r (1.5 = (2,3), 2 = (8,16), 4 = (8,32), 8 = (8,64)) it builds the
baseline GPT and the VWN model with the same backbone and reports, as ratios to the baseline:
parameters (wide embedding and factorized), and the activation bytes kept for backward of one
forward (``nemo_vwn.profiling.saved_activation_bytes``: deterministic, no GPU needed) with GHC
recompute off and on. fp32 on CPU; in bf16 the wide state halves but GHC's fp32 coefficient math
does not, so ratios shift slightly. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moe", action="store_true", help="8 experts, top-2 (default: dense)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()

    from nemo_vwn.testing.cpu import init_cpu_distributed

    init_cpu_distributed()
    import torch

    from nemo_vwn.profiling import parameter_count, saved_activation_bytes
    from nemo_vwn.testing.models import (
        build_stock_gpt,
        build_vwn_gpt,
        causal_mask,
        make_batch,
        stock_config,
        vwn_config,
    )

    shape = dict(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=8,
                 ffn_hidden_size=4 * args.hidden)
    if args.moe:
        shape.update(num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=args.hidden)
    batch = make_batch(batch_size=args.batch, seq=args.seq, vocab_size=args.vocab)
    mask = causal_mask(args.seq)

    def measure(model):
        input_ids, position_ids, labels = batch
        return saved_activation_bytes(
            model, lambda: model(input_ids, position_ids, mask, labels=labels))

    build = dict(vocab_size=args.vocab, seq=args.seq)
    torch.manual_seed(0)
    base = build_stock_gpt(stock_config(moe=args.moe, **shape), **build)
    base_params, base_act = parameter_count(base), measure(base)
    print(f"baseline: {'MoE 8x top-2' if args.moe else 'dense'}, D={args.hidden}, "
          f"L={args.layers}, seq={args.seq}, batch={args.batch}, vocab={args.vocab}: "
          f"{base_params / 1e6:.2f} M params, {base_act / 2**20:.1f} MiB activations kept")
    header = ("r", "(m,n)", "params", "params(fact.)", "act", "act+recompute", "recompute saves")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for m, n in ((2, 3), (8, 16), (8, 32), (8, 64)):
        collapse = "linear" if n % m else "norm_linear"
        row = [f"{n / m:g}", f"({m},{n})"]
        counts, acts = {}, {}
        for embedding in ("wide", "factorized"):
            model = build_vwn_gpt(vwn_config(n=n, m=m, moe=args.moe, vwn_collapse=collapse,
                                             vwn_embedding=embedding, **shape), **build)
            counts[embedding] = parameter_count(model)
        for recompute in (False, True):
            model = build_vwn_gpt(vwn_config(n=n, m=m, moe=args.moe, vwn_collapse=collapse,
                                             ghc_recompute=recompute, **shape), **build)
            acts[recompute] = measure(model)
        row += [f"x{counts['wide'] / base_params:.3f}", f"x{counts['factorized'] / base_params:.3f}",
                f"x{acts[False] / base_act:.3f}", f"x{acts[True] / base_act:.3f}",
                f"{100 * (1 - acts[True] / acts[False]):.1f}%"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
