"""Tensor, sequence, expert, pipeline and context parallelism on 2 and 4 CPU processes (gloo):
parity with one process.

Process launches dominate the cost, so every check of one world size runs in one launch (the
``two_processes`` / ``four_processes`` fixtures: tests/workers/batch.py), of those jobs whose test
is selected; each test asserts on its own jobs' rows.
"""

import os
import sys

import pytest

from nemo_vwn.distributed import run_distributed
from tests.workers import target
from tests.workers.batch import run_jobs
from tests.workers.cp import cp_parity
from tests.workers.ep import ep_parity
from tests.workers.pipeline import layout_parity
from tests.workers.tp import tp_parity

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# r = 1.5 (fractional: linear collapse), 2, 4; dense and MoE; factorized embedding once; the
# compiled GHC backend once (MoE, so TP+SP only).
TP_CASES = [
    dict(name="r1.5 (2,3) linear", n=3, m=2, vwn_collapse="linear"),
    dict(name="r2 (2,4)", n=4, m=2),
    dict(name="r4 (8,32)", n=32, m=8),
    dict(name="r2 (2,4) static GHC", n=4, m=2, ghc_dynamic=False),
    dict(name="r2 (2,4) factorized", n=4, m=2, vwn_embedding="factorized"),
    dict(name="r2 (2,4) MoE", n=4, m=2, moe=True),
    dict(name="r2 (2,4) MoE compiled GHC", n=4, m=2, moe=True, ghc_impl="compile"),
]


def _tp_cases(sequence_parallel):
    # megatron-core refuses MoE + TP without SP in training, so MoE runs in the SP variant only.
    return [dict(c, sequence_parallel=sequence_parallel) for c in TP_CASES
            if sequence_parallel or not c.get("moe")]


def _layout(layout, cases):
    return target(layout_parity), dict(layout=layout, cases=cases)


# (test, world size, key, (worker, kwargs)): the jobs each test asserts on.
JOBS = [
    ("test_tp2_matches_tp1", 2, "tp2", (target(tp_parity), dict(cases=_tp_cases(False)))),
    ("test_tp2_matches_tp1", 2, "tp2+sp", (target(tp_parity), dict(cases=_tp_cases(True)))),
    ("test_ep2_matches_ep1", 2, "ep2", (target(ep_parity), dict(cases=[
        dict(name="r1.5 (2,3) MoE", n=3, m=2, moe=True, vwn_collapse="linear"),
        dict(name="r2 (2,4) MoE", n=4, m=2, moe=True)]))),
    ("test_pp2_matches_pp1_1f1b_and_interleaved", 2, "pp2", _layout({"pp": 2}, [
        dict(name="stock GPT VPP2 (control)", stock=True, num_layers=4),
        dict(name="r2 (2,4) 1F1B", n=4, m=2),
        dict(name="r1.5 (2,3) 1F1B", n=3, m=2, vwn_collapse="linear"),
        dict(name="r2 (2,4) MoE 1F1B", n=4, m=2, moe=True),
        dict(name="r2 (2,4) factorized 1F1B", n=4, m=2, vwn_embedding="factorized"),
        dict(name="r2 (2,4) MTP k=1", n=4, m=2, mtp_num_layers=1),
        dict(name="r2 (2,4) MTP k=1 compiled GHC", n=4, m=2, mtp_num_layers=1,
             ghc_impl="compile"),
        dict(name="r1.5 (2,3) MoE MTP k=2", n=3, m=2, moe=True, vwn_collapse="linear",
             mtp_num_layers=2),
    ])),
    ("test_pp2_matches_pp1_1f1b_and_interleaved", 2, "pp2+vpp2", _layout({"pp": 2, "vpp": 2}, [
        dict(name="stock GPT VPP2 (control)", stock=True, num_layers=4),
        dict(name="r1.5 (2,3) VPP2", n=3, m=2, vwn_collapse="linear", num_layers=4),
        dict(name="r2 (2,4) MoE VPP2", n=4, m=2, moe=True, num_layers=4),
    ])),
    ("test_tp2_x_pp2_with_sequence_parallel", 4, "tp2xpp2+sp", _layout(
        {"tp": 2, "pp": 2, "sp": True}, [
            dict(name="r2 (2,4)", n=4, m=2),
            dict(name="r2 (2,4) MoE", n=4, m=2, moe=True),
        ])),
    ("test_ep2_x_pp2_moe", 4, "ep2xpp2", _layout({"ep": 2, "pp": 2}, [
        dict(name="r2 (2,4) MoE", n=4, m=2, moe=True),
        dict(name="r1.5 (2,3) MoE", n=3, m=2, moe=True, vwn_collapse="linear"),
    ])),
    ("test_cp2_matches_cp1", 2, "cp2", (target(cp_parity), dict(cases=[
        dict(name="r2 (2,4)", n=4, m=2),
        dict(name="r1.5 (2,3) MoE", n=3, m=2, moe=True, vwn_collapse="linear"),
        dict(name="r2 (2,4) MTP k=2", n=4, m=2, mtp_num_layers=2)]))),
    ("test_hybrid_pp2_and_tp2", 2, "hybrid pp2", _layout({"pp": 2}, [
        dict(name="stock hybrid (control)", stock=True, num_layers=4, pattern="*-|*-"),
        dict(name="r2 *E|*-", n=4, m=2, moe=True, num_layers=4, pattern="*E|*-"),
    ])),
    ("test_hybrid_pp2_and_tp2", 2, "hybrid tp2+sp", _layout({"tp": 2, "sp": True}, [
        dict(name="r1.5 *-E*", n=3, m=2, moe=True, num_layers=4, pattern="*-E*",
             vwn_collapse="linear"),
    ])),
]


def _launch(request, world_size):
    """{key: per-rank results} of the selected tests' jobs of ``world_size``, in one launch."""
    module = sys.modules[__name__]
    selected = {item.originalname for item in request.session.items
                if getattr(item, "module", None) is module}
    jobs = [(key, worker, kwargs) for test, size, key, (worker, kwargs) in JOBS
            if size == world_size and test in selected]
    if not jobs:
        return {}
    per_rank = run_distributed(target(run_jobs), world_size=world_size, kwargs={"jobs": jobs},
                               sys_path=[REPO_ROOT])
    return {key: [rank_results[key] for rank_results in per_rank] for key, _, _ in jobs}


@pytest.fixture(scope="module")
def two_processes(request):
    return _launch(request, 2)


@pytest.fixture(scope="module")
def four_processes(request):
    return _launch(request, 4)


def _report(title, rows):
    print(f"\n{title}")
    for row in rows:
        print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()))


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2+sp"])
def test_tp2_matches_tp1(two_processes, sequence_parallel):
    results = two_processes["tp2+sp" if sequence_parallel else "tp2"]
    for rank_rows in results:
        _report(f"TP=2{' + SP' if sequence_parallel else ''} vs TP=1", rank_rows)
        for row in rank_rows:
            assert row["n_sharded"] > 0, row  # the model really is tensor-parallel
            assert row["loss_max_abs_diff"] < 1e-5, row
            assert row["grad_max_rel_diff"] < 1e-4, row
            if sequence_parallel:
                assert row["sp_params_reduced"] > 0, row
    assert results[0] == results[1] or all(  # both TP ranks see identical loss/grads
        abs(a["loss"] - b["loss"]) == 0 for a, b in zip(results[0], results[1])
    )


def test_ep2_matches_ep1(two_processes):
    results = two_processes["ep2"]
    local = [rows[0]["local_experts"] for rows in results]
    assert local == [["0", "1"], ["2", "3"]]  # each rank holds half of the 4 experts
    for rank_rows in results:
        _report("EP=2 vs EP=1", rank_rows)
        for row in rank_rows:
            assert row["loss_max_abs_diff"] < 1e-5, row
            assert row["grad_max_rel_diff"] < 1e-4, row
    assert results[0][0]["loss"] != results[1][0]["loss"]  # ranks really had different data


def _check_layout(launched, key):
    """The rows of a layout_parity job (all ranks), its losses and gradients checked."""
    rows = [row for rank_rows in launched[key] for row in rank_rows]
    _report(f"layout {rows[0]['layout']} vs 1 process", rows)
    for row in rows:
        if row["n_losses"]:  # last pipeline stage: one loss per microbatch
            assert row["n_losses"] == 4 and row["loss_max_abs_diff"] < 1e-5, row
        if row["mtp_depths_logged"]:  # the stage that ran MTP logged one loss per depth
            assert row["mtp_loss_max_abs_diff"] < 1e-5, row
        assert row["grad_max_rel_diff"] < 1e-4, row
    return rows


def test_pp2_matches_pp1_1f1b_and_interleaved(two_processes):
    rows = _check_layout(two_processes, "pp2")
    mtp_rows = [row for row in rows if "MTP" in row["case"]]
    assert {row["pp_rank"]: row["mtp_depths_logged"] for row in mtp_rows
            if row["case"].startswith("r1.5")} == {0: 0, 1: 2}  # MTP runs on the last stage
    by_stage = {row["pp_rank"]: row["layers"] for row in rows if row["case"] == "r2 (2,4) 1F1B"}
    assert by_stage == {0: ["0"], 1: ["1"]}  # each stage holds its own layer
    rows = _check_layout(two_processes, "pp2+vpp2")
    by_stage = {row["pp_rank"]: row["layers"] for row in rows if row["case"].startswith("r1.5")}
    assert by_stage == {0: ["0", "2"], 1: ["1", "3"]}  # interleaved chunks


def test_tp2_x_pp2_with_sequence_parallel(four_processes):
    rows = _check_layout(four_processes, "tp2xpp2+sp")
    assert {(row["tp_rank"], row["pp_rank"]) for row in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_ep2_x_pp2_moe(four_processes):
    rows = _check_layout(four_processes, "ep2xpp2")
    assert sorted(row["pp_rank"] for row in rows if row["n_losses"]) == [1, 1, 1, 1]


def test_cp2_matches_cp1(two_processes):
    """Context parallelism: the wide state is sharded along the sequence like the residual.
    Attention under CP=2 is the CPU test scaffold (all-gathered K/V, nemo_vwn.testing); everything
    else is the VWN model as built for training."""
    for rank_rows in two_processes["cp2"]:
        _report("CP=2 vs CP=1", rank_rows)
        for row in rank_rows:
            assert row["local_tokens"] == 8, row  # each rank holds half of the 16 tokens
            assert row["loss_max_abs_diff"] < 1e-5, row
            assert row["grad_max_rel_diff"] < 1e-4, row
            if "MTP" in row["case"]:
                assert row["mtp_loss_max_abs_diff"] < 1e-5, row


def test_hybrid_pp2_and_tp2(two_processes):
    """VWNHybridModel: PP=2 through the real schedules ('|' stage breaks) and TP=2+SP."""
    rows = _check_layout(two_processes, "hybrid pp2")
    assert {row["pp_rank"]: row["layers"] for row in rows if row["case"] == "r2 *E|*-"} == {
        0: ["0", "1"], 1: ["2", "3"]}
    _check_layout(two_processes, "hybrid tp2+sp")
