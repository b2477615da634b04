"""What VWN costs vs its baseline, side by side in one run (issue "Evidence", cost part).

    .venv/bin/python benchmarks/vwn_overhead.py [--moe] [--hidden 256] [--seq 256] [--steps 6]
    .venv/bin/python benchmarks/vwn_overhead.py --moe --device cuda --hidden 1024 --seq 2048  # GPU

For each virtual-width factor r (1.5 = (2,3), 2 = (8,16), 4 = (8,32), 8 = (8,64); ``--m 2`` uses
(2,4), (2,8), (2,16) instead) it builds the baseline GPT and the VWN model with the same backbone
and reports, as ratios to the baseline:

- parameters (wide embedding and factorized embedding);
- forward FLOPs per token of the matmuls from the paper's formulas (docs/method.md §6:
  GHC = norm 4rD + dynamic coefficients 2(2m+n)rD + width 2(m+n)rD + depth 2nD, two GHCs per
  layer; ``nemo_vwn.profiling``, checked against torch's FlopCounterMode in
  tests/test_profiling.py);
- activation bytes kept for backward of one forward (``saved_activation_bytes``: deterministic),
  GHC recompute off and on;
- step time (forward + backward, median of ``--steps`` after a warm-up, baseline and VWN steps
  interleaved so both see the same machine state) and tokens/s, recompute off and on, for each
  GHC backend of ``--ghc-impl`` (e.g. ``--ghc-impl torch compile``: side by side in one run), next
  to the bound the arithmetic alone sets: 1 + the GHC (and collapse) share of the step's FLOPs;
- on CUDA also the allocator's peak memory of a step.

fp32 on CPU (bf16 on CUDA). Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_model_arguments(parser) -> None:
    """The backbone and batch flags shared with ``benchmarks/profile_step.py``."""
    parser.add_argument("--moe", action="store_true", help="8 experts, top-2 (default: dense)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)


def model_shape(args) -> dict:
    """Backbone fields of the baseline and VWN configs from ``add_model_arguments``' flags."""
    shape = dict(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=8,
                 ffn_hidden_size=4 * args.hidden)
    if args.moe:
        shape.update(num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=args.hidden)
    return shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--m", type=int, default=8, choices=(2, 4, 8),
                        help="m of the r = 2, 4, 8 rows (r = 1.5 is always (2, 3))")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (0: no timing)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ghc-impl", nargs="+", default=["torch"],
                        choices=("torch", "triton", "compile", "compile-unfused", "auto"),
                        help="GHC backends to time, side by side (default: torch); "
                             "compile-unfused: the compiled backend with each layer's write and "
                             "next read as two calls (GHC.fuse_write_read = False)")
    parser.add_argument("--shapes", default=None,
                        help="only these (m,n) rows, e.g. '2,3;2,4' (default: all four)")
    args = parser.parse_args()

    from nemo_vwn import runtime

    runtime.initialize()
    import torch

    from nemo_vwn.builders import (
        build_stock_gpt,
        build_vwn_gpt,
        causal_mask,
        random_batch,
        stock_config,
        vwn_config,
    )
    from nemo_vwn.ghc import GHC
    from nemo_vwn.kernels.ghc_compiled import reset_compiled
    from nemo_vwn.profiling import (
        backbone_flops_per_token,
        ghc_flops_per_token,
        parameter_count,
        saved_activation_bytes,
    )

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = model_shape(args)
    if dtype == torch.bfloat16:
        shape.update(bf16=True, params_dtype=torch.bfloat16)
    batch = [t.to(device) for t in random_batch(args.batch, args.seq, args.vocab)]
    mask = causal_mask(args.seq).to(device)
    tokens_per_step = args.batch * args.seq

    def forward(model):
        input_ids, position_ids, labels = batch
        return model(input_ids, position_ids, mask, labels=labels)

    def step(model):
        forward(model).float().sum().backward()
        model.zero_grad(set_to_none=True)

    def peak_bytes(model):
        if device.type != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(model)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def median_step_seconds(models):
        """Median seconds per step of each model, steps interleaved model by model."""
        for model in models:
            step(model)  # warm-up
        times = [[] for _ in models]
        for _ in range(args.steps):
            for i, model in enumerate(models):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step(model)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[i].append(time.perf_counter() - start)
        return [statistics.median(t) for t in times]

    build = dict(vocab_size=args.vocab, seq=args.seq)
    torch.manual_seed(0)
    base_config = stock_config(moe=args.moe, **shape)
    base = build_stock_gpt(base_config, **build).to(device)
    base_params = parameter_count(base)
    base_act = saved_activation_bytes(base, lambda: forward(base))
    base_peak = peak_bytes(base)
    layer_flops = backbone_flops_per_token(base_config, args.seq)
    head_flops = 2 * args.hidden * args.vocab
    base_flops = args.layers * layer_flops + head_flops
    print(f"baseline: {'MoE 8x top-2' if args.moe else 'dense'}, D={args.hidden}, "
          f"L={args.layers}, seq={args.seq}, batch={args.batch}, vocab={args.vocab}, "
          f"{device.type} {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads: "
          f"{base_params / 1e6:.2f} M params, {base_flops / 1e6:.2f} MFLOP/token forward "
          f"(matmuls), {base_act / 2**20:.1f} MiB activations kept"
          + (f", peak {base_peak / 2**20:.0f} MiB" if base_peak else ""))
    impls = args.ghc_impl
    header = ["r", "(m,n)", "params", "params(fact.)", "GHC FLOPs", "bound", "act",
              "act+recompute", "recompute saves"]
    if args.steps:
        for impl in impls:
            header += [f"step {impl}", f"step+recompute {impl}"]
        header += ["tokens/s (base / VWN " + impls[-1] + ")"]
    if base_peak:
        header += ["peak mem", "peak+recompute"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    pairs = [(2, 3)] + [(args.m, int(args.m * r)) for r in (2, 4, 8)]
    if args.shapes:
        pairs = [tuple(int(v) for v in pair.split(",")) for pair in args.shapes.split(";")]
    for m, n in pairs:
        reset_compiled()  # each shape compiled as a one-shape training process compiles it
        collapse = "linear" if n % m else "norm_linear"
        row = [f"{n / m:g}", f"({m},{n})"]
        counts, acts, models, peaks = {}, {}, {}, {}
        for embedding in ("wide", "factorized"):
            model = build_vwn_gpt(vwn_config(n=n, m=m, moe=args.moe, vwn_collapse=collapse,
                                             vwn_embedding=embedding, **shape), **build)
            counts[embedding] = parameter_count(model)
            del model
        for impl in impls:
            for recompute in (False, True):
                torch.manual_seed(0)
                model = build_vwn_gpt(vwn_config(n=n, m=m, moe=args.moe, vwn_collapse=collapse,
                                                 ghc_recompute=recompute,
                                                 ghc_impl=impl.removesuffix("-unfused"), **shape),
                                      **build).to(device)
                if impl.endswith("-unfused"):
                    for module in model.modules():
                        if isinstance(module, GHC):
                            module.fuse_write_read = False
                acts[impl, recompute] = saved_activation_bytes(model, lambda: forward(model))
                peaks[impl, recompute] = peak_bytes(model)
                models[impl, recompute] = model
        # two GHCs per layer; the collapse (a D'->D linear) and the wider embedding lookup add
        # 2 r D^2 (norm_linear/linear collapse) per token
        ghc = 2 * args.layers * ghc_flops_per_token(args.hidden, n, m)["total"]
        collapse_flops = 2 * (n / m) * args.hidden * args.hidden
        share = (ghc + collapse_flops) / base_flops
        act = {rec: acts[impls[-1], rec] for rec in (False, True)}  # the last backend's
        row += [f"x{counts['wide'] / base_params:.3f}",
                f"x{counts['factorized'] / base_params:.3f}",
                f"+{100 * share:.1f}%", f"x{1 + share:.2f}",
                f"x{act[False] / base_act:.3f}", f"x{act[True] / base_act:.3f}",
                f"{100 * (1 - act[True] / act[False]):.1f}%"]
        if args.steps:
            keys = [(impl, rec) for impl in impls for rec in (False, True)]
            t_base, *t_vwn = median_step_seconds([base] + [models[k] for k in keys])
            row += [f"x{t / t_base:.2f}" for t in t_vwn]
            row += [f"{tokens_per_step / t_base:,.0f} / {tokens_per_step / t_vwn[-2]:,.0f}"]
        if base_peak:
            row += [f"x{peaks[impls[-1], False] / base_peak:.3f}",
                    f"x{peaks[impls[-1], True] / base_peak:.3f}"]
        print("| " + " | ".join(row) + " |", flush=True)
        del models


if __name__ == "__main__":
    main()
