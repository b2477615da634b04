"""What the GPU acceptance check runs: its stages, their shapes and their time boxes.

Two profiles share every code path: "gpu" (the sizes issue 18 asks for, one H200, compiled Triton)
and "smoke" (tiny shapes on CPU, Triton's interpreter) that tests/scripts/test_gpu_check.py runs so
the kit does not rot between the rare GPU sessions. This module imports nothing heavy: the driver
(check.py) prints the plan and budgets the stages from it without importing torch.
"""

from __future__ import annotations

# Paper shapes (m, n): r = n/m = 1.5, 2, 4, 8.
PAPER_SHAPES = [(2, 3), (8, 16), (8, 32), (8, 64)]
# tests/kernels/test_ghc_kernels.py: 1.5x, 2x, 8x and a Hyper-Connection-like m = 1.
KERNEL_TEST_SHAPES = [(2, 3), (8, 16), (8, 64), (1, 4)]

TOTAL_BUDGET_S = 450  # issue 18: all ends within 8 minutes (the wheel install comes first)

STAGES = ("kernels", "bandwidth", "overhead", "training", "bridge")

TITLES = {
    "kernels": "(a) compiled Triton GHC kernels vs the torch reference, forward + backward",
    "bandwidth": "(b) GHC kernel bandwidth at the paper's shapes vs a device-to-device copy",
    "overhead": "(c) VWN GPT-MoE vs its baseline twin: step time, tokens/s, peak memory",
    "training": "(d) short bf16 training run: loss finite and falling, Triton == torch",
    "bridge": "(e) Megatron-Bridge pretrain() on mock data",
}

PROFILES = {
    "gpu": {
        "kernels": dict(
            shapes=KERNEL_TEST_SHAPES, dynamic=[False, True], dtypes=["float32", "bfloat16"],
            tokens=(5, 2), d=20,  # 10 tokens, d = 20: a partial d-tile (as tests/kernels)
            extra=[  # (m, n, d, s, b): the production tile over d = 72, and a large grid
                (2, 3, 72, 3, 2), (8, 16, 256, 2048, 2), (8, 64, 256, 2048, 2)],
            parts=4,  # concurrent processes (Triton compiles are CPU-bound)
        ),
        "bandwidth": dict(hidden=2048, shapes=PAPER_SHAPES, seq=4096, batch=1,
                          dtype="bfloat16", warmup=3, reps=20, copy_mib=1024),
        "overhead": dict(hidden=1024, layers=4, heads=16, seq=2048, batch=4, vocab=32768,
                         experts=8, topk=2, moe_ffn=2048, shapes=PAPER_SHAPES,
                         recompute=[False, True], rounds=4, dtype="bfloat16", copy_mib=1024),
        "training": dict(hidden=256, layers=2, heads=4, seq=256, batch=8, vocab=512, m=2, n=4,
                         steps=60, lr=3e-3, dtype="bfloat16"),
        "bridge": dict(recipe="tiny_vwn_moe_cpu", iters=4, seq=256, mbs=2),
        "timeouts": dict(kernels=95, bandwidth=75, overhead=160, training=70, bridge=50),
        "budget": TOTAL_BUDGET_S,
    },
    "smoke": {
        "kernels": dict(shapes=[(2, 3)], dynamic=[False, True], dtypes=["float32", "bfloat16"],
                        tokens=(3, 1), d=20, extra=[], parts=1),
        "bandwidth": dict(hidden=32, shapes=[(2, 3)], seq=4, batch=1, dtype="float32",
                          warmup=0, reps=1, copy_mib=1),
        "overhead": dict(hidden=32, layers=1, heads=2, seq=8, batch=1, vocab=64, experts=4,
                         topk=2, moe_ffn=32, shapes=[(2, 3)], recompute=[False, True],
                         rounds=1, dtype="bfloat16", copy_mib=1),
        "training": dict(hidden=32, layers=1, heads=2, seq=8, batch=2, vocab=32, m=2, n=4,
                         steps=4, lr=1e-2, dtype="bfloat16"),
        "bridge": dict(recipe="tiny_vwn_moe_cpu", iters=2, seq=32, mbs=1),
        # generous: ~30 s in all on an idle machine, but CI machines are shared
        "timeouts": dict(kernels=240, bandwidth=240, overhead=240, training=240, bridge=240),
        "budget": 1200,
    },
}
