"""VWN recipes for Megatron-Bridge (installed as ``nemo_vwn.recipes``).

A recipe is a function returning a Megatron-Bridge ``ConfigContainer``. Every VWN recipe has a
baseline twin that differs only in VWN being off. Importing this package imports Megatron-Bridge;
on a machine without Transformer Engine apply ``nemo_vwn.patches.bridge_imports`` first.

    tiny.py    CPU recipes (minutes on 2 cores)
    paper.py   the VWN paper's configurations (MoE-0.4B/4B ... MoE-A3.3B) for H100 clusters

    from nemo_vwn.recipes import all_recipes, get_recipe, recipe_size
    cfg = get_recipe("tiny_vwn_moe_cpu")()
    recipe_size("paper_moe_a3p3b_vwn_r8").total    # parameters, counted without allocation
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    function: Callable
    description: str
    twin: Optional[str]  # the baseline twin (for a VWN recipe) or the VWN twin (for a baseline)
    vwn: bool


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


class UnknownRecipeError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


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
