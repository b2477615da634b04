"""The token-efficiency study's plan and arithmetic (benchmarks/token_efficiency.py; the study
itself is not CI): the variant plan and the fit (vs numpy). The study recipes' twins are checked
with every other recipe in tests/bridge/test_recipes.py."""

import importlib.util
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
