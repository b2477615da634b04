"""The recipe catalog (what `nemo-vwn recipes` and `nemo-vwn launch` read without megatron) agrees
with the recipe functions: same names, twins, sizes and GPU counts. Regenerate it with
``python -m nemo_vwn.recipes.catalog`` when a recipe changes."""

import dataclasses

from nemo_vwn.runtime import prepare_runtime


def test_catalog_matches_the_recipes():
    prepare_runtime()
    from nemo_vwn.recipes.catalog import ENTRIES, live_entries, render

    live = live_entries()
    stale = {a.name: [f.name for f in dataclasses.fields(a) if getattr(a, f.name) !=
                      getattr(b, f.name)] for a, b in zip(ENTRIES, live) if a != b}
    assert [e.name for e in ENTRIES] == [e.name for e in live], "recipes added or removed"
    assert not stale, f"stale catalog entries (run python -m nemo_vwn.recipes.catalog): {stale}"
    namespace = {"RecipeEntry": type(ENTRIES[0])}
    exec(render(live), namespace)  # the generator writes what it read
    assert namespace["ENTRIES"] == live


def test_catalog_twins_pair_up_and_names_are_checked():
    import pytest

    from nemo_vwn.recipes.catalog import UnknownRecipeError, all_entries, check_recipe_name

    entries = all_entries()
    for name, entry in entries.items():
        assert entries[entry.twin].twin == name and entries[entry.twin].vwn != entry.vwn
    with pytest.raises(UnknownRecipeError, match="unknown recipe 'tiny'; available recipes: "
                                                 ".*tiny_vwn_moe_cpu"):
        check_recipe_name("tiny")
