"""Triton GHC/DGHC kernels against the plain-torch reference (nemo_vwn/ghc.py).

Forward outputs and every gradient (dL/dH, each GHC parameter) of the Triton path are compared
with the torch path run in float64 (itself checked against a per-token float64 loop and gradcheck
in tests/test_ghc.py), by ‖triton − ref‖ / ‖ref‖. Shapes are tiny and deliberately not multiples
of the blocks: d = 20 with 16-wide d-tiles (the conftest narrows them), 10 tokens over 3
persistent programs, n and m padded to 16.
"""

import copy

import pytest
import torch

from nemo_vwn.ghc import GHC, GHCState
from nemo_vwn.kernels import GHCKernelUnavailableError, ghc_autograd, select
from nemo_vwn.kernels.ghc_autograd import TritonGHCState, dropout_keep_mask, ghc_write
from nemo_vwn.testing.models import vwn_config
from tests.kernels.common import device, make_inputs, make_pair, rel_err, run_layer

SHAPES = [(2, 3), (8, 16), (8, 64), (1, 4)]  # (m, n): 1.5x, 2x, 8x, Hyper-Connection-like m=1
S, B, D = 5, 2, 20  # 10 tokens (4+3+3 over 3 programs); d = 20 = a full 16-tile + 4
TOL = {torch.float32: 2e-6, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def reference(ref_ghc, inputs, dtype, **kwargs):
    """The torch path in float64 on the inputs as the kernel sees them (rounded to ``dtype``)."""
    ref64 = copy.deepcopy(ref_ghc).double()
    rounded = {k: v.to(dtype).double() for k, v in inputs.items()}
    return run_layer(ref64, rounded, torch.float64, dev=torch.device("cpu"), **kwargs)


def assert_close(got, want, tol, what=""):
    for key in ("x", "out", "dH"):
        err = rel_err(got[key], want[key])
        assert err < tol, f"{what} {key}: relative error {err:.2e} >= {tol:.0e}"
    assert got["grads"].keys() == want["grads"].keys()
    for name, grad in want["grads"].items():
        err = rel_err(got["grads"][name], grad)
        assert err < tol, f"{what} grad of {name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("m,n", SHAPES)
def test_forward_and_grads_match_torch_reference(m, n, dynamic, dtype):
    ref, tri = make_pair(m, n, D, dynamic, seed=m * 100 + n)
    inputs = make_inputs(ref, S, B)
    got = run_layer(tri, inputs, dtype)
    assert isinstance(got["state"], TritonGHCState)  # the kernels really ran
    assert got["x"].shape == (S, B, m * D) and got["out"].shape == (S, B, n * D)
    assert_close(got, reference(ref, inputs, dtype), TOL[dtype], f"(m,n)=({m},{n})")


def test_output_dtypes_follow_the_reference():
    _, tri = make_pair(2, 3, D, True)
    H = torch.randn(S, B, 3 * D, device=device()).bfloat16()
    x, state = tri.read(H)
    out = tri.write(torch.randn(S, B, 2 * D, device=device()), state)  # fp32 branch output
    assert x.dtype == torch.bfloat16 and out.dtype == torch.float32


def test_fp16_and_default_block_width(monkeypatch):
    """fp16 inputs, and the production d-tile (64) over d = 72 (one full tile + 8)."""
    monkeypatch.setattr(ghc_autograd, "BLOCK_D_MAX", 64)
    ref, tri = make_pair(2, 3, 72, True, seed=3)
    inputs = make_inputs(ref, 3, 2)
    for dtype in (torch.float32, torch.float16):
        assert_close(run_layer(tri, inputs, dtype), reference(ref, inputs, dtype), TOL[dtype],
                     str(dtype))


def test_every_output_element_is_written():
    """Outputs start as NaN-poisoned memory; a missed tile would leave NaN behind."""
    ref, tri = make_pair(8, 16, D, True)
    inputs = make_inputs(ref, S, B)
    real = {name: getattr(torch, name) for name in ("empty", "empty_like")}

    def poisoned(name):
        def alloc(*args, **kwargs):
            t = real[name](*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return alloc

    try:
        for name in real:  # x, out, dH, dY, write's dH share, dP scratch: all start as NaN
            setattr(torch, name, poisoned(name))
        got = run_layer(tri, inputs, torch.float32)
    finally:
        for name, fn in real.items():
            setattr(torch, name, fn)
    for key in ("x", "out", "dH"):
        assert torch.isfinite(got[key]).all(), key
    assert all(torch.isfinite(g).all() for g in got["grads"].values())


def test_read_only_and_unused_x():
    """Backward when write is never called (no link gradient) and when x feeds nothing."""
    ref, tri = make_pair(2, 3, D, True)
    H = torch.randn(S, B, 3 * D)
    w = torch.randn(S, B, 2 * D)
    grads = []
    for ghc in (ref, tri):
        Hd = H.to(next(ghc.parameters()).device).requires_grad_(True)
        x, _ = ghc.read(Hd)
        (x * w.to(x.device)).sum().backward()
        grads.append(Hd.grad.cpu())
    assert rel_err(grads[1], grads[0]) < TOL[torch.float32]
    # x unused: only the write contributes.
    z = torch.randn(S, B, 2 * D)
    outs = []
    for ghc in (ref, tri):
        Hd = H.to(next(ghc.parameters()).device).requires_grad_(True)
        _, state = ghc.read(Hd)
        ghc.write(z.to(Hd.device), state).sum().backward()
        outs.append(Hd.grad.cpu())
    assert rel_err(outs[1], outs[0]) < TOL[torch.float32]


def test_fused_bias_matches_separate_bias_add():
    ref, tri = make_pair(2, 3, D, True)
    inputs = make_inputs(ref, S, B)
    bias_ref = torch.randn(2 * D, dtype=torch.float64, requires_grad=True)
    bias_tri = bias_ref.detach().float().to(device()).requires_grad_(True)
    # reference: the torch write of (z + bias); kernel: bias fused into the write
    ref64 = copy.deepcopy(ref).double()
    H = inputs["H"].double().detach().requires_grad_(True)
    x, st = ref64.read(H)
    out_ref = ref64.write(inputs["z"].double() + bias_ref, st)
    (out_ref * inputs["w_out"].double()).sum().backward()
    Ht = inputs["H"].to(device()).detach().requires_grad_(True)
    _, st_t = tri.read(Ht)
    out_tri = ghc_write(tri, inputs["z"].to(device()), st_t, bias=bias_tri)
    (out_tri * inputs["w_out"].to(device())).sum().backward()
    assert rel_err(out_tri.cpu(), out_ref) < TOL[torch.float32]
    assert rel_err(bias_tri.grad.cpu(), bias_ref.grad) < TOL[torch.float32]
    assert rel_err(Ht.grad.cpu(), H.grad) < TOL[torch.float32]


def test_fused_dropout_equals_torch_with_the_same_mask():
    """dropout(z + bias) fused into the write == the torch write of (z + bias)·keep/(1 − p), with
    keep = dropout_keep_mask(seed): the kernel's Philox stream (not torch's dropout mask)."""
    p = 0.3
    ref, tri = make_pair(2, 3, D, True)
    inputs = make_inputs(ref, S, B)
    bias = torch.randn(2 * D)
    seed = torch.tensor([1234567], dtype=torch.int64, device=device())
    keep = dropout_keep_mask(seed, (S, B, 2 * D), p).cpu()
    many = dropout_keep_mask(seed, (16384,), p).float().mean().item()
    assert abs(many - (1 - p)) < 0.015  # 16384 draws: std 0.0036
    ref64 = copy.deepcopy(ref).double()
    H = inputs["H"].double().detach().requires_grad_(True)
    z = inputs["z"].double().detach().requires_grad_(True)
    bias_ref = bias.double().requires_grad_(True)
    _, st = ref64.read(H)
    out_ref = ref64.write((z + bias_ref) * keep / (1 - p), st)
    (out_ref * inputs["w_out"].double()).sum().backward()

    Ht = inputs["H"].to(device()).detach().requires_grad_(True)
    zt = inputs["z"].to(device()).detach().requires_grad_(True)
    bt = bias.to(device()).detach().requires_grad_(True)
    _, st_t = tri.read(Ht)
    out = ghc_write(tri, zt, st_t, bias=bt, dropout_p=p, training=True, seed=seed)
    (out * inputs["w_out"].to(device())).sum().backward()
    tol = TOL[torch.float32]
    assert rel_err(out.cpu(), out_ref) < tol and rel_err(zt.grad.cpu(), z.grad) < tol
    assert rel_err(bt.grad.cpu(), bias_ref.grad) < tol and rel_err(Ht.grad.cpu(), H.grad) < tol
    with torch.no_grad():  # another seed, another mask
        other = ghc_write(tri, zt, st_t, bias=bt, dropout_p=p, training=True, seed=seed + 1)
    assert not torch.equal(other, out)
    # eval mode / p = 0: no dropout at all
    Ht = inputs["H"].to(device())
    _, st_t = tri.read(Ht)
    no_drop = ghc_write(tri, inputs["z"].to(device()), st_t, dropout_p=p, training=False)
    _, st_r = ref.read(inputs["H"])
    assert rel_err(no_drop.cpu(), ref.write(inputs["z"], st_r)) < tol


# ------------------------------------------------------------------------------------ selection
def test_backend_is_chosen_once_at_construction():
    """triton always runs the kernels; auto takes them only with compiled Triton (CUDA), else the
    torch reference; the state type follows the backend, and a tensor the kernels cannot take is
    refused by name (no silent per-call fallback)."""
    ref, tri = make_pair(2, 3, D, True)
    assert (tri.backend.name, ref.backend.name) == ("triton", "torch")
    H = torch.randn(2, 2, 3 * D, device=device())
    assert isinstance(tri.read(H)[1], TritonGHCState)
    assert isinstance(ref.read(H.cpu())[1], GHCState)
    auto = GHC(vwn_config(n=3, m=2, hidden_size=2 * D, vwn_collapse="linear", ghc_impl="auto"))
    expect = ("triton" if select.compiled_triton_usable()
              else "compile" if select.compiler_usable() else "torch")
    assert auto.backend.name == expect
    with pytest.raises(GHCKernelUnavailableError, match="ghc_impl='triton'.*float64"):
        tri.double().read(H.double())


def test_triton_without_cuda_or_interpreter_is_a_clear_error(monkeypatch, caplog):
    monkeypatch.setattr(select, "cuda_usable", lambda: False)
    monkeypatch.setattr(select, "interpreter_active", lambda: False)
    monkeypatch.setattr(select, "interpreter_requested", lambda: False)
    monkeypatch.setattr(select, "compiled_triton_usable", lambda: False)
    monkeypatch.setattr(select, "compiler_usable", lambda: False)
    monkeypatch.setattr(select, "_logged", set())
    with pytest.raises(GHCKernelUnavailableError, match="TRITON_INTERPRET=1"):
        select.check_ghc_impl("triton", 3, 2)
    with pytest.raises(GHCKernelUnavailableError, match="interpreter is not active"):
        select.check_kernel_input(3, 2, torch.randn(2, 3))
    with caplog.at_level("INFO", logger="nemo_vwn.ghc"):
        assert select.choose_backend("auto", 3, 2) == "torch"  # auto never refuses
        assert select.choose_backend("auto", 3, 2) == "torch"
    assert len([r for r in caplog.records if "chose the torch GHC backend" in r.message]) == 1
    monkeypatch.setattr(select, "interpreter_requested", lambda: True)
    with pytest.raises(GHCKernelUnavailableError,
                       match="before triton is imported|before starting"):
        select.check_ghc_impl("triton", 3, 2)
    with pytest.raises(GHCKernelUnavailableError, match="n, m <= 64"):
        monkeypatch.setattr(select, "interpreter_active", lambda: True)
        select.check_ghc_impl("triton", 65, 8)


def test_config_accepts_the_impls_and_names_the_field():
    from nemo_vwn.config import VWNConfigError
    from nemo_vwn.testing.models import vwn_config

    for impl in ("torch", "triton", "auto"):
        assert vwn_config(n=3, m=2, vwn_collapse="linear", ghc_impl=impl).ghc_impl == impl
    with pytest.raises(VWNConfigError, match="ghc_impl='cuda' is not one of"):
        vwn_config(n=3, m=2, vwn_collapse="linear", ghc_impl="cuda")


# ------------------------------------------------------------------------ sequence parallelism
def test_sequence_parallel_grads_allreduced_equal_single_process():
    """2 gloo ranks, each with half the tokens (split along s): the all-reduced GHC gradients
    equal the 1-process gradients, and each rank's dL/dH equals its slice of the full one."""
    from nemo_vwn.distributed import run_distributed

    case = dict(m=2, n=3, d=D, s=6, b=2)
    ref, tri = make_pair(case["m"], case["n"], D, True, seed=5)
    full = run_layer(tri, make_inputs(ref, case["s"], case["b"], seed=9), torch.float32)
    results = run_distributed("tests.kernels.dist_workers:sequence_parallel_ghc", world_size=2,
                              kwargs=dict(case=case), timeout=300)
    assert [r["rank"] for r in results] == [0, 1]
    for name, grad in full["grads"].items():
        for r in results:
            assert rel_err(r["grads"][name], grad) < 1e-6, name
    half = case["s"] // 2
    for r in results:
        rank = r["rank"]
        assert r["mode"] == results[0]["mode"]
        assert rel_err(r["dH"], full["dH"][rank * half:(rank + 1) * half]) < 1e-6


def test_ghc_write_routes_bias_and_dropout_into_the_fused_write():
    _, tri = make_pair(2, 3, D, True, seed=8)
    inputs = make_inputs(tri, 2, 2)
    H, z = inputs["H"].to(device()), inputs["z"].to(device())
    bias = torch.randn(2 * D, device=device())
    seed = torch.tensor([123], dtype=torch.int64, device=device())
    with torch.no_grad():
        _, state = tri.read(H)
        via_module = tri.write(z, state, bias=bias, dropout_p=0.3, seed=seed)
        direct = ghc_write(tri, z, state, bias=bias, dropout_p=0.3, training=True, seed=seed)
    assert torch.equal(via_module, direct)
