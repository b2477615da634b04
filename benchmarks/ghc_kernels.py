"""GHC kernel benchmark (not run by CI): fused Triton kernels vs the torch path vs torch.compile,
and a VWN model vs its baseline at several r, measured side by side in ONE run.

    python benchmarks/ghc_kernels.py            # GPU if present, else CPU
    python benchmarks/ghc_kernels.py --quick    # fewer shapes / fewer repeats

Sections (every number is printed; ratios are against the torch path / the baseline model):
  1. saved-for-backward bytes of one GHC (read + write) per token: torch vs triton. Device-agnostic
     (measured with torch.autograd.graph.saved_tensors_hooks); on CPU the triton path runs in
     Triton's interpreter, which this script enables before importing triton when there is no GPU.
  2. per-kernel time (read fwd, write fwd, read+write bwd) for torch eager, torch.compile and (GPU
     only) Triton; "ideal bytes" = every input read once and every output written once (METHOD.md);
     achieved GB/s = ideal bytes / time and % of the copy bandwidth measured in the same run.
  3. end-to-end: fwd+bwd step time and activation memory of a VWN GPT at several r vs the stock GPT
     with the same backbone (CUDA: peak allocated memory too). On CPU the triton GHC is not timed:
     the interpreter is a correctness tool, not a performance path — the script says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before megatron/triton are imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nemo_vwn.builders import vwn_config  # noqa: E402
from nemo_vwn.ghc import GHC  # noqa: E402
from nemo_vwn.kernels import runtime  # noqa: E402

GHC_SHAPES = [(2, 3), (8, 16), (8, 32), (8, 64)]  # (m, n): r = 1.5, 2, 4, 8


# ------------------------------------------------------------------------------------ utilities
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn, device, reps: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` (synchronised; CUDA events on GPU)."""
    return bench_stats(fn, device, reps, warmup)[0]


def bench_stats(fn, device, reps: int, warmup: int = 3) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` (synchronised; CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def copy_bandwidth(device, dtype) -> float:
    """Measured peak: bytes read + written per second by a large tensor copy."""
    numel = (256 if device.type == "cuda" else 32) * 2**20
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    sec = bench(lambda: dst.copy_(src), device, reps=10)
    return 2 * src.numel() * src.element_size() / sec


class SavedBytes:
    """Sum of distinct storages saved for backward (parameters excluded) inside the context."""

    def __init__(self, exclude=()):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.storages = {}

    def __enter__(self):
        def pack(t):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.exclude:
                    self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        self.ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def make_ghc(m, n, d, impl, device, dtype=torch.float32):
    config = vwn_config(n=n, m=m, hidden_size=m * d, ghc_impl=impl,
                        vwn_collapse="linear" if n != m else "none")
    ghc = GHC(config, layer_number=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ghc.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return ghc.to(device)


def ideal_bytes(m, n, d, tokens, elem) -> dict:
    """Each input read once, each output written once (params are negligible and left out)."""
    wide, narrow = n * d * tokens * elem, m * d * tokens * elem
    return {
        "read_fwd": wide + narrow,  # H in, x out
        "write_fwd": 2 * wide + narrow,  # H, Z in; H' out
        "bwd": 3 * wide + 3 * narrow,  # dH', H in, dH out; dX, Z in, dZ out
    }


# ------------------------------------------------------------------------- 1. saved activations
def saved_activation_section(device, dtype, tokens, d):
    print(f"\n## 1. Saved-for-backward bytes of one GHC (read+write), {tokens} tokens, d={d}, "
          f"{str(dtype).replace('torch.', '')}")
    can_triton = device.type == "cuda" or runtime.interpreter_active()
    print(f"{'(m,n)':>8} {'r':>4} {'torch B/tok':>12} {'triton B/tok':>13} {'triton/torch':>13} "
          f"{'H bytes/tok':>12}")
    rows = []
    for m, n in GHC_SHAPES:
        per = {}
        for impl in ("torch", "triton") if can_triton else ("torch",):
            ghc = make_ghc(m, n, d, impl, device)
            H = torch.randn(tokens, 1, n * d, device=device, dtype=dtype, requires_grad=True)
            z = torch.randn(tokens, 1, m * d, device=device, dtype=dtype, requires_grad=True)
            with SavedBytes(exclude=list(ghc.parameters())) as saved:
                x, state = ghc.read(H)
                ghc.write(z + x, state)
            per[impl] = saved.total / tokens
        tri = per.get("triton")
        rows.append((m, n, per["torch"], tri))
        print(f"{str((m, n)):>8} {n / m:>4.1f} {per['torch']:>12.0f} "
              f"{(f'{tri:.0f}' if tri else 'n/a'):>13} "
              f"{(f'{tri / per['torch']:.3f}' if tri else 'n/a'):>13} "
              f"{n * d * torch.finfo(dtype).bits // 8:>12}")
    if not can_triton:
        print("   (triton column not measured: no GPU and Triton's interpreter is not active)")
    return rows


# --------------------------------------------------------------------------- 2. kernel timings
def kernel_section(device, dtype, tokens, d, reps, shapes, peak):
    print(f"\n## 2. Per-kernel time, {tokens} tokens, d={d}, {str(dtype).replace('torch.', '')}, "
          f"copy bandwidth measured {peak / 1e9:.1f} GB/s")
    impls = ["torch", "compile"] + (["triton"] if device.type == "cuda" else [])
    if device.type != "cuda":
        print("   No GPU in this run: NO Triton timings were taken (the CPU interpreter is not a "
              "performance path). torch eager vs torch.compile only.")
    print(f"{'(m,n)':>8} {'op':>10} {'impl':>8} {'median ms':>10} {'min ms':>9} {'ideal MB':>9} "
          f"{'GB/s':>8} {'% peak':>7} {'vs torch':>9}")
    elem = torch.finfo(dtype).bits // 8
    results = []
    for m, n in shapes:
        ideal = ideal_bytes(m, n, d, tokens, elem)
        base = {}
        for impl in impls:
            try:
                times = time_ghc(m, n, d, tokens, dtype, device, impl, reps)
            except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a compiler
                print(f"{str((m, n)):>8} {'all':>10} {impl:>8}  failed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:80]}")
                continue
            for op, (sec, fastest) in times.items():
                base.setdefault(op, sec if impl == "torch" else None)
                gbs = ideal[op] / sec / 1e9
                ratio = base[op] / sec if base.get(op) else float("nan")
                results.append(dict(m=m, n=n, op=op, impl=impl, ms=sec * 1e3, gbs=gbs))
                print(f"{str((m, n)):>8} {op:>10} {impl:>8} {sec * 1e3:>10.3f} "
                      f"{fastest * 1e3:>9.3f} "
                      f"{ideal[op] / 1e6:>9.2f} {gbs:>8.2f} {100 * gbs * 1e9 / peak:>6.1f}% "
                      f"{ratio:>8.2f}x")
    return results


def time_ghc(m, n, d, tokens, dtype, device, impl, reps) -> dict:
    ghc = make_ghc(m, n, d, "triton" if impl == "triton" else "torch", device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    H = torch.randn(tokens, 1, n * d, generator=gen).to(device, dtype).requires_grad_(True)
    z = torch.randn(tokens, 1, m * d, generator=gen).to(device, dtype).requires_grad_(True)
    read, write = ghc.read, ghc.write
    if impl == "compile":
        read, write = torch.compile(ghc.read), torch.compile(ghc.write)
    with torch.no_grad():
        x, state = read(H)
        t_read = bench_stats(lambda: read(H), device, reps)
        t_write = bench_stats(lambda: write(z, state), device, reps)
    x, state = read(H)
    out = write(z, state)
    dx, dout = torch.randn_like(x), torch.randn_like(out)

    def backward():
        torch.autograd.backward([x, out], [dx, dout], retain_graph=True)

    t_bwd = bench_stats(backward, device, reps)
    return {"read_fwd": t_read, "write_fwd": t_write, "bwd": t_bwd}


# -------------------------------------------------------------------------- 3. end to end
def model_section(device, reps, quick):
    from nemo_vwn import runtime as process_runtime
    from nemo_vwn.builders import build_stock_gpt, build_vwn_gpt, stock_config

    process_runtime.initialize()  # gloo on CPU, NCCL on GPU; one process
    hidden, layers, seq, batch, vocab = (256, 2, 128, 2, 1024) if device.type == "cpu" else (
        2048, 4, 2048, 2, 32000)
    if quick:
        seq //= 2
    common = dict(hidden_size=hidden, num_layers=layers, num_attention_heads=8,
                  ffn_hidden_size=4 * hidden)
    if device.type == "cuda":
        common.update(use_cpu_initialization=False, bf16=True, params_dtype=torch.bfloat16)
    cases = [("baseline", None, None)] + [(f"r={n / m:g} ({m},{n})", m, n)
                                          for m, n in [(2, 3), (8, 16), (8, 32)]]
    interp = device.type == "cpu" and runtime.interpreter_active()
    impls = ["torch"] + (["triton"] if device.type == "cuda" or interp else [])
    print(f"\n## 3. End to end: GPT, hidden {hidden}, {layers} layers, seq {seq}, batch {batch}, "
          f"fwd+bwd step")
    if device.type != "cuda":
        print("   No GPU: no peak-memory numbers (CPU has no allocator peak; "
              "saved-activation bytes "
              "stand in) and ghc_impl='triton' is NOT timed (interpreter): its row is the saved "
              "bytes of one forward only.")
    print(f"{'model':>16} {'ghc':>7} {'step ms':>9} {'x base':>7} {'saved MB':>9} {'x base':>7} "
          f"{'peak MB':>9} {'x base':>7}   (median of {reps} interleaved rounds; peak = CUDA "
          "peak minus resident parameters)")
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    ids, labels = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    pos = torch.arange(seq, device=device).unsqueeze(0).expand(batch, -1)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=device), 1)[None, None]
    entries = []  # (name, impl, model, timed)
    for name, m, n in cases:
        for impl in impls if m else ["-"]:
            if m is None:
                model = build_stock_gpt(stock_config(**common), vocab_size=vocab, seq=seq)
            else:
                model = build_vwn_gpt(vwn_config(n=n, m=m, ghc_impl=impl, vwn_collapse="linear",
                                                 **common), vocab_size=vocab, seq=seq)
            timed = not (impl == "triton" and device.type == "cpu")
            entries.append((name, impl, model.to(device), timed))

    def step(model):
        model(ids, pos, mask, labels=labels).sum().backward()
        model.zero_grad(set_to_none=True)  # only parameters stay resident between steps

    # Interleaved rounds: every model steps once per round, so load drift hits all alike.
    times = {id(e[2]): [] for e in entries}
    peaks = {}
    for rnd in range(reps + 1):
        for _, _, model, timed in entries:
            if not timed:
                continue
            sync(device)
            if device.type == "cuda":
                resident = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            step(model)
            sync(device)
            if rnd:  # round 0 is warm-up
                times[id(model)].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[id(model)] = torch.cuda.max_memory_allocated(device) - resident
    base = None
    rows = []
    for name, impl, model, timed in entries:
        with SavedBytes(exclude=list(model.parameters())) as saved:
            loss = model(ids, pos, mask, labels=labels)
        del loss
        step_s = statistics.median(times[id(model)]) if timed else float("nan")
        peak = peaks.get(id(model))
        if base is None:
            base = (step_s, saved.total, peak)
        rows.append(dict(model=name, impl=impl, ms=step_s * 1e3, saved=saved.total, peak=peak))
        peak_txt = f"{peak / 1e6:>9.1f} {peak / base[2]:>6.2f}x" if peak else f"{'n/a':>9} {'':>7}"
        step_txt = (f"{step_s * 1e3:>9.1f} {step_s / base[0]:>6.2f}x" if timed
                    else f"{'n/a':>9} {'':>7}")
        print(f"{name:>16} {impl:>7} {step_txt} "
              f"{saved.total / 1e6:>9.1f} {saved.total / base[1]:>6.2f}x {peak_txt}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default="1,2,3", help="which sections to run, e.g. 1,3")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    print(f"# GHC kernel benchmark — device {torch.cuda.get_device_name(device) if gpu else 'CPU'}"
          f" ({os.cpu_count()} CPU cores), torch {torch.__version__}, {runtime.describe()}")
    if not gpu:
        print("# NO GPU NUMBERS WERE TAKEN IN THIS RUN (CPU only).")
    reps = 5 if args.quick else (20 if gpu else 11)
    sections = {int(x) for x in args.sections.split(",")}
    if 1 in sections:
        for saved_dtype in (torch.float32, torch.bfloat16):
            saved_activation_section(device, saved_dtype, tokens=8 if not gpu else 1024, d=64)
    if 2 in sections:
        peak = copy_bandwidth(device, dtype)
        tokens, d = (8192, 256) if gpu else (1024, 64)
        shapes = GHC_SHAPES[::3] if args.quick else GHC_SHAPES
        kernel_section(device, dtype, tokens, d, reps, shapes, peak)
    if 3 in sections:
        model_section(device, max(3, reps // 2), args.quick)


if __name__ == "__main__":
    main()
