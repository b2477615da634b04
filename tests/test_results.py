"""Loss records -> curves -> VWN vs baseline summary (synthetic records, exact numbers)."""

import json

import pytest

from nemo_vwn import results


def write_run(path, tokens_per_iteration, ranks):
    (path / "records").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"recipe": path.name,
                                               "tokens_per_iteration": tokens_per_iteration}))
    for rank, (layout, train, evals) in enumerate(ranks):
        (path / "records" / f"losses.rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "parallel": layout, "train": train, "eval": evals}))


def test_merge_weights_by_tokens_and_skips_duplicate_ranks(tmp_path):
    dp0 = {"tp": 0, "dp": 0, "pp_last": True}
    dp1 = {"tp": 0, "dp": 1, "pp_last": True}
    tp1 = {"tp": 1, "dp": 0, "pp_last": True}  # a TP replica: same tokens as tp 0, ignored
    first = {"tp": 0, "dp": 0, "pp_last": False}  # a first pipeline stage: no losses
    write_run(tmp_path / "run", 100, [
        (dp0, [[1, 40.0, 10], [2, 30.0, 10]], [[2, 25.0, 10]]),
        (dp1, [[1, 20.0, 10], [2, 10.0, 10]], []),
        (tp1, [[1, 999.0, 10], [2, 999.0, 10]], []),
        (first, [], []),
    ])
    curve = results.load_run(str(tmp_path / "run"))
    assert curve.iterations == [1, 2]
    assert curve.train_loss == [3.0, 2.0]  # (40 + 20) / 20, (30 + 10) / 20
    assert curve.tokens == [100, 200]
    assert curve.eval_iterations == [2] and curve.eval_loss == [2.5]


def test_smoothing_and_tokens_to_reach():
    assert results.smooth([4, 2, 6, 0], 2) == [4, 3, 4, 3]
    curve = results.RunCurve("vwn", 10, iterations=[1, 2, 3, 4], train_loss=[5, 4, 3, 2])
    assert results.tokens_to_reach(curve, 3.0, window=1) == 30
    assert results.tokens_to_reach(curve, 1.0, window=1) is None


def test_compare_reports_token_efficiency():
    base = results.RunCurve("base", 10, iterations=[1, 2, 3, 4], train_loss=[5, 4, 3.5, 3])
    vwn = results.RunCurve("vwn", 10, iterations=[1, 2, 3, 4], train_loss=[5, 3.5, 3, 2.5])
    summary = results.compare(vwn, base, window=1)
    assert summary["delta_train_loss"] == pytest.approx(-0.5)
    assert summary["vwn_tokens_to_reach_baseline_final"] == 30
    assert summary["token_ratio"] == pytest.approx(40 / 30)
    assert summary["baseline_tokens_to_reach_own_final"] == 40
    assert summary["token_ratio_paired"] == pytest.approx(40 / 30)
    table = results.markdown_table(summary, "vwn", "base")
    assert "1.33x fewer tokens than the baseline first does" in table and "| 40 | 30 |" in table


def test_paired_token_ratio_judges_both_curves_by_the_first_crossing():
    # the baseline's smoothed loss dips to its final value (3.0) at 30 tokens, then wobbles
    base = results.RunCurve("base", 10, iterations=[1, 2, 3, 4, 5], train_loss=[5, 4, 3, 3.4, 3])
    vwn = results.RunCurve("vwn", 10, iterations=[1, 2, 3, 4, 5], train_loss=[5, 3, 2.5, 2, 2])
    summary = results.compare(vwn, base, window=1)
    assert summary["vwn_tokens_to_reach_baseline_final"] == 20
    assert summary["baseline_tokens_to_reach_own_final"] == 30
    assert summary["token_ratio"] == pytest.approx(50 / 20)
    assert summary["token_ratio_paired"] == pytest.approx(30 / 20)
    assert results.compare(base, base, window=1)["token_ratio_paired"] == 1.0


def test_noise_note_puts_one_run_beside_the_measured_seed_spread():
    base = results.RunCurve("base", 10, iterations=[1, 2], train_loss=[5, 4],
                            eval_iterations=[2], eval_loss=[4.5])
    vwn = results.RunCurve("vwn", 10, iterations=[1, 2], train_loss=[5, 3.9],
                           eval_iterations=[2], eval_loss=[4.4])
    summary = results.compare(vwn, base, window=1)
    assert summary["delta_eval_loss"] == pytest.approx(-0.1)
    assert "delta validation loss (VWN - baseline): -0.1000" in results.markdown_table(
        summary, "vwn", "base")
    # the spread of docs/results.md 1.6: validation losses of three seeds, recomputed here
    base_val, vwn_val = [6.0947, 6.1288, 6.1338], [6.0670, 6.0516, 6.0344]
    deltas = [v - b for v, b in zip(vwn_val, base_val)]
    mean, sd = results.mean_sd(deltas)
    spread = results.MEASURED_SPREAD["tiny_vwn_moe_cpu"]
    assert (spread.mean_delta_eval, spread.sd_delta_eval) == (round(mean, 4), round(sd, 4))
    note = results.noise_note(summary, "tiny_vwn_moe_cpu", iterations=300)
    k = abs(-0.1 - spread.mean_delta_eval) / spread.sd_delta_eval
    assert f"-0.1000 is {k:.1f} sd from that mean" in note and "(2 sd)" in note
    assert "this run trained" not in note
    assert "this run trained 50 iterations" in results.noise_note(summary, "tiny_vwn_moe_cpu", 50)
    assert "has not been measured" in results.noise_note(summary, "tiny_vwn_dense_cpu")


def test_plot_writes_a_png(tmp_path):
    base = results.RunCurve("base", 10, iterations=[1, 2, 3], train_loss=[5, 4, 3],
                            eval_iterations=[3], eval_loss=[3.2])
    path = results.plot([base], str(tmp_path / "plot.png"), window=1)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_mean_sd_matches_statistics():
    import statistics

    values = [4.6399, 4.6353, 4.6284]
    mean, sd = results.mean_sd(values)
    assert mean == pytest.approx(statistics.mean(values), rel=1e-12)
    assert sd == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert results.mean_sd([1.5]) == (1.5, None)
    with pytest.raises(ValueError, match="at least one"):
        results.mean_sd([])


def test_fit_log2_with_and_without_intercept_matches_numpy():
    import math

    import numpy as np

    rs = [1, 1.5, 2, 4, 8]
    ys = [-0.014, -0.081, -0.083, -0.094, -0.103]
    xs = np.log2(rs)
    with_b = results.fit_log2(list(zip(rs, ys)))
    slope, offset = np.polyfit(xs, ys, 1)
    assert with_b["slope"] == pytest.approx(slope, rel=1e-10)
    assert with_b["intercept"] == pytest.approx(offset, rel=1e-10)
    assert with_b["r2"] == pytest.approx(np.corrcoef(xs, ys)[0, 1] ** 2, rel=1e-10)
    origin = results.fit_log2(list(zip(rs, ys)), intercept=False)
    (ref,), res, *_ = np.linalg.lstsq(xs[:, None], np.array(ys), rcond=None)
    assert origin["slope"] == pytest.approx(ref, rel=1e-10) and origin["intercept"] is None
    ss_tot = float(np.sum((np.array(ys) - np.mean(ys)) ** 2))
    assert origin["r2"] == pytest.approx(1 - float(res[0]) / ss_tot, rel=1e-10)
    assert origin["r2"] < with_b["r2"]  # a constraint cannot fit better
    with pytest.raises(ValueError, match="two distinct r"):
        results.fit_log2([(1, 0.1), (1, 0.2)])
    assert math.isfinite(results.fit_log2([(1, 0.0), (2, -0.1)])["slope"])


def test_plot_seed_bands_writes_a_small_png(tmp_path):
    curves = [results.RunCurve("b", 10, iterations=[1, 2, 3], train_loss=[5, 4, 3 + s],
                               eval_iterations=[3], eval_loss=[3.2 + s]) for s in (0, 0.1)]
    path = results.plot_seed_bands({"baseline": curves, "vwn": curves[:1]},
                                   str(tmp_path / "bands.png"), window=1)
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 150_000
