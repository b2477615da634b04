"""GHC / DGHC against an independent per-token reference written from docs/method.md §3-4."""

import math

import pytest
import torch

from nemo_vwn.ghc import GHC, static_alpha_init, static_beta_init
from nemo_vwn.testing.models import vwn_config

# (m, n): 1.5x, 2x, 4x at m=8 (d=8 for hidden 64), no widening, Hyper-Connection-like m=1.
SHAPES = [(2, 3), (8, 16), (4, 8), (8, 32), (3, 3), (1, 4)]


def make_ghc(m, n, dynamic=True, hidden=None, **overrides):
    hidden = hidden or (48 if m == 3 else 64)
    config = vwn_config(n=n, m=m, hidden_size=hidden, ghc_dynamic=dynamic,
                        vwn_collapse="linear" if n != m else "none", **overrides)
    return GHC(config, layer_number=1)


def randomize(ghc, seed=0):
    """Random values for every parameter, so the dynamic terms are exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ghc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


def reference_read_write(ghc, H, z):
    """Per-token loop in float64, straight from the equations (independent of GHC's tensor code).

    H: [s, b, n*d], z: [s, b, m*d]  ->  x [s, b, m*d], H_new [s, b, n*d]
    """
    n, m, d = ghc.n, ghc.m, ghc.d
    P = {k: v.detach().double() for k, v in ghc.named_parameters()}
    s, b, _ = H.shape
    x_out = torch.zeros(s, b, m * d, dtype=torch.float64)
    h_out = torch.zeros(s, b, n * d, dtype=torch.float64)
    for i in range(s):
        for j in range(b):
            Ht = H[i, j].double().reshape(n, d)
            A, B = P["static_alpha"], P["static_beta"]
            if ghc.dynamic:
                rms = torch.sqrt((Ht ** 2).mean(dim=1, keepdim=True) + ghc.eps)
                Hn = Ht / rms * P["norm_weight"]
                A = (P["dynamic_alpha_scale"]
                     * torch.tanh(Hn @ P["dynamic_alpha_proj"] / math.sqrt(d)) + A)
                B = (P["dynamic_beta_scale"]
                     * torch.tanh(Hn @ P["dynamic_beta_proj"] / math.sqrt(d)).T + B)
            A_read, A_carry = A[:, :m], A[:, m:]
            X = A_read.T @ Ht  # (m, d)
            Z = z[i, j].double().reshape(m, d)
            H_new = B.T @ Z + A_carry.T @ Ht  # (n, d)
            x_out[i, j] = X.reshape(-1)
            h_out[i, j] = H_new.reshape(-1)
    return x_out, h_out


@pytest.mark.parametrize("m,n", SHAPES)
def test_static_init_matches_the_method(m, n):
    ghc = make_ghc(m, n, dynamic=True)
    A, B = ghc.static_alpha.detach(), ghc.static_beta.detach()
    assert A.shape == (n, m + n) and B.shape == (m, n)
    assert torch.equal(A[:m, :m], torch.eye(m)) and torch.all(A[m:, :m] == 0)  # A_read = [I_m; 0]
    assert torch.equal(A[:, m:], torch.eye(n))  # A_carry = I_n
    for i in range(m):
        for j in range(n):
            assert B[i, j].item() == (1.0 if j % m == i else 0.0)
    # DGHC starts as GHC: W = 0, S = 1, shared gain of size d = 1
    assert ghc.dynamic_alpha_proj.shape == (ghc.d, m + n) and torch.all(ghc.dynamic_alpha_proj == 0)
    assert ghc.dynamic_beta_proj.shape == (ghc.d, m) and torch.all(ghc.dynamic_beta_proj == 0)
    assert torch.all(ghc.dynamic_alpha_scale == 1) and ghc.dynamic_alpha_scale.shape == (n, m + n)
    assert torch.all(ghc.dynamic_beta_scale == 1) and ghc.dynamic_beta_scale.shape == (m, n)
    assert ghc.norm_weight.shape == (ghc.d,) and torch.all(ghc.norm_weight == 1)
    assert torch.equal(static_alpha_init(n, m), A) and torch.equal(static_beta_init(n, m), B)


def test_static_module_has_only_static_parameters():
    names = sorted(n for n, _ in make_ghc(2, 3, dynamic=False).named_parameters())
    assert names == ["static_alpha", "static_beta"]


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("m,n", SHAPES)
def test_read_write_match_reference(m, n, dynamic):
    ghc = make_ghc(m, n, dynamic=dynamic)
    randomize(ghc, seed=m * 100 + n)
    gen = torch.Generator().manual_seed(7)
    s, b = 5, 3
    H = torch.randn(s, b, n * ghc.d, generator=gen)
    z = torch.randn(s, b, m * ghc.d, generator=gen)
    x, state = ghc.read(H)
    h_new = ghc.write(z, state)
    x_ref, h_ref = reference_read_write(ghc, H, z)
    assert x.shape == (s, b, m * ghc.d) and h_new.shape == (s, b, n * ghc.d)
    torch.testing.assert_close(x.double(), x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_new.double(), h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,n", [(2, 3), (1, 2), (2, 2)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gradcheck_float64(m, n, dynamic):
    ghc = make_ghc(m, n, dynamic=dynamic, hidden=4 * m)  # d = 4
    randomize(ghc, seed=3)
    ghc.double()
    gen = torch.Generator().manual_seed(11)
    H = torch.randn(2, 2, n * ghc.d, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 2, m * ghc.d, generator=gen, dtype=torch.float64, requires_grad=True)
    params = [p for _, p in sorted(ghc.named_parameters())]
    names = [k for k, _ in sorted(ghc.named_parameters())]

    def run(H, z, *flat):
        for name, value in zip(names, flat):
            setattr(ghc, name, value)  # plain tensors stand in for the parameters
        x, state = ghc.read(H)
        # a nonlinear stand-in branch so read's output matters for the gradient
        return x.tanh().sum() + ghc.write(z + x.sin(), state)

    inputs = [H, z] + [p.detach().clone().requires_grad_(True) for p in params]
    saved = {k: getattr(ghc, k) for k in names}
    try:
        for k in names:
            delattr(ghc, k)
        assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    finally:
        for k, v in saved.items():
            setattr(ghc, k, v)


@pytest.mark.parametrize("m,n", [(2, 3), (8, 16)])
def test_dynamic_equals_static_at_init(m, n):
    dyn, sta = make_ghc(m, n, dynamic=True), make_ghc(m, n, dynamic=False)
    H = torch.randn(4, 2, n * dyn.d)
    z = torch.randn(4, 2, m * dyn.d)
    xd, sd = dyn.read(H)
    xs, ss = sta.read(H)
    assert torch.equal(xd, xs)
    assert torch.equal(dyn.write(z, sd), sta.write(z, ss))


def read_write_at_init(ghc, H, z):
    """One read and write of an initialised GHC: asserts the read returns slots 0..m-1 and gives
    the written state as [s, b, n, d]."""
    m, n, d = ghc.m, ghc.n, ghc.d
    x, state = ghc.read(H)
    assert torch.equal(x, H[..., : m * d])
    return ghc.write(z, state).view(*H.shape[:2], n, d)


def test_init_reads_slots_and_broadcasts_writes():
    """At init x = slots 0..m-1, and slot j gets H_j + Z_(j mod m)."""
    m, n = 2, 5
    ghc = make_ghc(m, n)
    d = ghc.d
    H = torch.randn(3, 2, n * d)
    z = torch.randn(3, 2, m * d)
    out = read_write_at_init(ghc, H, z)
    for j in range(n):
        assert torch.equal(out[:, :, j],
                           H.view(3, 2, n, d)[:, :, j] + z.view(3, 2, m, d)[:, :, j % m])


@pytest.mark.parametrize("m,n", [(2, 3), (2, 8), (8, 16), (1, 4)])
def test_backbone_write_init_writes_only_the_backbone_slots(m, n):
    """ghc_write_init="backbone": B[i, j] = 1 iff j == i, so at init slot j < m gets H_j + Z_j
    (the same residual stream as with "tile") and slot j >= m keeps H_j (the embedding's)."""
    B = static_beta_init(n, m, "backbone")
    assert B.shape == (m, n)
    for i in range(m):
        for j in range(n):
            assert B[i, j].item() == (1.0 if j == i else 0.0)
    ghc = make_ghc(m, n, ghc_write_init="backbone")
    assert torch.equal(ghc.static_beta.detach(), B)
    d = ghc.d
    H = torch.randn(3, 2, n * d)
    z = torch.randn(3, 2, m * d)
    out = read_write_at_init(ghc, H, z)
    Hs, zs = H.view(3, 2, n, d), z.view(3, 2, m, d)
    for j in range(n):
        expected = Hs[:, :, j] + zs[:, :, j] if j < m else Hs[:, :, j]
        assert torch.equal(out[:, :, j], expected)
    # the backbone slots see exactly what they see with the method's init
    assert torch.equal(read_write_at_init(make_ghc(m, n), H, z)[:, :, :m], out[:, :, :m])


def test_write_inits_coincide_when_n_equals_m():
    assert torch.equal(static_beta_init(4, 4, "tile"), static_beta_init(4, 4, "backbone"))
    assert torch.equal(static_beta_init(4, 4, "backbone"), torch.eye(4))
    with pytest.raises(ValueError, match="ghc_write_init='diag' is not one of"):
        static_beta_init(4, 2, "diag")


def test_bf16_keeps_coefficient_math_in_fp32():
    m, n = 2, 4
    ghc = make_ghc(m, n)
    randomize(ghc, seed=5)
    H = torch.randn(3, 2, n * ghc.d)
    z = torch.randn(3, 2, m * ghc.d)
    alpha, beta = ghc.coefficients(H.bfloat16().view(3, 2, n, ghc.d))
    assert alpha.dtype == torch.float32 and beta.dtype == torch.float32
    x16, st16 = ghc.read(H.bfloat16())
    out16 = ghc.write(z.bfloat16(), st16)
    assert x16.dtype == torch.bfloat16 and out16.dtype == torch.bfloat16
    x_ref, h_ref = reference_read_write(ghc, H.bfloat16().float(), z.bfloat16().float())
    torch.testing.assert_close(x16.double(), x_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out16.double(), h_ref, rtol=2e-2, atol=2e-2)


def test_parameters_are_tagged_for_sequence_parallel_grad_allreduce():
    assert all(not getattr(p, "sequence_parallel") for p in make_ghc(2, 3).parameters())
    ghc = make_ghc(2, 3, sequence_parallel=True, tensor_model_parallel_size=2)
    assert all(getattr(p, "sequence_parallel") is True for p in ghc.parameters())


def test_read_rejects_wrong_width():
    ghc = make_ghc(2, 3)
    with pytest.raises(ValueError, match="width n\\*d"):
        ghc.read(torch.randn(2, 2, 2 * ghc.d))


def test_recompute_gives_identical_gradients_and_saves_activations(megatron_cpu):
    """ghc_recompute: the same gradients bit for bit, fewer bytes kept for backward."""
    from nemo_vwn.profiling import saved_activation_bytes
    from nemo_vwn.testing.models import build_vwn_gpt, causal_mask, make_batch

    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = build_vwn_gpt(vwn_config(n=8, m=2, ghc_recompute=recompute))
        if recompute:
            model.load_state_dict(results[False]["state"])
        input_ids, position_ids, labels = make_batch(batch_size=2)
        saved = saved_activation_bytes(
            model, lambda: model(input_ids, position_ids, causal_mask(), labels=labels))
        results[recompute] = dict(
            state=model.state_dict(), saved=saved,
            grads={n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in results[False]["grads"].items():
        assert torch.equal(grad, results[True]["grads"][name]), name
    assert results[True]["saved"] < 0.85 * results[False]["saved"], (
        results[True]["saved"], results[False]["saved"])


def test_backend_is_chosen_once_and_named():
    ghc = make_ghc(2, 3)
    assert ghc.backend.name == "torch" and "backend=torch" in repr(ghc)
    with pytest.raises(ValueError, match="ghc_impl='cuda' is not one of"):
        from nemo_vwn.kernels import build_backend

        build_backend("cuda", 3, 2, reference=object)


def test_write_applies_bias_and_dropout_of_the_branch():
    """write(z, bias, p) == write(dropout(z + bias)): bias added, p=1 drops the branch (only the
    carried state remains), eval mode keeps it."""
    ghc = make_ghc(2, 3)
    randomize(ghc, seed=4)
    H = torch.randn(3, 2, 3 * ghc.d)
    z = torch.randn(3, 2, 2 * ghc.d)
    bias = torch.randn(2 * ghc.d)
    _, state = ghc.read(H)
    assert torch.allclose(ghc.write(z, state, bias=bias), ghc.write(z + bias, state))
    assert torch.allclose(ghc.write(z, state, bias=bias, dropout_p=1.0),
                          ghc.write(torch.zeros_like(z), state))
    assert torch.equal(ghc.write(z, state, dropout_p=0.5, training=False), ghc.write(z, state))
    torch.manual_seed(0)
    dropped = ghc.write(z, state, dropout_p=0.5)
    torch.manual_seed(0)
    keep = torch.nn.functional.dropout(torch.ones_like(z), 0.5) > 0
    assert torch.allclose(dropped, ghc.write(torch.where(keep, 2 * z, 0.0), state))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        ghc.write(z, state, dropout_p=1.5)


def test_auto_prefers_triton_then_compile_then_torch_and_forcing_is_checked(monkeypatch):
    from nemo_vwn.kernels import GHCKernelUnavailableError, select

    monkeypatch.setattr(select, "_logged", set())
    for triton_ok, compiler_ok, expect in ((True, True, "triton"), (False, True, "compile"),
                                           (False, False, "torch")):
        monkeypatch.setattr(select, "compiled_triton_usable", lambda ok=triton_ok: ok)
        monkeypatch.setattr(select, "compiler_usable", lambda ok=compiler_ok: ok)
        assert select.choose_backend("auto", 3, 2) == expect
    monkeypatch.setattr(select, "compiled_triton_usable", lambda: True)
    monkeypatch.setattr(select, "compiler_usable", lambda: True)
    assert select.choose_backend("auto", 65, 8) == "compile"  # beyond the Triton kernels' n
    monkeypatch.setattr(select, "compiler_usable", lambda: False)
    with pytest.raises(GHCKernelUnavailableError, match="ghc_impl='compile' cannot run here"):
        select.choose_backend("compile", 3, 2)
