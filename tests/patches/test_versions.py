"""Each patch declares the upstream range it was written for, inside setup.py's ranges; applying it
checks the installed versions; and, where feasible, the gap it works around is asserted to be still
there upstream (those tests fail once upstream closes the gap: then drop or narrow the patch)."""

import ast
import inspect
import itertools
import os
import warnings

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from nemo_vwn import patches
from nemo_vwn.patches import versions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# every X.Y.Z with X <= 3, Y <= 25, Z <= 3: enough to compare ranges written to minor precision
GRID = [Version(f"{a}.{b}.{c}") for a, b, c in itertools.product(range(4), range(26), range(4))]


def setup_requirements() -> dict:
    """{distribution: SpecifierSet} from setup.py's install_requires and extras_require."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "setup")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
              if kw.arg in ("install_requires", "extras_require")}
    lines = list(kwargs["install_requires"]) + [r for reqs in kwargs["extras_require"].values()
                                                for r in reqs]
    return {Requirement(line).name: Requirement(line).specifier for line in lines}


@pytest.mark.parametrize("name", patches.PATCHES)
def test_applies_to_lies_inside_the_setup_py_range(name):
    module = __import__(f"nemo_vwn.patches.{name}", fromlist=["APPLIES_TO"])
    required = setup_requirements()
    assert module.REASON and module.APPLIES_TO
    for package, spec in module.APPLIES_TO.items():
        assert package in required, f"{name}: {package} is not a setup.py requirement"
        covered = [v for v in GRID if v in SpecifierSet(spec)]
        assert covered, f"{name}: {package}{spec} covers no version"
        outside = [str(v) for v in covered if v not in required[package]]
        assert not outside, f"{name}: {package}{spec} reaches outside {required[package]}"


def test_installed_stack_is_inside_every_patch_range():
    for name in patches.PATCHES:
        module = __import__(f"nemo_vwn.patches.{name}", fromlist=["APPLIES_TO"])
        assert versions.mismatches(module.APPLIES_TO) == [], name


def test_out_of_range_warns_once_or_raises_when_strict(monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda package: "0.21.0")
    monkeypatch.setattr(versions, "_warned", set())
    applies_to = {"megatron-core": ">=0.19,<0.20"}
    with pytest.warns(versions.UpstreamVersionWarning,
                      match=r"megatron-core 0.21.0 is installed, the patch covers "
                            r"megatron-core>=0.19,<0.20"):
        versions.check_installed("demo", applies_to)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions.check_installed("demo", applies_to)  # once per patch
    with pytest.raises(versions.UpstreamVersionError, match="nemo_vwn.patches.demo"):
        versions.check_installed("demo", applies_to, strict=True)
    monkeypatch.setattr(versions, "installed_version", lambda package: None)
    versions.check_installed("absent", applies_to, strict=True)  # not installed: not checked


def test_a_missing_hook_is_an_error_naming_the_patch():
    import types

    module = types.ModuleType("megatron.core.pipeline_parallel.schedules")
    with pytest.raises(versions.UpstreamVersionError,
                       match="pipeline_shapes: .*schedules has no get_model_config"):
        versions.require_attributes("pipeline_shapes", module, ("get_model_config",))


# ----------------------------------------------------------------- the gaps are still upstream
def test_gap_pipeline_schedules_still_size_buffers_from_hidden_size(megatron_cpu):
    """Fails once megatron-core sizes p2p buffers from the wide state itself (then drop
    ``pipeline_shapes``): the raw VWN config (no StageBoundaryConfigView) gives hidden_size."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import schedules

    from nemo_vwn.testing.models import vwn_config

    config = vwn_config(n=6, m=2)  # D = 64, D' = 192
    shapes = schedules.get_tensor_shapes(
        seq_length=16, micro_batch_size=2, decoder_seq_length=None, config=config,
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        cp_group=parallel_state.get_context_parallel_group())
    assert shapes == [(16, 2, config.hidden_size)]


def test_gap_bridge_setup_still_requires_cuda_and_hardcodes_gpt_model():
    """Fails once Megatron-Bridge allows no CUDA by default in setup and lets providers choose
    the model class (then drop ``bridge_cpu`` / ``bridge_provider``)."""
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    import megatron.bridge.models.gpt_provider as gpt_provider
    from megatron.bridge.training import initialize

    original = inspect.unwrap(initialize.initialize_megatron)
    assert inspect.signature(original).parameters["allow_no_cuda"].default is False
    assert "MCoreGPTModel(" in inspect.getsource(gpt_provider.GPTModelProvider.provide)
