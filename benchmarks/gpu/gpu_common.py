"""Shared by the stage processes of the GPU check: set-up, configs, timing, result files.

Every stage runs in its own process (benchmarks/gpu/stage.py) and records its rows through
``Recorder``, which rewrites ``<out>/stages/<stage>.json`` after each row: when the driver kills a
stage at its time box, the rows measured so far are still in the report. Only public nemo_vwn API
is used (``runtime.initialize``, ``VWNConfig``, ``VWNGPTModel``, ``get_vwn_decoder_block_spec``,
``GHC`` with ``config.ghc_impl``); the GHC backends are reached through ``GHC`` only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback


class Recorder:
    """The stage's result file: {"status", "rows", "checks", "info", "error"}; rewritten
    atomically after every change so a killed stage leaves its last complete state."""

    def __init__(self, out_dir: str, stage: str, part: str = ""):
        os.makedirs(os.path.join(out_dir, "stages"), exist_ok=True)
        suffix = f".part{part}" if part else ""
        self.path = os.path.join(out_dir, "stages", f"{stage}{suffix}.json")
        self.data = {"stage": stage, "status": "running", "rows": [], "checks": [], "info": {}}
        self.flush()

    def info(self, **kwargs) -> None:
        self.data["info"].update(kwargs)
        self.flush()

    def row(self, **row) -> None:
        self.data["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
        self.flush()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"check {'PASS' if ok else 'FAIL'}: {name} {detail}", flush=True)
        self.flush()
        return bool(ok)

    def finish(self, status: str = "") -> None:
        ok = all(c["ok"] for c in self.data["checks"])
        self.data["status"] = status or ("ok" if ok else "check_failed")
        self.flush()

    def fail(self, exc: BaseException) -> None:
        self.data["status"] = "error"
        self.data["error"] = "".join(traceback.format_exception(exc))[-4000:]
        self.flush()

    def flush(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=_jsonable)
        os.replace(tmp, self.path)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def setup(seed: int = 1234) -> str:
    """Process set-up through the public runtime; returns "cuda" or "cpu"."""
    from nemo_vwn import runtime

    return runtime.initialize(seed=seed)


def dtype_of(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def backends() -> list[str]:
    """The GHC implementations to measure: every choice the config offers except the per-call
    "auto" switch (so a later backend such as "compile" is measured as soon as it exists)."""
    from nemo_vwn.config import GHC_IMPL_CHOICES

    return [impl for impl in GHC_IMPL_CHOICES if impl != "auto"]


def model_settings(device: str, dtype_name: str) -> dict:
    """TransformerConfig settings of every model here: no TE/apex fusions (none are installed on
    the GPU image either), parameters on the device, bf16 where asked."""
    import torch

    from nemo_vwn.runtime import CPU_SAFE_SETTINGS

    settings = dict(CPU_SAFE_SETTINGS, use_cpu_initialization=device != "cuda")
    dtype = dtype_of(dtype_name)
    if dtype == torch.bfloat16:
        settings.update(bf16=True, params_dtype=torch.bfloat16)
    return settings


def moe_settings(experts: int, topk: int, ffn: int) -> dict:
    from nemo_vwn.runtime import CPU_MOE_SETTINGS

    # allgather dispatcher: one process (EP = 1); the same dispatcher as every CPU test
    return dict(CPU_MOE_SETTINGS, num_moe_experts=experts, moe_router_topk=topk,
                moe_ffn_hidden_size=ffn, moe_aux_loss_coeff=0.0)


def heads_for(hidden: int, wanted: int = 4) -> int:
    return wanted if hidden % wanted == 0 else 1


def ghc_config(m: int, n: int, d: int, impl: str, dynamic: bool = True, **extra):
    """A VWNConfig for one stand-alone GHC with slot width d (backbone width D = m*d)."""
    from nemo_vwn import VWNConfig
    from nemo_vwn.runtime import CPU_SAFE_SETTINGS

    return VWNConfig(num_layers=2, hidden_size=m * d, num_attention_heads=heads_for(m * d),
                     normalization="RMSNorm", virtual_width_n=n, virtual_width_m=m,
                     ghc_dynamic=dynamic, ghc_impl=impl,
                     vwn_collapse="linear" if n % m else "norm_linear",
                     **dict(CPU_SAFE_SETTINGS, **extra))


def gpt_config(vwn: dict | None, **kwargs):
    """VWNConfig (vwn = dict(n=, m=, ...)) or megatron's TransformerConfig (vwn = None)."""
    if vwn is None:
        from megatron.core.transformer.transformer_config import TransformerConfig

        return TransformerConfig(**kwargs)
    from nemo_vwn import VWNConfig

    n, m = vwn["n"], vwn["m"]
    extra = {k: v for k, v in vwn.items() if k not in ("n", "m")}
    extra.setdefault("vwn_collapse", "linear" if n % m else "norm_linear")
    return VWNConfig(virtual_width_n=n, virtual_width_m=m, **extra, **kwargs)


def build_gpt(config, vocab: int, seq: int):
    """VWNGPTModel (VWN config) or megatron's GPTModel (its baseline twin), local spec, rope."""
    if hasattr(config, "virtual_width_n"):
        from nemo_vwn import VWNGPTModel, get_vwn_decoder_block_spec

        spec = get_vwn_decoder_block_spec(config, use_transformer_engine=False)
        cls = VWNGPTModel
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
        from megatron.core.models.gpt.gpt_model import GPTModel

        spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False,
                                          normalization=config.normalization)
        cls = GPTModel
    return cls(config, spec, vocab_size=vocab, max_sequence_length=seq,
               position_embedding_type="rope")


def causal_mask(seq: int, device):
    import torch

    return torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=device), diagonal=1)[None, None]


def synchronize(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device, warmup: int, reps: int) -> dict:
    """Median and min seconds of ``fn()``: CUDA events on GPU, perf_counter on CPU."""
    import torch

    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if str(device).startswith("cuda"):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def copy_bandwidth(device, mib: int, warmup: int = 3, reps: int = 10) -> float:
    """Bytes per second (read + written) of a device-to-device copy of ``mib`` MiB."""
    import torch

    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    sec = time_fn(lambda: dst.copy_(src), device, warmup, reps)["median_s"]
    return 2 * src.numel() / sec


def ghc_ideal_bytes(m: int, n: int, d: int, tokens: int, elem: int) -> dict:
    """Least HBM traffic of one GHC: each input read once, each output written once
    (parameters left out), as docs/kernels.md counts it. wide = n*d, narrow = m*d per token."""
    wide, narrow = n * d * tokens * elem, m * d * tokens * elem
    return {
        "read_fwd": wide + narrow,  # H in, x out
        "write_fwd": 2 * wide + narrow,  # H, Z in; H' out
        "bwd": 3 * wide + 3 * narrow,  # dH', H in, dH out; dX, Z in, dZ out
    }


def vwn_extra_bytes(m: int, n: int, hidden: int, layers: int, tokens: int, vocab: int,
                    elem: int) -> int:
    """Roofline estimate of the HBM bytes a VWN step (forward + backward) moves beyond its
    baseline twin; the extra time at copy bandwidth is what "the extra bytes alone cost".

    Per token, w = n*d*e (the wide state) and x = D*e (the residual it replaces):
      * 2 GHCs per layer, each fwd + bwd at its least traffic (``ghc_ideal_bytes``) = 6w + 5x,
        minus the baseline's residual add it replaces (read 2x, write x)      -> 6w + 2x;
      * wide embedding (write w instead of x; its gradient read in backward) and the collapse
        D' -> D (read w forward; read w, write w backward)                      -> 5 (w - x).
    Per step, the wide embedding table's gradient (zeroed, then accumulated): 2 V (w - x).
    """
    d = hidden // m
    w, x = n * d * elem, hidden * elem
    per_token = 2 * layers * (6 * w + 2 * x) + 5 * (w - x)
    return tokens * per_token + 2 * vocab * (w - x)


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
