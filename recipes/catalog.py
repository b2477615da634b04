"""What every recipe is, without building it: name, twin, size, GPUs (stdlib only).

Building a recipe imports Megatron-Bridge (seconds, and Transformer Engine or the CPU patches);
listing the recipes (``nemo-vwn recipes``), checking a recipe name and sizing a Slurm job
(``nemo-vwn launch``) must not, so they read this table instead. It is generated from the recipe
functions themselves:

    python -m nemo_vwn.recipes.catalog          # rewrite the table below from the recipes

and ``tests/bridge/test_recipe_catalog.py`` fails when the table and the recipes disagree (a
recipe added, renamed or resized without regenerating it).

    total, activated   ``nemo_vwn.bridge.params.count_parameters`` of the recipe's provider
    gpus               the GPUs the recipe's parallel layout is sized for (paper recipes), else None
"""

from __future__ import annotations

import textwrap
from dataclasses import astuple, dataclass
from typing import Optional


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    vwn: bool
    twin: str  # the baseline twin (for a VWN recipe) or the VWN twin (for a baseline)
    total: int
    activated: int
    gpus: Optional[int]
    description: str  # the first line of the recipe function's docstring


class UnknownRecipeError(KeyError):
    """A recipe name that does not exist (the message lists the valid names)."""

    def __str__(self) -> str:
        return self.args[0]


def all_entries() -> dict[str, RecipeEntry]:
    """name -> RecipeEntry for every recipe."""
    return {entry.name: entry for entry in ENTRIES}


def check_recipe_name(name: str) -> RecipeEntry:
    """The entry of recipe ``name``; UnknownRecipeError listing the valid names otherwise."""
    entries = all_entries()
    if name not in entries:
        raise UnknownRecipeError(
            f"unknown recipe {name!r}; available recipes: {', '.join(sorted(entries))}"
        )
    return entries[name]


def default_nodes(name: str, gpus_per_node: int = 8) -> int:
    """Nodes a recipe's parallel layout is sized for (paper recipes: their GPU count; else 1)."""
    gpus = check_recipe_name(name).gpus
    return max(1, gpus // gpus_per_node) if gpus else 1


# --------------------------------------------------------------------------- generation
def live_entries() -> tuple[RecipeEntry, ...]:
    """The entries computed from the recipe functions (imports Megatron-Bridge: call
    ``nemo_vwn.runtime.prepare_runtime()`` first on a machine without Transformer Engine)."""
    from nemo_vwn.recipes import all_recipes, recipe_size

    entries = []
    for name, info in sorted(all_recipes().items()):
        size = recipe_size(name)
        paper_model = getattr(info.function, "paper_model", None)
        entries.append(RecipeEntry(
            name=name, vwn=info.vwn, twin=info.twin, total=size.total,
            activated=size.activated, gpus=paper_model.gpus if paper_model else None,
            description=info.description))
    return tuple(entries)


def render(entries) -> str:
    """The source of the ``ENTRIES`` table for ``entries``."""
    pad = " " * 16
    lines = ["ENTRIES = ("]
    for entry in entries:
        name, vwn, twin, total, activated, gpus, description = astuple(entry)
        lines += [f"    RecipeEntry({name!r}, vwn={vwn},", f"{pad}twin={twin!r},",
                  f"{pad}total={total}, activated={activated}, gpus={gpus},"]
        parts = textwrap.wrap(description, 66, drop_whitespace=False) or [""]
        for i, part in enumerate(parts):
            head = f"{pad}description=" if i == 0 else f"{pad}            "
            lines.append(head + repr(part) + ("),"  if i == len(parts) - 1 else ""))
    lines.append(")")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Rewrite this file's ``ENTRIES`` table from the recipe functions."""
    import os

    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    path = os.path.abspath(__file__)
    with open(path) as handle:
        source = handle.read()
    begin = source.index(_BEGIN) + len(_BEGIN) + 1
    end = source.index(_END)
    with open(path, "w") as handle:
        handle.write(source[:begin] + render(live_entries()) + source[end:])
    print(f"wrote {len(live_entries())} recipes to {path}")
    return 0


_BEGIN, _END = "# " + "BEGIN GENERATED TABLE", "# " + "END GENERATED TABLE"

# BEGIN GENERATED TABLE
ENTRIES = (
    RecipeEntry('paper_moe_0p4b_4b_base_r1p5', vwn=False,
                twin='paper_moe_0p4b_4b_vwn_r1p5',
                total=4038228736, activated=404912896, gpus=8,
                description='MoE-0.4B/4B baseline (twin of the r=1.5 VWN run).'),
    RecipeEntry('paper_moe_0p4b_4b_base_r1p5_mtp', vwn=False,
                twin='paper_moe_0p4b_4b_vwn_r1p5_mtp',
                total=4321415040, activated=428576640, gpus=8,
                description='MoE-0.4B/4B baseline (twin of the r=1.5 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_0p4b_4b_vwn_r1p5', vwn=True,
                twin='paper_moe_0p4b_4b_base_r1p5',
                total=4065673112, activated=432357272, gpus=8,
                description='MoE-0.4B/4B VWN r=1.5 (m,n)=(2,3), vwn_collapse=linear.'),
    RecipeEntry('paper_moe_0p4b_4b_vwn_r1p5_mtp', vwn=True,
                twin='paper_moe_0p4b_4b_base_r1p5_mtp',
                total=4347294828, activated=454456428, gpus=8,
                description='MoE-0.4B/4B VWN r=1.5 (m,n)=(2,3), vwn_collapse=linear; MTP k=1.'),
    RecipeEntry('paper_moe_2p5b_25b_base_r1p5', vwn=False,
                twin='paper_moe_2p5b_25b_vwn_r1p5',
                total=25240903680, activated=2591662080, gpus=16,
                description='MoE-2.5B/25B baseline (twin of the r=1.5 VWN run).'),
    RecipeEntry('paper_moe_2p5b_25b_base_r1p5_mtp', vwn=False,
                twin='paper_moe_2p5b_25b_vwn_r1p5_mtp',
                total=26275072256, activated=2682112256, gpus=16,
                description='MoE-2.5B/25B baseline (twin of the r=1.5 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_2p5b_25b_vwn_r1p5', vwn=True,
                twin='paper_moe_2p5b_25b_base_r1p5',
                total=25403172832, activated=2753931232, gpus=16,
                description='MoE-2.5B/25B VWN r=1.5 (m,n)=(2,3), vwn_collapse=linear.'),
    RecipeEntry('paper_moe_2p5b_25b_vwn_r1p5_mtp', vwn=True,
                twin='paper_moe_2p5b_25b_base_r1p5_mtp',
                total=26431066420, activated=2838106420, gpus=16,
                description='MoE-2.5B/25B VWN r=1.5 (m,n)=(2,3), vwn_collapse=linear; MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_base_r2', vwn=False,
                twin='paper_moe_a0p8b_vwn_r2',
                total=3931035136, activated=760141312, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=2 VWN run).'),
    RecipeEntry('paper_moe_a0p8b_base_r2_mtp', vwn=False,
                twin='paper_moe_a0p8b_vwn_r2_mtp',
                total=4171789568, activated=802714880, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=2 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_base_r4', vwn=False,
                twin='paper_moe_a0p8b_vwn_r4',
                total=3931035136, activated=760141312, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=4 VWN run).'),
    RecipeEntry('paper_moe_a0p8b_base_r4_mtp', vwn=False,
                twin='paper_moe_a0p8b_vwn_r4_mtp',
                total=4171789568, activated=802714880, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=4 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_base_r8', vwn=False,
                twin='paper_moe_a0p8b_vwn_r8',
                total=3931035136, activated=760141312, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=8 VWN run).'),
    RecipeEntry('paper_moe_a0p8b_base_r8_mtp', vwn=False,
                twin='paper_moe_a0p8b_vwn_r8_mtp',
                total=4171789568, activated=802714880, gpus=8,
                description='MoE-A0.8B baseline (twin of the r=8 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r2', vwn=True,
                twin='paper_moe_a0p8b_base_r2',
                total=4013259264, activated=842365440, gpus=8,
                description='MoE-A0.8B VWN r=2 (m,n)=(8,16), vwn_embedding=wide.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r2_mtp', vwn=True,
                twin='paper_moe_a0p8b_base_r2_mtp',
                total=4249385088, activated=880310400, gpus=8,
                description='MoE-A0.8B VWN r=2 (m,n)=(8,16), vwn_embedding=wide; MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r4', vwn=True,
                twin='paper_moe_a0p8b_base_r4',
                total=4172678656, activated=1001784832, gpus=8,
                description='MoE-A0.8B VWN r=4 (m,n)=(8,32), vwn_embedding=wide.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r4_mtp', vwn=True,
                twin='paper_moe_a0p8b_base_r4_mtp',
                total=4408820864, activated=1039746176, gpus=8,
                description='MoE-A0.8B VWN r=4 (m,n)=(8,32), vwn_embedding=wide; MTP k=1.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r8', vwn=True,
                twin='paper_moe_a0p8b_base_r8',
                total=3969621504, activated=798727680, gpus=8,
                description='MoE-A0.8B VWN r=8 (m,n)=(8,64), vwn_embedding=factorized.'),
    RecipeEntry('paper_moe_a0p8b_vwn_r8_mtp', vwn=True,
                twin='paper_moe_a0p8b_base_r8_mtp',
                total=4205802624, activated=836727936, gpus=8,
                description='MoE-A0.8B VWN r=8 (m,n)=(8,64), vwn_embedding=factorized; MTP k=1.'),
    RecipeEntry('paper_moe_a3p3b_base_r8', vwn=False,
                twin='paper_moe_a3p3b_vwn_r8',
                total=30532122624, activated=3353032704, gpus=16,
                description='MoE-A3.3B baseline (twin of the r=8 VWN run).'),
    RecipeEntry('paper_moe_a3p3b_base_r8_mtp', vwn=False,
                twin='paper_moe_a3p3b_vwn_r8_mtp',
                total=31163638016, activated=3418317056, gpus=16,
                description='MoE-A3.3B baseline (twin of the r=8 VWN run), MTP k=1.'),
    RecipeEntry('paper_moe_a3p3b_vwn_r8', vwn=True,
                twin='paper_moe_a3p3b_base_r8',
                total=30602221568, activated=3423131648, gpus=16,
                description='MoE-A3.3B VWN r=8 (m,n)=(8,64), vwn_embedding=factorized.'),
    RecipeEntry('paper_moe_a3p3b_vwn_r8_mtp', vwn=True,
                twin='paper_moe_a3p3b_base_r8_mtp',
                total=31225568000, activated=3480247040, gpus=16,
                description='MoE-A3.3B VWN r=8 (m,n)=(8,64), vwn_embedding=factorized; MTP k=1.'),
    RecipeEntry('study_moe_cpu', vwn=False,
                twin='study_vwn_moe_cpu',
                total=2495616, activated=922752, gpus=None,
                description='Baseline twin of study_vwn_moe_cpu (VWN off).'),
    RecipeEntry('study_moe_gpu', vwn=False,
                twin='study_vwn_moe_gpu',
                total=83960320, activated=25240064, gpus=None,
                description='Baseline twin of study_vwn_moe_gpu (VWN off).'),
    RecipeEntry('study_vwn_moe_cpu', vwn=True,
                twin='study_moe_cpu',
                total=2599296, activated=1026432, gpus=None,
                description='Token-efficiency study, CPU preset: VWN-MoE (r=2 by default; the '
                            'study overrides (m, n)).'),
    RecipeEntry('study_vwn_moe_gpu', vwn=True,
                twin='study_moe_gpu',
                total=88730112, activated=30009856, gpus=None,
                description='Token-efficiency study, GPU preset (one H100/H200): VWN-MoE, r=2 '
                            'by default.'),
    RecipeEntry('tiny_dense_cpu', vwn=False,
                twin='tiny_vwn_dense_cpu',
                total=132288, activated=132288, gpus=None,
                description='Baseline twin of tiny_vwn_dense_cpu (VWN off).'),
    RecipeEntry('tiny_moe_cpu', vwn=False,
                twin='tiny_vwn_moe_cpu',
                total=164672, activated=131904, gpus=None,
                description='Baseline twin of tiny_vwn_moe_cpu (VWN off).'),
    RecipeEntry('tiny_vwn_dense_cpu', vwn=True,
                twin='tiny_dense_cpu',
                total=174784, activated=174784, gpus=None,
                description='Tiny dense VWN GPT (r=2) for CPU.'),
    RecipeEntry('tiny_vwn_moe_cpu', vwn=True,
                twin='tiny_moe_cpu',
                total=207168, activated=174400, gpus=None,
                description='Tiny VWN-MoE (r=2) for CPU.'),
)
# END GENERATED TABLE

if __name__ == "__main__":
    raise SystemExit(main())
