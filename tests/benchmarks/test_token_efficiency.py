"""The token-efficiency study's plan and arithmetic (benchmarks/token_efficiency.py; the study
itself is not CI): the variant plan and the fit (vs numpy). The study recipes' twins are checked
with every other recipe in tests/bridge/test_recipes.py.

The micro preset runs the whole script end to end (``micro_study``: 2 seeds x baseline / r = 1 /
r = 2 on a byte-level dataset, 10 iterations each, two runs at a time): its table against the
eval.json files, its parameter counts against ``count_parameters`` with the run's vocab (258) and
the loaded model, its figures. Six trainings and six evaluations, each a fresh process: about
2-4 minutes on an idle 2-core machine, mostly imports."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location(
        "token_efficiency", os.path.join(REPO, "benchmarks", "token_efficiency.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_log_linear_matches_numpy(study):
    rng = np.random.default_rng(0)
    rs = [1.5, 2, 4, 8]
    ys = [-0.03 * math.log2(r) + 0.01 + e for r, e in zip(rs, rng.normal(0, 0.004, 4))]
    slope, intercept, r2 = study.fit_log_linear(list(zip(rs, ys)))
    xs = np.log2(rs)
    ref_slope, ref_intercept = np.polyfit(xs, ys, 1)
    ref_r2 = np.corrcoef(xs, ys)[0, 1] ** 2
    assert slope == pytest.approx(ref_slope, rel=1e-10)
    assert intercept == pytest.approx(ref_intercept, rel=1e-10)
    assert r2 == pytest.approx(ref_r2, rel=1e-10)


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_variants_cover_every_r_with_and_without_mtp(study, preset):
    runs = study.variants(study.PRESETS[preset])
    names = [name for name, *_ in runs]
    assert len(set(names)) == len(names) == 10
    m = study.PRESETS[preset]["m"]
    for name, recipe, overrides, r, mtp in runs:
        assert ("model.mtp_num_layers=1" in overrides) == mtp == name.endswith("_mtp")
        if r == 1.0:
            assert recipe == study.PRESETS[preset]["base"]
            assert not any("virtual_width" in o for o in overrides)
            continue
        assert recipe == study.PRESETS[preset]["vwn"]
        fields = dict(o.split("=", 1) for o in overrides)
        n, m_run = int(fields["model.virtual_width_n"]), int(fields["model.virtual_width_m"])
        assert n / m_run == r and m_run == (2 if r == 1.5 else m)
        assert (fields.get("model.vwn_collapse") == "linear") == (r == 1.5)
    assert sorted({r for *_, r, _ in runs}) == [1.0, 1.5, 2.0, 4.0, 8.0]


def test_factorized_embedding_applies_to_the_vwn_runs_only(study):
    runs = study.variants(study.PRESETS["cpu"], embedding="factorized")
    for name, recipe, overrides, r, mtp in runs:
        assert ("model.vwn_embedding=factorized" in overrides) == (r > 1), name
    wide = study.variants(study.PRESETS["cpu"])
    assert not any("vwn_embedding" in o for *_, overrides, _r, _m in wide for o in overrides)


def test_normal_up_init_applies_to_the_factorized_vwn_runs_only(study):
    runs = study.variants(study.PRESETS["cpu"], embedding="factorized", up_init="normal")
    for name, recipe, overrides, r, mtp in runs:
        assert ("model.vwn_embedding_up_init=normal" in overrides) == (r > 1), name
    default = study.variants(study.PRESETS["cpu"], embedding="factorized")  # scaled: the default
    assert not any("vwn_embedding_up_init" in o
                   for *_, overrides, _r, _m in default for o in overrides)
    with pytest.raises(ValueError, match="needs --embedding factorized"):
        study.variants(study.PRESETS["cpu"], embedding="wide", up_init="normal")


def test_controls_r1_and_vwn_only_overrides(study):
    runs = study.variants(study.PRESETS["cpu"], factors=(1, 4), mtp_runs=(False,),
                          vwn_set=("model.vwn_collapse_init=identity",))
    assert [name for name, *_ in runs] == ["baseline", "vwn_r1", "vwn_r4"]
    by_name = {name: overrides for name, _recipe, overrides, _r, _mtp in runs}
    assert ("model.virtual_width_n=2" in by_name["vwn_r1"]
            and "model.virtual_width_m=2" in by_name["vwn_r1"])
    assert all("model.vwn_collapse_init=identity" in by_name[n] for n in ("vwn_r1", "vwn_r4"))
    assert by_name["baseline"] == []
    assert study.is_baseline("baseline_mtp") and not study.is_baseline("vwn_r1")
    with pytest.raises(ValueError, match="r=2.5 is not supported"):
        study.variants(study.PRESETS["cpu"], factors=(2.5,))
    with pytest.raises(ValueError, match="model.KEY=VALUE"):
        study.variants(study.PRESETS["cpu"], vwn_set=("train.lr=1",))


# ------------------------------------------------------------------ seeds, controls (issue 20)
def test_seeded_plan_names_runs_and_pairs_data_order_by_seed(study):
    runs = study.variants(study.PRESETS["cpu"], factors=(1, 2), mtp_runs=(False,))
    plan = study.seeded_plan(runs, [1, 2])
    assert [e["dir"] for e in plan] == ["baseline_s1", "baseline_s2", "vwn_r1_s1", "vwn_r1_s2",
                                        "vwn_r2_s1", "vwn_r2_s2"]
    for entry in plan:
        seed = entry["seed"]
        assert entry["overrides"][-2:] == [f"rng.seed={seed}", f"dataset.random_seed={seed}"]
        assert entry["kind"] == ("baseline" if entry["variant"] == "baseline" else "vwn")
    fixed = study.seeded_plan(runs, [7], fixed_data_order=True)
    assert all(e["overrides"][-1] == "rng.seed=7" and e["dir"].endswith("_s7") for e in fixed)
    assert not any("dataset.random_seed" in o for e in fixed for o in e["overrides"])
    single = study.seeded_plan(runs, None)  # the old layout: one run per variant, recipe's seed
    assert [e["dir"] for e in single] == ["baseline", "vwn_r1", "vwn_r2"]
    assert all(e["seed"] is None and "rng.seed" not in " ".join(e["overrides"]) for e in single)
    with pytest.raises(ValueError, match="distinct"):
        study.seeded_plan(runs, [1, 1])
    assert study.kind_of("deeper_base_L5") == "control" and study.kind_of("baseline_mtp") == \
        "baseline"


def test_parse_args_rejects_unknown_flags_and_contradictions(study):
    args, overrides = study.parse_args(["--seeds", "1", "2", "--only", "baseline", "rng.x=1"])
    assert args.seeds == [1, 2] and args.only == ["baseline"] and overrides == ["rng.x=1"]
    with pytest.raises(SystemExit):
        study.parse_args(["--no-mtp", "--mtp-only"])
    with pytest.raises(SystemExit):
        study.parse_args(["--sedes", "1"])


MICRO_SEEDS = (1, 2)


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    """The micro preset end to end: a byte-level dataset (vocab 258) of 60 small stdlib files,
    2 seeds x (baseline, r = 1, r = 2), trained, evaluated and reported by the study script."""
    import subprocess
    import sys
    import sysconfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from nemo_vwn.data import Corpus, build_dataset

    root = tmp_path_factory.mktemp("micro_study")
    corpus = root / "corpus"
    corpus.mkdir()
    stdlib = sorted(p for p in os.listdir(sysconfig.get_paths()["stdlib"]) if p.endswith(".py"))
    for i, name in enumerate(stdlib[:60]):
        text = open(os.path.join(sysconfig.get_paths()["stdlib"], name)).read()[:3000]
        (corpus / f"doc{i:03d}.txt").write_text(text)
    data = root / "bytes"
    build_dataset(data, Corpus([str(corpus)]), vocab_size=258)
    out, figures = root / "study", root / "figures"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, os.path.join(REPO, "benchmarks", "token_efficiency.py"),
               "--preset", "micro", "--output", str(out), "--data", str(data),
               "--data-vocab-size", "258", "--seeds", *map(str, MICRO_SEEDS),
               "--factors", "1", "2", "--no-mtp", "--figures", str(figures), "--jobs", "2"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / "results.json") as handle:
        return dict(out=out, figures=figures, data=data, results=json.load(handle))


def _eval(out, name, seed):
    with open(out / f"{name}_s{seed}" / "eval.json") as handle:
        return json.load(handle)


def test_micro_study_table_matches_the_eval_files(micro_study):
    import statistics

    out, table = micro_study["out"], {t["variant"]: t for t in micro_study["results"]["variants"]}
    assert list(table) == ["baseline", "vwn_r1", "vwn_r2"]
    for name, row in table.items():
        assert row["seeds"] == list(MICRO_SEEDS)
        vals = [_eval(out, name, s)["next_token_loss"] for s in MICRO_SEEDS]
        deltas = [v - _eval(out, "baseline", s)["next_token_loss"]
                  for v, s in zip(vals, MICRO_SEEDS)]
        assert row["val_next_token"] == pytest.approx(statistics.mean(vals), abs=1e-12)
        assert row["val_next_token_sd"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
        assert row["delta_next_token"] == pytest.approx(statistics.mean(deltas), abs=1e-12)
        assert row["delta_next_token_sd"] == pytest.approx(statistics.stdev(deltas), abs=1e-12)
    assert table["baseline"]["delta_next_token"] == 0 and table["baseline"]["val_next_token_sd"] > 0
    assert table["baseline"]["token_ratio_paired"] == 1.0  # the baseline judged against itself
    # the fit over r = 1 and 2 (two points: exact), with and without an intercept, vs numpy
    fit = micro_study["results"]["fits"]["no_mtp/delta_next_token"]
    ys = [table["vwn_r1"]["delta_next_token"], table["vwn_r2"]["delta_next_token"]]
    slope, offset = np.polyfit([0.0, 1.0], ys, 1)
    assert fit["with_intercept"]["slope"] == pytest.approx(slope, abs=1e-12)
    assert fit["with_intercept"]["intercept"] == pytest.approx(offset, abs=1e-12)
    assert fit["no_intercept"]["slope"] == pytest.approx(ys[1], abs=1e-12)  # sum(xy) / sum(x^2)
    assert len(fit["with_intercept"]["slope_per_seed"]) == len(MICRO_SEEDS)


def test_micro_study_seeds_set_init_and_data_order(micro_study):
    import yaml

    for seed in MICRO_SEEDS:
        iteration = micro_study["out"] / f"vwn_r2_s{seed}" / "checkpoints" / "iter_0000010"
        with open(iteration / "run_config.yaml") as handle:
            config = yaml.safe_load(handle)
        assert config["rng"]["seed"] == seed and config["dataset"]["random_seed"] == seed
    losses = {s: _eval(micro_study["out"], "baseline", s)["next_token_loss"] for s in MICRO_SEEDS}
    assert losses[1] != losses[2]


def test_micro_study_counts_parameters_with_the_runs_vocab(micro_study):
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.recipes import build_recipe
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    study_preset = ["train.train_iters=10"]
    table = {t["variant"]: t for t in micro_study["results"]["variants"]}
    for name, recipe, extra in (("baseline", "tiny_moe_cpu", []),
                                ("vwn_r2", "tiny_vwn_moe_cpu",
                                 ["model.virtual_width_m=2", "model.virtual_width_n=4"])):
        row = table[name]
        model = build_recipe(recipe, None, study_preset + extra).model
        expected = count_parameters(model, vocab_size=258)
        assert row["vocab_size"] == 258
        assert (row["params_total"], row["params_activated"]) == (expected.total,
                                                                  expected.activated)
        # the model the evaluator loaded from the checkpoint has exactly that many parameters
        assert _eval(micro_study["out"], name, 1)["parameters"] == row["params_total"]
        assert count_parameters(model, vocab_size=8192).total > row["params_total"]


def test_micro_study_writes_small_figures(micro_study):
    names = {"loss_vs_tokens.png", "delta_vs_log2r.png", "paired_deltas.png"}
    assert names <= set(os.listdir(micro_study["figures"]))
    for name in names:
        data = (micro_study["figures"] / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 1_000 < len(data) < 150_000, name
    assert (micro_study["out"] / "results.md").read_text().count("± ") >= 6
