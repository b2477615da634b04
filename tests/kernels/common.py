"""Helpers shared by the kernel tests and their gloo workers."""

from __future__ import annotations

import torch

from nemo_vwn.ghc import GHC
from nemo_vwn.testing.models import vwn_config


def device() -> torch.device:
    """CUDA when compiled Triton is usable, else CPU (the kernels then run in the interpreter)."""
    from nemo_vwn.kernels.runtime import compiled_triton_usable

    return torch.device("cuda" if compiled_triton_usable() else "cpu")


def make_pair(m: int, n: int, d: int, dynamic: bool, seed: int = 0):
    """(torch GHC, triton GHC) with the same random parameters; slot width d."""
    kwargs = dict(n=n, m=m, hidden_size=m * d, ghc_dynamic=dynamic,
                  vwn_collapse="linear" if n != m else "none")
    ref = GHC(vwn_config(**kwargs), layer_number=1)
    tri = GHC(vwn_config(ghc_impl="triton", **kwargs), layer_number=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():  # every term exercised: no zeros, no identities
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    tri.load_state_dict(ref.state_dict())
    return ref, tri.to(device())


def make_inputs(ghc, s: int, b: int, seed: int = 1):
    """Wide state H, branch input offset z and the loss weights (float32, CPU)."""
    gen = torch.Generator().manual_seed(seed)
    n, m, d = ghc.n, ghc.m, ghc.d
    return dict(
        H=torch.randn(s, b, n * d, generator=gen),
        z=torch.randn(s, b, m * d, generator=gen),
        w_out=torch.randn(s, b, n * d, generator=gen),
        w_x=torch.randn(s, b, m * d, generator=gen),
    )


def run_layer(ghc, inputs: dict, dtype: torch.dtype, dev=None, **write_kwargs):
    """read -> stand-in branch (z + sin x, so read's output matters) -> write, then backward.

    Returns float64 CPU copies: x, out, dL/dH and {param name: grad}.
    """
    dev = dev or next(ghc.parameters()).device
    H = inputs["H"].to(dev, dtype).detach().requires_grad_(True)  # a fresh leaf
    x, state = ghc.read(H)
    branch = inputs["z"].to(dev, dtype) + x.float().sin().to(dtype)
    out = ghc.write(branch, state, **write_kwargs) if write_kwargs else ghc.write(branch, state)
    loss = (out.double() * inputs["w_out"].to(dev).double()).sum()
    loss = loss + (x.double().tanh() * inputs["w_x"].to(dev).double()).sum()
    ghc.zero_grad(set_to_none=True)
    loss.backward()
    grads = {k: p.grad.detach().double().cpu() for k, p in ghc.named_parameters()}
    cpu = lambda t: t.detach().double().cpu()  # noqa: E731
    return dict(x=cpu(x), out=cpu(out), dH=cpu(H.grad), grads=grads, state=state)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (NaN-safe: NaN anywhere gives inf)."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
