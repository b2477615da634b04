"""The compiled GHC backend (ghc_impl="compile", nemo_vwn/kernels/ghc_compiled.py) against the torch
reference (itself checked against a per-token float64 loop and gradcheck in tests/test_ghc.py).

torch.compile costs seconds per graph on a small machine, and the backend compiles one graph per
variant (m, n, d, dtypes, static/dynamic, bias, dropout), so the tests keep to few variants: one
slot width d, fp32 (float64 only for gradcheck). Every test here is marked ``compile`` (deselect
with ``-m "not compile"``).
"""

from __future__ import annotations

import copy

import pytest
import torch

from nemo_vwn.ghc import GHC
from nemo_vwn.kernels import runtime as kernel_runtime
from nemo_vwn.testing.models import vwn_config

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(not kernel_runtime.compiler_usable(),
                       reason="torch.compile has no working compiler on this machine"),
]

D, S, B = 8, 3, 2  # slot width (all shapes), tokens = S * B
SHAPES = [(2, 3), (2, 4), (8, 16), (1, 4)]  # (m, n)


def make_pair(m, n, dynamic, d=D, seed=0, **overrides):
    """(torch GHC, compiled GHC) with the same random parameters (no zeros, no identities)."""
    kwargs = dict(n=n, m=m, hidden_size=m * d, ghc_dynamic=dynamic,
                  vwn_collapse="linear" if n != m else "none", **overrides)
    ref = GHC(vwn_config(**kwargs), layer_number=1)
    comp = GHC(vwn_config(ghc_impl="compile", **kwargs), layer_number=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    comp.load_state_dict(ref.state_dict())
    return ref, comp


def run(ghc, H, z, bias=None):
    """read -> stand-in branch (z + sin x) -> write -> weighted loss -> backward."""
    H = H.detach().clone().requires_grad_(True)
    x, state = ghc.read(H)
    out = ghc.write(z + x.sin(), state, bias=bias)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    ghc.zero_grad(set_to_none=True)
    ((out * w).sum() + x.tanh().sum()).backward()
    return dict(x=x.detach(), out=out.detach(), dH=H.grad,
                **{k: p.grad for k, p in ghc.named_parameters()})


def assert_close(got, want, tol):
    assert got.keys() == want.keys()
    for key, ref in want.items():
        err = ((got[key].double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
        assert err.item() < tol, f"{key}: relative error {err.item():.2e}"


@pytest.mark.parametrize("m,n,dynamic", [(m, n, True) for m, n in SHAPES] + [(2, 4, False)])
def test_forward_and_grads_match_torch_reference(m, n, dynamic):
    ref, comp = make_pair(m, n, dynamic, seed=10 * m + n)
    assert comp.backend.name == "compile"
    gen = torch.Generator().manual_seed(1)
    H, z = torch.randn(S, B, n * D, generator=gen), torch.randn(S, B, m * D, generator=gen)
    want = run(copy.deepcopy(ref).double(), H.double(), z.double())
    assert_close(run(comp, H, z), want, 2e-6)


def test_gradcheck_float64():
    """Analytical (AOTAutograd's compiled backward) vs numerical gradients of read+write (DGHC;
    the static GHC is its special case W = 0, compared with the float64 reference above)."""
    for dynamic in (True,):
        _, comp = make_pair(2, 3, dynamic, seed=3)
        comp = comp.double()
        gen = torch.Generator().manual_seed(2)
        H = torch.randn(2, 2, 3 * D, generator=gen, dtype=torch.float64, requires_grad=True)
        z = torch.randn(2, 2, 2 * D, generator=gen, dtype=torch.float64, requires_grad=True)

        def fn(H, z):
            x, state = comp.read(H)
            return comp.write(z * x.sum(-1, keepdim=True), state)

        # gradcheck runs backward with retain_graph=True: compile these graphs without buffer
        # donation (training never retains the graph, so the backend keeps the default)
        with torch._functorch.config.patch(donated_buffer=False):
            assert torch.autograd.gradcheck(fn, (H, z), eps=1e-6, atol=1e-7)


def test_bias_dropout_and_recompute(megatron_cpu):
    """write(z, bias) == write(z + bias); p = 1 keeps only the carried state; ghc_recompute gives
    the same gradients (the read recomputed in backward)."""
    ref, comp = make_pair(2, 4, True, seed=5)
    gen = torch.Generator().manual_seed(4)
    H, z = torch.randn(S, B, 4 * D, generator=gen), torch.randn(S, B, 2 * D, generator=gen)
    bias = torch.randn(2 * D, generator=gen)
    assert_close(run(comp, H, z, bias=bias), run(ref, H, z, bias=bias), 2e-6)
    with torch.no_grad():
        _, state = comp.read(H)
        dropped = comp.write(z, state, dropout_p=1.0)
        assert torch.allclose(dropped, comp.write(torch.zeros_like(z), state), atol=1e-6)
    _, rec = make_pair(2, 4, True, seed=5, ghc_recompute=True)
    assert_close(run(rec, H, z), run(comp, H, z), 1e-6)


@pytest.mark.parametrize("dynamic", [True, False])
def test_write_read_is_one_fused_region_equal_to_write_then_read(monkeypatch, dynamic):
    """GHC.write_read (the attention GHC's write + the MLP GHC's read, as in a layer) on the
    compiled backend: one compiled "write_read" call (no separate write/read), the same forward
    and gradients as the torch reference's write then read; composed (same numbers) when
    ``fuse_write_read`` is off or the next read is observed."""
    from nemo_vwn.kernels import ghc_compiled

    m, n = 2, 4
    ref1, comp1 = make_pair(m, n, dynamic, seed=21)
    ref2, comp2 = make_pair(m, n, dynamic, seed=22)
    gen = torch.Generator().manual_seed(5)
    H, z = torch.randn(S, B, n * D, generator=gen), torch.randn(S, B, m * D, generator=gen)

    def two_ghcs(g1, g2):
        """read -> branch -> write_read -> branch -> write -> loss -> backward."""
        Hin = H.detach().clone().requires_grad_(True)
        x1, state = g1.read(Hin)
        x2, state = g1.write_read(z + x1.sin(), state, g2)
        out = g2.write(z * x2.cos(), state)
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        for g in (g1, g2):
            g.zero_grad(set_to_none=True)
        ((out * w).sum() + x2.tanh().sum()).backward()
        grads = {f"{i}.{k}": p.grad for i, g in enumerate((g1, g2))
                 for k, p in g.named_parameters()}
        return dict(x2=x2.detach(), out=out.detach(), dH=Hin.grad, **grads)

    calls = []
    real = ghc_compiled.compiled
    monkeypatch.setattr(ghc_compiled, "compiled",
                        lambda name, key=(): calls.append(name) or real(name, key))
    want = two_ghcs(copy.deepcopy(ref1).double(), copy.deepcopy(ref2).double())
    assert_close(two_ghcs(comp1, comp2), want, 2e-6)
    assert calls == ["read", "write_read", "write"], calls
    calls.clear()
    comp1.fuse_write_read = False  # the benchmarks' switch: composed calls
    assert_close(two_ghcs(comp1, comp2), want, 2e-6)
    assert calls == ["read", "write", "read", "write"], calls
    calls.clear()
    comp1.fuse_write_read = True
    comp2.read = lambda h: GHC.read(comp2, h)  # an observer's wrapper: the fusion steps aside
    assert_close(two_ghcs(comp1, comp2), want, 2e-6)
    assert calls == ["read", "write", "read", "write"], calls


def test_vwn_gpt_compiled_equals_torch_without_recompiles_or_graph_breaks(megatron_cpu):
    """A 2-layer VWN GPT with MTP: loss and every gradient as with ghc_impl='torch'; after one
    warm-up step, further steps compile nothing (all 6 GHCs share the graphs); no graph break."""
    from torch._dynamo.utils import counters

    from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch

    kwargs = dict(n=4, m=2, num_layers=2, mtp_num_layers=1,
                  vwn_collapse="linear")
    torch.manual_seed(0)
    ref = build_vwn_gpt(vwn_config(**kwargs))
    torch.manual_seed(0)
    comp = build_vwn_gpt(vwn_config(ghc_impl="compile", **kwargs))
    comp.load_state_dict(ref.state_dict())
    input_ids, position_ids, labels = make_batch()
    mask = causal_mask(input_ids.shape[1])

    def step(model):
        model.zero_grad(set_to_none=True)
        loss = model(input_ids, position_ids, mask, labels=labels).float().mean()
        loss.backward()
        return loss.detach(), {k: p.grad for k, p in model.named_parameters()
                               if p.grad is not None}

    loss_ref, grads_ref = step(ref)
    step(comp)  # warm-up: compiles read/write forward and backward
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(2):
        loss, grads = step(comp)
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after warm-up"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert torch.allclose(loss, loss_ref, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        err = (grads[name] - grad).norm() / grad.norm().clamp_min(1e-30)
        assert err < 1e-4, f"{name}: {err:.2e}"


def test_each_variant_compiles_in_its_own_code_object_under_the_recompile_limit():
    """Static/dynamic x bias/no bias are four write variants and two read variants. With one
    shared code object they would be successive recompiles of one function (the suite hit dynamo's
    limit of 8 that way: FailOnRecompileLimitHit under fullgraph=True); each variant has its own,
    so even a limit of 1 recompile is never reached."""
    from nemo_vwn.kernels.ghc_compiled import compiled

    gen = torch.Generator().manual_seed(7)
    H, z = torch.randn(S, B, 4 * D, generator=gen), torch.randn(S, B, 2 * D, generator=gen)
    bias = torch.randn(2 * D, generator=gen)
    with torch._dynamo.config.patch(recompile_limit=1):
        for dynamic in (False, True):
            ref, comp = make_pair(2, 4, dynamic, seed=9)
            for b in (None, bias):
                assert_close(run(comp, H, z, bias=b), run(ref, H, z, bias=b), 1e-5)
    codes = {compiled("write", (2, 4, D, torch.float32, torch.float32, kind, with_bias,
                                "nodropout"))
             ._torchdynamo_orig_callable.__code__
             for kind in ("static", "dynamic") for with_bias in ("bias", "nobias")}
    assert len(codes) == 4
