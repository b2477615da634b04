"""Stage (a): the Triton GHC kernels (``ghc_impl="triton"``) against the plain-torch GHC.

Each case builds a torch GHC with random parameters (every term exercised) and a Triton GHC with
the same state, runs read -> a stand-in branch (z + sin x) -> write and a backward through both,
and compares x, the write output, dL/dH and every parameter gradient with the torch path in
float64 on the inputs as the kernel sees them (rounded to the dtype): ||tri - ref|| / ||ref||.
Same construction and tolerances as tests/kernels/test_ghc_kernels.py, here compiled on the GPU.
"""

from __future__ import annotations

import copy

TOL = {"float32": 2e-6, "bfloat16": 1.5e-2}


def cases(cfg: dict) -> list[dict]:
    s, b = cfg["tokens"]
    out = []
    for dtype in cfg["dtypes"]:
        for dynamic in cfg["dynamic"]:
            for m, n in cfg["shapes"]:
                out.append(dict(m=m, n=n, d=cfg["d"], s=s, b=b, dynamic=dynamic, dtype=dtype))
        for m, n, d, s2, b2 in cfg["extra"]:
            out.append(dict(m=m, n=n, d=d, s=s2, b=b2, dynamic=True, dtype=dtype))
    return out


def _pair(case, device):
    import torch
    from gpu_common import ghc_config

    from nemo_vwn.ghc import GHC

    m, n, d, dyn = case["m"], case["n"], case["d"], case["dynamic"]
    ref = GHC(ghc_config(m, n, d, "torch", dynamic=dyn), layer_number=1)
    tri = GHC(ghc_config(m, n, d, "triton", dynamic=dyn), layer_number=1)
    gen = torch.Generator().manual_seed(m * 100 + n)
    with torch.no_grad():
        for p in ref.parameters():  # no zeros, no identities: every term is exercised
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    tri.load_state_dict(ref.state_dict())
    return ref, tri.to(device)


def _inputs(case):
    import torch

    gen = torch.Generator().manual_seed(1)
    s, b, n, m, d = case["s"], case["b"], case["n"], case["m"], case["d"]
    return dict(H=torch.randn(s, b, n * d, generator=gen),
                z=torch.randn(s, b, m * d, generator=gen),
                w_out=torch.randn(s, b, n * d, generator=gen),
                w_x=torch.randn(s, b, m * d, generator=gen))


def _run(ghc, inputs, dtype, device):
    """read -> branch -> write -> backward; float64 CPU copies of x, out, dH and the grads."""

    H = inputs["H"].to(device, dtype).detach().requires_grad_(True)
    x, state = ghc.read(H)
    branch = inputs["z"].to(device, dtype) + x.float().sin().to(dtype)
    out = ghc.write(branch, state)
    loss = (out.double() * inputs["w_out"].to(device).double()).sum()
    loss = loss + (x.double().tanh() * inputs["w_x"].to(device).double()).sum()
    ghc.zero_grad(set_to_none=True)
    loss.backward()
    cpu = lambda t: t.detach().double().cpu()  # noqa: E731
    return dict(x=cpu(x), out=cpu(out), dH=cpu(H.grad),
                grads={k: cpu(p.grad) for k, p in ghc.named_parameters()},
                state_type=type(state).__name__)


def _rel(a, b) -> float:
    import torch

    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run(rec, cfg: dict, device: str, part: int = 0, parts: int = 1) -> None:
    import torch
    from gpu_common import dtype_of

    mine = [c for i, c in enumerate(cases(cfg)) if i % parts == part]
    rec.info(cases=len(mine), part=f"{part + 1}/{parts}", device=device)
    for case in mine:
        dtype = dtype_of(case["dtype"])
        ref, tri = _pair(case, device)
        inputs = _inputs(case)
        got = _run(tri, inputs, dtype, device)
        ref_dev = "cuda" if device == "cuda" and case["s"] * case["b"] > 64 else "cpu"
        ref64 = copy.deepcopy(ref).double().to(ref_dev)
        rounded = {k: v.to(dtype).double() for k, v in inputs.items()}
        want = _run(ref64, rounded, torch.float64, ref_dev)
        errors = {k: _rel(got[k], want[k]) for k in ("x", "out", "dH")}
        errors.update({f"grad:{k}": _rel(got["grads"][k], g) for k, g in want["grads"].items()})
        worst = max(errors, key=errors.get)
        tol = TOL[case["dtype"]]
        name = (f"(m,n)=({case['m']},{case['n']}) d={case['d']} tokens={case['s'] * case['b']} "
                f"{'dynamic' if case['dynamic'] else 'static'} {case['dtype']}")
        rec.row(case=name, **case, max_rel_err=errors[worst], worst=worst, tol=tol,
                state=got["state_type"], errors=errors)
        rec.check(name, errors[worst] < tol, f"max rel err {errors[worst]:.2e} ({worst}) "
                  f"< {tol:.1e}")
        del ref, tri, ref64
