"""``nemo-vwn``: the command line.

    nemo-vwn recipes                                   list the recipes
    nemo-vwn pretrain --recipe NAME [key=value ...]    train with Megatron-Bridge's pretrain()
    nemo-vwn pretrain --recipe NAME --nproc-per-node 2 ...   the same under torchrun
    nemo-vwn patches                                   the upstream workarounds and their reasons

Overrides use Megatron-Bridge's Hydra syntax, e.g. ``train.train_iters=50 model.virtual_width_n=6``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional, Sequence


def _cmd_recipes(args) -> int:
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from nemo_vwn.recipes import all_recipes

    rows = [("recipe", "VWN", "twin", "description")]
    for name, info in sorted(all_recipes().items()):
        rows.append((name, "yes" if info.vwn else "no", info.twin or "-", info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)))
    return 0


def _cmd_patches(args) -> int:
    from nemo_vwn.patches import describe

    for name, reason, versions in describe():
        print(f"{name}  [{versions}]\n    {reason}")
    return 0


def _relaunch_under_torchrun(args, overrides) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc_per_node}", "-m", "nemo_vwn.cli", "pretrain",
               "--recipe", args.recipe]
    if args.output:
        command += ["--output", args.output]
    return subprocess.call(command + list(overrides))


def _cmd_pretrain(args, overrides) -> int:
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch_under_torchrun(args, overrides)
    from nemo_vwn.runtime import ensure_process_env, prepare_runtime

    ensure_process_env()
    prepare_runtime()
    from nemo_vwn.bridge.training import build_recipe, run_pretrain

    cfg = build_recipe(args.recipe, args.output, overrides)
    run_pretrain(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-vwn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the recipes")
    sub.add_parser("patches", help="list the upstream workarounds")
    pretrain = sub.add_parser("pretrain", help="train a recipe with Megatron-Bridge pretrain()")
    pretrain.add_argument("--recipe", required=True, help="recipe name (see `nemo-vwn recipes`)")
    pretrain.add_argument("--output", default=None, help="output directory (default runs/<recipe>)")
    pretrain.add_argument("--nproc-per-node", type=int, default=1,
                          help="processes to launch with torchrun (default 1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [item for item in extra if item.startswith("-")]
    if unknown_flags or (extra and args.command != "pretrain"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "recipes":
        return _cmd_recipes(args)
    if args.command == "patches":
        return _cmd_patches(args)
    try:
        return _cmd_pretrain(args, extra)
    except (KeyError, ValueError) as exc:
        from nemo_vwn.bridge.training import OverrideError
        from nemo_vwn.recipes import UnknownRecipeError

        if isinstance(exc, (OverrideError, UnknownRecipeError)):
            print(f"nemo-vwn: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
