"""Wide-state diagnostics (nemo_vwn.diagnostics): identities at the static init and against an
independent numpy computation."""

import numpy as np
import pytest
import torch

from nemo_vwn import diagnostics


def test_effective_rank_matches_numpy():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(200, 200)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    spectrum = np.array([5.0, 3.0, 1.0] + [0.0] * 27)
    matrix = (u[:, :30] * spectrum) @ v.T
    matrix -= matrix.mean(axis=0)  # already centred: the function's centring changes nothing
    p = np.linalg.svd(matrix, compute_uv=False) ** 2
    p = p[p > 1e-12] / p.sum()
    expected = float(np.exp(-(p * np.log(p)).sum()))
    assert diagnostics.effective_rank(torch.from_numpy(matrix)) == pytest.approx(expected,
                                                                                rel=1e-9)
    assert diagnostics.effective_rank(torch.ones(10, 4)) == 0.0  # constant rows: nothing left


def probe(embedding, megatron_cpu):
    from nemo_vwn.builders import build_vwn_gpt, causal_mask, random_batch, vwn_config

    torch.manual_seed(0)
    model = build_vwn_gpt(vwn_config(n=4, m=2, vwn_embedding=embedding), vocab_size=512, seq=64)
    tokens, positions, _ = random_batch(4, 64, 512)
    return diagnostics.probe_wide_state(model, lambda: model(tokens, positions, causal_mask(64)))


@pytest.mark.parametrize("embedding", ["wide", "factorized"])
def test_probe_at_the_static_init(megatron_cpu, embedding):
    sites = probe(embedding, megatron_cpu)
    assert len(sites) == 4  # 2 layers x (attention, MLP)
    assert [s["name"].rsplit(".", 1)[-1] for s in sites] == ["self_attention_ghc", "mlp_ghc"] * 2
    for site in sites:
        # DGHC projections start at 0: A_read = [I_m; 0] reads no extra slot, B writes one
        # backbone row into each of the n slots
        assert site["read_from_extra"] == 0.0
        assert site["write_to_extra"] == pytest.approx((4 - 2) / 4)
        assert site["max_rank"] == min(256, 128) and site["tokens"] == 256
        assert 0.0 < site["extra_slot_energy"] < 1.0
    first = sites[0]
    if embedding == "factorized":  # a width-D table times Linear(D, D'): rank <= D = 64
        assert first["effective_rank"] <= 64 + 1e-6
    else:  # a wide table: its 2 extra slots hold their own random embedding
        assert first["effective_rank"] > 64


def test_probe_refuses_a_model_without_ghc(megatron_cpu):
    with pytest.raises(ValueError, match="no GHC module"):
        diagnostics.probe_wide_state(torch.nn.Linear(2, 2), lambda: None)
