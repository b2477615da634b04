"""``nemo-vwn``: the command line.

    nemo-vwn recipes                                   list the recipes
    nemo-vwn data [PATH ...] --output DIR              corpus -> local tokenizer -> indexed dataset
    nemo-vwn pretrain --recipe NAME [key=value ...]    train with Megatron-Bridge's pretrain()
    nemo-vwn pretrain --recipe NAME --data DIR --nproc-per-node 2 ...   real data, torchrun
    nemo-vwn compare --recipe NAME [key=value ...]     VWN recipe vs its baseline twin: table + plot
    nemo-vwn convert reshard|upcycle --checkpoint DIR --output DIR ...   checkpoint conversion
    nemo-vwn launch --recipe NAME [--executor local|slurm] [key=value ...]   through NeMo-Run
    nemo-vwn patches                                   the upstream workarounds and their reasons

Overrides use Megatron-Bridge's Hydra syntax, e.g. ``train.train_iters=50 model.virtual_width_n=6``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional, Sequence


def _cmd_recipes(args) -> int:
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from nemo_vwn.bridge.params import format_count
    from nemo_vwn.recipes import all_recipes, recipe_size

    rows = [("recipe", "VWN", "twin", "params total/activated", "description")]
    for name, info in sorted(all_recipes().items()):
        size = recipe_size(name)  # from the provider fields: nothing is allocated
        rows.append((name, "yes" if info.vwn else "no", info.twin or "-",
                     f"{format_count(size.total)}/{format_count(size.activated)}",
                     info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)))
    return 0


def _cmd_patches(args) -> int:
    from nemo_vwn.patches import describe

    for name, reason, versions in describe():
        print(f"{name}  [{versions}]\n    {reason}")
    return 0


def _pretrain_command(recipe: str, output: Optional[str], data: Optional[str],
                      nproc: int, overrides: Sequence[str], fresh: bool = False) -> list:
    command = [sys.executable, "-m", "nemo_vwn.cli", "pretrain", "--recipe", recipe]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nproc}", "-m", "nemo_vwn.cli", "pretrain",
                   "--recipe", recipe]
    if output:
        command += ["--output", output]
    if data:
        command += ["--data", data]
    if fresh:
        command += ["--fresh"]
    return command + list(overrides)


def _cmd_pretrain(args, overrides) -> int:
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return subprocess.call(_pretrain_command(args.recipe, args.output, args.data,
                                                 args.nproc_per_node, overrides, args.fresh))
    from nemo_vwn.runtime import ensure_process_env, prepare_runtime

    ensure_process_env()
    prepare_runtime()
    from nemo_vwn.bridge.training import build_recipe, run_pretrain
    from nemo_vwn.recipes.common import default_output_dir

    output = args.output or default_output_dir(args.recipe)
    cfg = build_recipe(args.recipe, output, overrides, data_dir=args.data)
    run_pretrain(cfg, output_dir=output, label=args.recipe, fresh=args.fresh)
    return 0


def _cmd_data(args) -> int:
    from nemo_vwn.data import cli as data_cli

    return data_cli.run(args)


def _cmd_compare(args, overrides) -> int:
    """Train a VWN recipe and its baseline twin on the same data; write table + plot."""
    import time

    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from nemo_vwn.recipes import all_recipes, get_recipe

    get_recipe(args.recipe)  # a clear error for an unknown name
    info = all_recipes()[args.recipe]
    if not info.vwn or not info.twin:
        raise ValueError(f"compare needs a VWN recipe with a baseline twin; {args.recipe!r} "
                         f"is {'a baseline' if not info.vwn else 'without twin'}")
    output = os.path.abspath(args.output or os.path.join("runs", f"compare_{args.recipe}"))
    data = None if args.mock else _ensure_dataset(args.data or os.path.join(output, "data"))
    started = time.monotonic()
    for recipe in (args.recipe, info.twin):
        print(f"[nemo-vwn] training {recipe} ...", flush=True)
        status = subprocess.call(_pretrain_command(recipe, os.path.join(output, recipe), data,
                                                   args.nproc_per_node, overrides, args.fresh))
        if status != 0:
            print(f"nemo-vwn: error: training {recipe} failed (exit {status})", file=sys.stderr)
            return status
    from nemo_vwn import results

    vwn = results.load_run(os.path.join(output, args.recipe), name=args.recipe)
    base = results.load_run(os.path.join(output, info.twin), name=info.twin)
    window = max(1, min(10, len(base.train_loss) // 10))
    summary = results.compare(vwn, base, window=window)
    table = results.markdown_table(summary, args.recipe, info.twin)
    png = results.plot([base, vwn], os.path.join(output, "loss_vs_tokens.png"), window=window,
                       title=f"{args.recipe} vs {info.twin}")
    summary["wall_seconds"] = time.monotonic() - started
    with open(os.path.join(output, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(output, "summary.md"), "w") as handle:
        handle.write(table + "\n")
    print("\n" + table + f"\n\nplot: {png}\nsummary: {os.path.join(output, 'summary.md')}"
          f"\nwall time: {summary['wall_seconds']:.0f} s", flush=True)
    return 0


def _ensure_dataset(data_dir: str) -> str:
    """Reuse a dataset built earlier at ``data_dir``, else build the default (stdlib) corpus."""
    from nemo_vwn.data.build import build_dataset, load_manifest

    try:
        load_manifest(data_dir)
        return data_dir
    except (FileNotFoundError, ValueError):
        pass
    print(f"[nemo-vwn] building the default dataset (Python standard library) in {data_dir}",
          flush=True)
    build_dataset(data_dir, overwrite=os.path.exists(data_dir))
    return data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-vwn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the recipes")
    sub.add_parser("patches", help="list the upstream workarounds")
    from nemo_vwn.data import cli as data_cli

    data_cli.add_arguments(sub.add_parser("data", help="build a tokenizer + indexed dataset"))
    from nemo_vwn.convert import cli as convert_cli

    convert_cli.add_arguments(sub.add_parser(
        "convert", help="upcycle, reshard, Hugging Face export/import of checkpoints"))
    pretrain = sub.add_parser("pretrain", help="train a recipe with Megatron-Bridge pretrain()")
    compare = sub.add_parser("compare", help="a VWN recipe vs its baseline twin: table + plot")
    for command in (pretrain, compare):
        command.add_argument("--recipe", required=True, help="recipe name (`nemo-vwn recipes`)")
        command.add_argument("--output", default=None, help="output directory (default runs/...)")
        command.add_argument("--data", default=None,
                             help="dataset directory from `nemo-vwn data` (default: the recipe's "
                                  "mock data for pretrain; the stdlib corpus for compare)")
        command.add_argument("--nproc-per-node", type=int, default=1,
                             help="processes to launch with torchrun (default 1)")
        command.add_argument("--fresh", action="store_true",
                             help="start over: move the previous run aside (nothing is deleted) "
                                  "instead of resuming from its newest intact checkpoint")
    compare.add_argument("--mock", action="store_true", help="use mock data instead of a corpus")
    from nemo_vwn.bridge import launch as launch_cli  # imports NeMo-Run only when launching

    launch_cli.add_arguments(sub.add_parser("launch", help="run a recipe through NeMo-Run "
                                                           "(local torchrun or Slurm)"))
    from nemo_vwn.bridge.checkpoints import add_checkpoint_parser

    add_checkpoint_parser(sub)
    return parser


def _spawn_safe_main() -> None:
    """Megatron's checkpoint writer starts a ``spawn`` process (a multiprocessing Manager); a spawn
    child re-runs ``__main__``, and the ``nemo-vwn`` console script calls ``main()`` unguarded, so
    the child re-ran the whole command (a second training on the same port) and the save died
    with EOFError. With this module as ``__main__``'s spec, children import it (guarded)."""
    import importlib.util

    main_module = sys.modules.get("__main__")
    if main_module is not None and getattr(main_module, "__spec__", None) is None:
        main_module.__spec__ = importlib.util.find_spec("nemo_vwn.cli")


def main(argv: Optional[Sequence[str]] = None) -> int:
    _spawn_safe_main()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [item for item in extra if item.startswith("-")]
    if unknown_flags or (extra and args.command not in ("pretrain", "compare", "launch")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "recipes":
        return _cmd_recipes(args)
    if args.command == "patches":
        return _cmd_patches(args)
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "checkpoint":
        return args.handler(args)
    if args.command == "convert":
        from nemo_vwn.convert import cli as convert_cli

        return convert_cli.run(args)
    try:
        if args.command == "launch":
            from nemo_vwn.bridge import launch as launch_cli

            return launch_cli.run_cli(args, extra)
        if args.command == "compare":
            return _cmd_compare(args, extra)
        return _cmd_pretrain(args, extra)
    except (KeyError, ValueError) as exc:
        from nemo_vwn.bridge.checkpoints import CheckpointError
        from nemo_vwn.bridge.training import OverrideError
        from nemo_vwn.recipes import UnknownRecipeError

        if isinstance(exc, (OverrideError, UnknownRecipeError, CheckpointError)):
            print(f"nemo-vwn: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
