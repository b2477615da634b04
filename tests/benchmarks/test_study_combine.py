"""benchmarks/study_combine.py: two studies' results.json -> one table and one fit over every r.

Synthetic studies (no training): the combined table and fit are checked against statistics /
numpy on the same numbers; baselines that are not the same run, and a run present in two studies,
are errors; the command a user types writes the table, the JSON and small PNGs."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "study_combine.py")
SEEDS = (1, 2, 3)
BASE = {1: 4.65, 2: 4.61, 3: 4.66}
# delta of each VWN variant per seed (the "truth" both studies were paired with)
DELTAS = {"vwn_r1": (1.0, (0.01, -0.004, 0.02)), "vwn_r1.5": (1.5, (-0.05, -0.07, -0.04)),
          "vwn_r2": (2.0, (-0.09, -0.07, -0.10)), "vwn_r4": (4.0, (-0.11, -0.12, -0.09))}


@pytest.fixture(scope="module")
def combine_module():
    spec = importlib.util.spec_from_file_location("study_combine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(variant, seed, r, val, delta, kind="vwn", params=5_000_000):
    return dict(variant=variant, seed=seed, dir=f"{variant}_s{seed}", kind=kind, r=r, mtp=False,
                params_total=params, params_activated=params // 2, vocab_size=8192,
                parameters_loaded=params, flops_per_token=4e6, val_next_token=val,
                val_next_2_token=None, delta_next_token=delta, delta_next_2_token=None,
                final_train_loss=val - 0.7, tokens=1228800, tokens_to_reach_baseline=900000,
                token_ratio=1.2 if kind == "baseline" else 1.8, wall_seconds=300.0,
                gap_by_progress={"25%": delta, "50%": delta, "75%": delta, "100%": delta})


def _study(path, variants, base_shift=0.0):
    runs = [_row("baseline", s, 1.0, BASE[s] + base_shift, 0.0, kind="baseline",
                 params=4_461_696) for s in SEEDS]
    for name in variants:
        r, deltas = DELTAS[name]
        runs += [_row(name, s, r, BASE[s] + d, d) for s, d in zip(SEEDS, deltas)]
    path.write_text(json.dumps({"runs": runs, "variants": [], "fits": {}, "window": 30}))
    return str(path)


def test_table_and_fit_cover_every_study(combine_module, tmp_path):
    a = _study(tmp_path / "a.json", ["vwn_r2", "vwn_r4"])
    b = _study(tmp_path / "b.json", ["vwn_r1", "vwn_r1.5"])
    report = combine_module.combine([a, b])
    table = {t["variant"]: t for t in report["variants"]}
    assert list(table) == ["baseline", "vwn_r1", "vwn_r1.5", "vwn_r2", "vwn_r4"]
    for name, (r, deltas) in DELTAS.items():
        assert table[name]["delta_next_token"] == pytest.approx(statistics.mean(deltas), abs=1e-12)
        assert table[name]["delta_next_token_sd"] == pytest.approx(statistics.stdev(deltas),
                                                                   abs=1e-12)
        assert table[name]["seeds"] == list(SEEDS)
    xs = [math.log2(DELTAS[n][0]) for n in DELTAS]
    ys = [statistics.mean(DELTAS[n][1]) for n in DELTAS]
    slope, offset = np.polyfit(xs, ys, 1)
    fit = report["fits"]["no_mtp/delta_next_token"]
    assert fit["r"] == [1.0, 1.5, 2.0, 4.0]
    assert fit["with_intercept"]["slope"] == pytest.approx(slope, abs=1e-12)
    assert fit["with_intercept"]["intercept"] == pytest.approx(offset, abs=1e-12)
    through_zero = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    assert fit["no_intercept"]["slope"] == pytest.approx(through_zero, abs=1e-12)
    assert len(fit["with_intercept"]["slope_per_seed"]) == len(SEEDS)
    assert sum("the same run" in note for note in report["notes"]) == len(SEEDS)
    # results.json from before the paired token ratio: derived from the same-seed baseline's own
    assert table["vwn_r2"]["token_ratio_paired"] == pytest.approx(1.5, abs=1e-12)
    assert table["baseline"]["token_ratio_paired"] == pytest.approx(1.0, abs=1e-12)


def test_different_baselines_cannot_share_a_fit(combine_module, tmp_path):
    a = _study(tmp_path / "a.json", ["vwn_r2"])
    b = _study(tmp_path / "b.json", ["vwn_r4"], base_shift=1e-3)
    with pytest.raises(combine_module.CombineError, match="not the same baseline run"):
        combine_module.combine([a, b])
    assert combine_module.combine([a, b], baseline_tol=2e-3)["variants"][0]["seeds"] == [1, 2, 3]


def test_a_run_in_two_studies_is_an_error(combine_module, tmp_path):
    a = _study(tmp_path / "a.json", ["vwn_r2"])
    b = _study(tmp_path / "b.json", ["vwn_r2", "vwn_r4"])
    with pytest.raises(combine_module.CombineError, match="vwn_r2 seed 1 is in both"):
        combine_module.combine([a, b])


def test_command_writes_table_json_and_figures(tmp_path):
    a = _study(tmp_path / "a.json", ["vwn_r2", "vwn_r4"])
    b = _study(tmp_path / "b.json", ["vwn_r1", "vwn_r1.5"])
    out, figures = tmp_path / "out" / "all", tmp_path / "figures"
    proc = subprocess.run([sys.executable, SCRIPT, a, b, "--output", str(out), "--figures",
                           str(figures), "--figure-prefix", "all_"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((tmp_path / "out" / "all.json").read_text())
    assert [t["variant"] for t in written["variants"]][-1] == "vwn_r4"
    assert "over r = 1, 1.5, 2, 4" in (tmp_path / "out" / "all.md").read_text()
    for name in ("all_delta_vs_log2r.png", "all_paired_deltas.png"):
        data = (figures / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 1_000 < len(data) < 150_000, name
    bad = subprocess.run([sys.executable, SCRIPT, a, "--output", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "at least two studies" in bad.stderr


def test_controls_from_files_and_dirs_join_the_paired_figure(combine_module, tmp_path):
    """--controls-from takes a study dir (its results.json) or a JSON file such as the committed
    docs/results copies; their variants join the figure's rows, tagged, with their own deltas."""
    report = combine_module.combine([_study(tmp_path / "a.json", ["vwn_r2"]),
                                     _study(tmp_path / "b.json", ["vwn_r4"])])
    combine_module.write(report, str(tmp_path / "fact"))          # a committed-style copy
    study_dir = tmp_path / "r2_bytes"
    study_dir.mkdir()
    other = combine_module.combine([_study(tmp_path / "c.json", ["vwn_r1.5"]),
                                    _study(tmp_path / "d.json", ["vwn_r1"])])
    combine_module.write(other, str(study_dir / "results"))
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import study_report

    rows = study_report.control_rows(report, [str(tmp_path / "fact.json"), str(study_dir)])
    labels = [row[0] for row in rows]
    assert labels == ["vwn_r2", "vwn_r4", "fact: vwn_r2", "fact: vwn_r4", "r2_bytes: vwn_r1",
                      "r2_bytes: vwn_r1.5"]
    by_label = {row[0]: row for row in rows}
    deltas = DELTAS["vwn_r1.5"][1]
    assert math.isclose(by_label["r2_bytes: vwn_r1.5"][1], statistics.mean(deltas), abs_tol=1e-12)
    assert math.isclose(by_label["r2_bytes: vwn_r1.5"][2], statistics.stdev(deltas), abs_tol=1e-12)
    assert by_label["fact: vwn_r4"][3] == 3
    paths = combine_module.write(report, str(tmp_path / "all"), str(tmp_path / "figures"), "x_",
                                 controls=[str(study_dir)])
    assert [os.path.basename(p) for p in paths] == ["x_delta_vs_log2r.png", "x_paired_deltas.png"]
