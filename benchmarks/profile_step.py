"""Where a VWN training step's extra time goes: torch.profiler on the baseline and on VWN, one run.

    .venv/bin/python benchmarks/profile_step.py --moe --m 2 --n 4 --ghc-impl compile --steps 5

Builds the same models as ``benchmarks/vwn_overhead.py`` (GPT-MoE D = 256, 4 layers, seq 256,
batch 2, fp32 on CPU), warms both up (the compiled GHC compiles there), then profiles ``--steps``
forward+backward steps of each, interleaved. Prints, per op (self CPU time, summed over the
steps, divided by the steps), the baseline's and VWN's milliseconds per step and the difference,
sorted by the difference: the ops that make up VWN's extra time. Compiled GHC regions show as
their variant's name (``nemo_vwn.kernels.ghc_compiled``). Not CI.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vwn_overhead import add_model_arguments, model_shape  # noqa: E402  (benchmarks/)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)  # the same backbone flags and shapes as vwn_overhead.py
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--ghc-impl", default="compile", choices=("torch", "compile", "auto"))
    parser.add_argument("--ghc-recompute", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from nemo_vwn import runtime

    runtime.initialize()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from nemo_vwn.builders import (
        build_stock_gpt,
        build_vwn_gpt,
        causal_mask,
        random_batch,
        stock_config,
        vwn_config,
    )

    shape = model_shape(args)
    input_ids, position_ids, labels = random_batch(args.batch, args.seq, args.vocab)
    mask = causal_mask(args.seq)
    build = dict(vocab_size=args.vocab, seq=args.seq)
    torch.manual_seed(0)
    base = build_stock_gpt(stock_config(moe=args.moe, **shape), **build)
    collapse = "linear" if args.n % args.m else "norm_linear"
    torch.manual_seed(0)
    vwn = build_vwn_gpt(vwn_config(n=args.n, m=args.m, moe=args.moe, vwn_collapse=collapse,
                                   ghc_impl=args.ghc_impl, ghc_recompute=args.ghc_recompute,
                                   **shape), **build)

    def step(model):
        model(input_ids, position_ids, mask, labels=labels).float().sum().backward()
        model.zero_grad(set_to_none=True)

    for model in (base, vwn, base, vwn):  # warm-up (and compilation)
        step(model)
    per_op = {"base": collections.Counter(), "vwn": collections.Counter()}
    wall = {"base": 0.0, "vwn": 0.0}
    for _ in range(args.steps):
        for name, model in (("base", base), ("vwn", vwn)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model)
            for event in prof.key_averages():
                per_op[name][event.key] += event.self_cpu_time_total / 1e3  # us -> ms
            wall[name] += sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    steps = args.steps
    print(f"(m,n) = ({args.m},{args.n}), ghc_impl={args.ghc_impl}, recompute="
          f"{args.ghc_recompute}, {torch.get_num_threads()} threads; ms per step (self CPU, "
          f"profiled): baseline {wall['base'] / steps:.1f}, VWN {wall['vwn'] / steps:.1f} "
          f"(x{wall['vwn'] / wall['base']:.2f})")
    keys = set(per_op["base"]) | set(per_op["vwn"])
    rows = sorted(keys, key=lambda k: per_op["base"][k] - per_op["vwn"][k])
    print("| op | baseline ms | VWN ms | extra ms | share of the extra |")
    print("|---|---|---|---|---|")
    extra_total = (wall["vwn"] - wall["base"]) / steps
    for key in rows[:args.top]:
        b, v = per_op["base"][key] / steps, per_op["vwn"][key] / steps
        print(f"| {key[:70]} | {b:.2f} | {v:.2f} | {v - b:+.2f} | "
              f"{100 * (v - b) / extra_total:.0f}% |")


if __name__ == "__main__":
    main()
