"""Stage (b): GHC read / write / backward time per backend at the paper's shapes.

D = hidden (2048 on the GPU), d = D/m, one sequence of ``seq`` tokens. For each backend
(``gpu_common.backends()``) and (m, n): median time of the read forward, the write forward and
the backward of both (timed as forward + backward on a fresh graph, minus the two forwards: a
compiled backward cannot run twice on one graph), the least bytes each must move
(``ghc_ideal_bytes``), the achieved GB/s and its percentage of a device-to-device copy measured
in the same process. issue 18's target: the Triton kernels at >= 80 % of the copy bandwidth.
"""

from __future__ import annotations


def _time_backend(m, n, d, tokens, dtype, device, impl, warmup, reps):
    import torch
    from gpu_common import ghc_config, time_fn

    from nemo_vwn.ghc import GHC

    ghc = GHC(ghc_config(m, n, d, impl), layer_number=1).to(device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ghc.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    H = torch.randn(tokens, 1, n * d, generator=gen).to(device, dtype).requires_grad_(True)
    z = torch.randn(tokens, 1, m * d, generator=gen).to(device, dtype)
    with torch.no_grad():
        _, state = ghc.read(H)
        t_read = time_fn(lambda: ghc.read(H), device, warmup, reps)
        t_write = time_fn(lambda: ghc.write(z, state), device, warmup, reps)
    x, state = ghc.read(H)
    out = ghc.write(z + x, state)
    dx, dout = torch.randn_like(x), torch.randn_like(out)

    def forward_backward():  # a fresh graph each time: a compiled backward runs once per graph
        x, state = ghc.read(H)
        torch.autograd.backward([x, ghc.write(z + x, state)], [dx, dout])

    t_fwd_bwd = time_fn(forward_backward, device, warmup, reps)
    t_bwd = {key: max(t_fwd_bwd[key] - t_read[key] - t_write[key], 1e-9)  # read + write bwd
             for key in t_fwd_bwd}
    return {"read_fwd": t_read, "write_fwd": t_write, "bwd": t_bwd}


def run(rec, cfg: dict, device: str, part: int = 0, parts: int = 1) -> None:
    import torch
    from gpu_common import backends, copy_bandwidth, dtype_of, ghc_ideal_bytes

    dtype = dtype_of(cfg["dtype"])
    elem = torch.finfo(dtype).bits // 8
    tokens = cfg["seq"] * cfg["batch"]
    copy_bps = copy_bandwidth(device, cfg["copy_mib"])
    rec.info(copy_GBps=copy_bps / 1e9, tokens=tokens, hidden=cfg["hidden"], dtype=cfg["dtype"],
             backends=backends(), device=device)
    for m, n in cfg["shapes"]:
        d = cfg["hidden"] // m
        ideal = ghc_ideal_bytes(m, n, d, tokens, elem)
        for impl in backends():
            try:
                times = _time_backend(m, n, d, tokens, dtype, device, impl, cfg["warmup"],
                                      cfg["reps"])
            except Exception as exc:  # noqa: BLE001 - recorded, the other backends still run
                rec.row(m=m, n=n, impl=impl, error=f"{type(exc).__name__}: {exc}"[:300])
                rec.check(f"({m},{n}) {impl} ran", False, f"{type(exc).__name__}: {exc}"[:200])
                continue
            for op, t in times.items():
                gbps = ideal[op] / t["median_s"] / 1e9
                rec.row(m=m, n=n, r=n / m, d=d, impl=impl, op=op, ms=t["median_s"] * 1e3,
                        min_ms=t["min_s"] * 1e3, ideal_MB=ideal[op] / 1e6, GBps=gbps,
                        pct_copy=100 * gbps * 1e9 / copy_bps)
            torch.cuda.empty_cache() if device == "cuda" else None
