"""VWN recipes for Megatron-Bridge (installed as ``nemo_vwn.recipes``).

A recipe is a function returning a Megatron-Bridge ``ConfigContainer``. Every VWN recipe has a
baseline twin that differs only in VWN being off. Importing this package imports nothing heavy;
the recipe modules (``all_recipes``, ``get_recipe``, ``build_recipe``) import Megatron-Bridge: on a
machine without Transformer Engine call ``nemo_vwn.runtime.prepare_runtime()`` first.

    tiny.py     CPU recipes (minutes on 2 cores)
    study.py    the token-efficiency study's model (CPU and GPU presets)
    paper.py    the VWN paper's configurations (MoE-0.4B/4B ... MoE-A3.3B) for H100 clusters
    catalog.py  names, twins, sizes and GPU counts of all of them, without building any

    from nemo_vwn.recipes import all_recipes, build_recipe, get_recipe, recipe_size
    cfg = get_recipe("tiny_vwn_moe_cpu")()
    cfg = build_recipe("tiny_vwn_moe_cpu", "runs/x", ["train.train_iters=20"], data_dir="runs/data")
    recipe_size("paper_moe_a3p3b_vwn_r8").total    # parameters, counted without allocation
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from nemo_vwn.recipes.catalog import (  # noqa: F401  (re-exported: megatron-free)
    RecipeEntry,
    UnknownRecipeError,
    all_entries,
    check_recipe_name,
    default_nodes,
)


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    function: Callable
    description: str
    twin: Optional[str]  # the baseline twin (for a VWN recipe) or the VWN twin (for a baseline)
    vwn: bool


def default_output_dir(name: str) -> str:
    """Where recipe ``name`` writes by default: ``$NEMO_VWN_OUTPUT/<name>``, else ``runs/<name>``
    under the current directory."""
    return os.path.join(os.environ.get("NEMO_VWN_OUTPUT", os.path.join(os.getcwd(), "runs")), name)


@functools.lru_cache(maxsize=None)
def all_recipes() -> dict[str, RecipeInfo]:
    """name -> RecipeInfo for every recipe (imports the recipe modules on first call)."""
    from nemo_vwn.recipes import paper, study, tiny

    pairs = [
        (tiny.tiny_vwn_moe_cpu, tiny.tiny_moe_cpu),
        (tiny.tiny_vwn_dense_cpu, tiny.tiny_dense_cpu),
        (study.study_vwn_moe_cpu, study.study_moe_cpu),
        (study.study_vwn_moe_gpu, study.study_moe_gpu),
        *paper.PAIRS,
    ]
    table = {}
    for vwn_fn, base_fn in pairs:
        for fn, twin, is_vwn in ((vwn_fn, base_fn, True), (base_fn, vwn_fn, False)):
            doc = (fn.__doc__ or "").strip().splitlines()[0]
            table[fn.__name__] = RecipeInfo(fn.__name__, fn, doc, twin.__name__, is_vwn)
    return table


def get_recipe(name: str) -> Callable:
    """The recipe function called ``name``; a clear error listing the valid names otherwise."""
    recipes = all_recipes()
    if name not in recipes:
        raise UnknownRecipeError(
            f"unknown recipe {name!r}; available recipes: {', '.join(sorted(recipes))}"
        )
    return recipes[name].function


def recipe_size(name: str, output_dir: Optional[str] = None):
    """``nemo_vwn.bridge.params.ParameterCount`` of recipe ``name``'s model, computed from its
    provider fields (nothing is allocated); the tokenizer's vocab size when the model sets none."""
    from nemo_vwn.bridge.params import count_parameters

    cfg = get_recipe(name)(output_dir=output_dir) if output_dir else get_recipe(name)()
    vocab = getattr(cfg.tokenizer, "vocab_size", None) if cfg.tokenizer is not None else None
    return count_parameters(cfg.model, vocab_size=vocab)


def build_recipe(name: str, output_dir: Optional[str] = None, overrides: Sequence[str] = (),
                 data_dir: Optional[str] = None):
    """The ConfigContainer of recipe ``name``: on a built dataset (``data_dir``, else the recipe's
    own data), then the command-line overrides (``nemo_vwn.bridge.training.apply_overrides``)."""
    from nemo_vwn.bridge.training import apply_overrides

    recipe = get_recipe(name)
    cfg = recipe(output_dir=output_dir) if output_dir else recipe()
    if data_dir:
        from nemo_vwn.data.bridge import use_dataset

        use_dataset(cfg, data_dir)
    return apply_overrides(cfg, overrides)
