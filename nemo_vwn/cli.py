"""``nemo-vwn``: the command line.

    nemo-vwn recipes                                   list the recipes
    nemo-vwn data [PATH ...] --output DIR              corpus -> local tokenizer -> indexed dataset
    nemo-vwn pretrain --recipe NAME [key=value ...]    train with Megatron-Bridge's pretrain()
    nemo-vwn pretrain --recipe NAME --data DIR --nproc-per-node 2 ...   real data, torchrun
    nemo-vwn compare --recipe NAME [key=value ...]     VWN recipe vs its baseline twin: table + plot
    nemo-vwn convert reshard|upcycle --checkpoint DIR --output DIR ...   checkpoint conversion
    nemo-vwn pretrain --recipe NAME --from CHECKPOINT ...   continue pretraining a checkpoint
    nemo-vwn evaluate --checkpoint DIR [--hf-dir DIR] --data DIR   validation losses
    nemo-vwn launch --recipe NAME [--executor local|slurm] [key=value ...]   through NeMo-Run
    nemo-vwn patches                                   the upstream workarounds and their reasons

Overrides use Megatron-Bridge's Hydra syntax, e.g. ``train.train_iters=50 model.virtual_width_n=6``.

Import discipline: building the parser and the commands ``recipes``, ``patches``, ``data`` and
``--help`` import neither torch nor megatron (recipe names and sizes come from
``nemo_vwn.recipes.catalog``); the training commands import them once the arguments are checked.
Console discipline: ``pretrain``/``compare`` print progress, checkpoint saves, validation losses
and results; megatron's own output goes to ``<output>/logs/`` (``--verbose``: all of it here).
Errors a user can fix print one line ``nemo-vwn: error: ...`` and exit 2 (``--debug`` or
``NEMO_VWN_DEBUG=1``: the traceback too). Adding a verb: write ``add_<verb>(sub)`` that creates
its subparser with ``_verb()`` and sets its handler, and list it in ``VERBS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


# --------------------------------------------------------------------------- errors
class CLIError(Exception):
    """An error the user can fix; main() prints its message as one line."""


ERROR_DIR_ENV = "NEMO_VWN_ERROR_DIR"  # where a child command reports its error (see run_training)


def is_user_error(exc: BaseException) -> bool:
    """Errors printed as one line: bad configs, overrides, recipe names, data, checkpoints,
    conversions and layouts (VWNConfigError, OverrideError, DataError, CheckpointError are
    ValueErrors; UnknownRecipeError a KeyError), and assertions with a message (Bridge's config
    validation). Anything else is a bug: its traceback is shown."""
    import re

    from nemo_vwn.recipes.catalog import UnknownRecipeError

    if isinstance(exc, (CLIError, UnknownRecipeError, ValueError, FileNotFoundError)):
        return True
    if isinstance(exc, AssertionError):
        return bool(str(exc))
    return isinstance(exc, RuntimeError) and bool(
        re.search(r"world_size \(\d+\) is not divisible|is not divisible by", str(exc)))


def error_line(exc: BaseException) -> str:
    """The one-line message of ``exc`` (its first non-empty line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def run_command(handler, args, overrides, debug: bool = False) -> int:
    """Run a verb's handler; a user error -> one line on stderr and exit status 2. In a child of
    ``run_training`` (``NEMO_VWN_ERROR_DIR`` set) every error is written there for the parent,
    which prints the first rank's message once."""
    import traceback

    from nemo_vwn.bridge import console

    try:
        return handler(args, overrides)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        user = is_user_error(exc)
        trace = traceback.format_exc()
        if console.is_routed():
            print(trace, file=sys.stderr, flush=True)  # into the log
        message = error_line(exc)
        if not user and message != type(exc).__name__:
            message = f"{type(exc).__name__}: {message}"
        if not user and console.log_path():
            message += f" (traceback in {console.log_path()})"
        if os.environ.get(ERROR_DIR_ENV):
            _report_to_parent(message)
            if debug:
                console.echo(trace, err=True)
            return 2 if user else 1
        if debug or not user:
            console.echo(trace, err=True)
        upstream = console.last_upstream_error() if not user else None
        if upstream:  # e.g. the checkpoint writer's "[Errno 28] No space left on device"
            console.echo(upstream, err=True)
        console.echo(f"nemo-vwn: error: {message}", err=True)
        return 2 if user else 1


def _report_to_parent(message: str) -> None:
    import json
    import time

    rank = int(os.environ.get("RANK", 0))
    path = os.path.join(os.environ[ERROR_DIR_ENV], f"rank{rank}.json")
    with open(path, "w") as handle:
        json.dump({"time": time.time(), "rank": rank, "message": message}, handle)


def run_training(recipe: str, output: str, data: Optional[str], nproc: int,
                 overrides: Sequence[str], verbose: bool = False, debug: bool = False,
                 fresh: bool = False, pretrained: Optional[str] = None) -> None:
    """``nemo-vwn pretrain`` of ``recipe`` in child processes (torchrun when ``nproc`` > 1).

    The children report errors into a temporary directory; the first one to fail (in time) is
    raised here as one CLIError, instead of one message (and torchrun's ChildFailedError wall)
    per rank. torchrun's own output goes to ``<output>/logs/torchrun.log`` unless ``verbose``.
    """
    import glob
    import json
    import subprocess
    import tempfile

    command = [sys.executable, "-m", "nemo_vwn.cli", "pretrain", "--recipe", recipe,
               "--output", output]
    if nproc > 1:
        command[1:4] = ["-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={nproc}", "-m", "nemo_vwn.cli", "pretrain"]
    command += (["--data", data] if data else []) + (["--verbose"] if verbose else []) \
        + (["--debug"] if debug else []) + (["--fresh"] if fresh else []) \
        + (["--from", pretrained] if pretrained else []) + list(overrides)
    os.makedirs(os.path.join(output, "logs"), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nemo-vwn-errors-") as errors:
        env = dict(os.environ, **{ERROR_DIR_ENV: errors})
        stderr = None
        if nproc > 1 and not (verbose or debug):
            stderr = open(os.path.join(output, "logs", "torchrun.log"), "a")
        try:
            status = subprocess.call(command, env=env, stderr=stderr)
        finally:
            if stderr is not None:
                stderr.close()
        if status == 0:
            return
        reports = []
        for path in glob.glob(os.path.join(errors, "rank*.json")):
            with open(path) as handle:
                reports.append(json.load(handle))
    if not reports:
        raise CLIError(f"training {recipe} failed (exit status {status}); logs: "
                       f"{os.path.join(output, 'logs')}")
    first = min(reports, key=lambda report: report["time"])
    where = f"rank {first['rank']}: " if nproc > 1 else ""
    raise CLIError(f"{where}{first['message']}")


# --------------------------------------------------------------------------- recipes / patches
def _cmd_recipes(args, overrides) -> int:
    from nemo_vwn.bridge.params import format_count
    from nemo_vwn.recipes.catalog import all_entries

    rows = [("recipe", "VWN", "twin", "params total/activated", "description")]
    for name, entry in sorted(all_entries().items()):
        rows.append((name, "yes" if entry.vwn else "no", entry.twin,
                     f"{format_count(entry.total)}/{format_count(entry.activated)}",
                     entry.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)))
    return 0


def _cmd_patches(args, overrides) -> int:
    from nemo_vwn.patches import read_table  # standard library only: imports no patch

    for name, reason, versions in read_table():
        print(f"{name}  [{versions}]\n    {reason}")
    return 0


# --------------------------------------------------------------------------- data / convert
def _cmd_data(args, overrides) -> int:
    from nemo_vwn.data import cli as data_cli

    return data_cli.run(args)


def _cmd_convert(args, overrides) -> int:
    import tempfile

    from nemo_vwn.bridge import console
    from nemo_vwn.convert import cli as convert_cli

    if not args.verbose:  # the report on the console; the conversion processes' output to a log
        handle, path = tempfile.mkstemp(prefix="nemo-vwn-convert-", suffix=".log")
        os.close(handle)
        console.route_output(path, python_stdout=False)
    status = convert_cli.run(args)
    if not args.verbose:
        line = console.summary() if os.path.getsize(path) else None
        console.restore_output()
        if line:
            print(line, file=sys.stderr)
        else:
            os.remove(path)
    return status


# --------------------------------------------------------------------------- pretrain / compare
def _output_dir(recipe: str, output: Optional[str]) -> str:
    from nemo_vwn.recipes import default_output_dir

    return os.path.abspath(output or default_output_dir(recipe))


def _cmd_pretrain(args, overrides) -> int:
    from nemo_vwn.recipes.catalog import check_recipe_name
    from nemo_vwn.recipes.continued import check_pretrained_checkpoint, split_pretrained

    check_recipe_name(args.recipe)  # before any heavy import
    pretrained, overrides = split_pretrained(args.pretrained, overrides)  # --from = Bridge's field
    if pretrained:
        check_pretrained_checkpoint(pretrained, overrides, args.data)
    output = _output_dir(args.recipe, args.output)
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        run_training(args.recipe, output, args.data, args.nproc_per_node, overrides,
                     verbose=args.verbose, debug=args.debug, fresh=args.fresh,
                     pretrained=pretrained)
        return 0
    from nemo_vwn.bridge import console

    rank = int(os.environ.get("RANK", 0))
    if not args.verbose:
        console.route_output(os.path.join(output, "logs", f"pretrain.rank{rank}.log"),
                             label=args.recipe)
    if rank == 0:
        console.echo(f"[nemo-vwn] pretrain {args.recipe} -> {output}")
    from nemo_vwn.runtime import ensure_process_env, prepare_runtime

    ensure_process_env()
    prepare_runtime()
    from nemo_vwn.bridge.training import run_pretrain
    from nemo_vwn.recipes import build_recipe
    from nemo_vwn.recipes.continued import build_continued_recipe

    cfg = (build_continued_recipe(args.recipe, pretrained, output, overrides, data_dir=args.data)
           if pretrained else build_recipe(args.recipe, output, overrides, data_dir=args.data))
    run_pretrain(cfg, output_dir=output, label=args.recipe, fresh=args.fresh)
    if rank == 0 and console.is_routed():
        console.echo(console.summary())
    return 0


def _cmd_compare(args, overrides) -> int:
    """Train a VWN recipe and its baseline twin on the same data; write table + plot."""
    import json
    import time

    from nemo_vwn.recipes.catalog import check_recipe_name

    entry = check_recipe_name(args.recipe)
    if not entry.vwn:
        raise CLIError(f"compare needs a VWN recipe with a baseline twin; "
                                  f"{args.recipe!r} is a baseline (its VWN twin: {entry.twin})")
    output = os.path.abspath(args.output or os.path.join("runs", f"compare_{args.recipe}"))
    if args.mock:
        data = None
    else:
        from nemo_vwn.data.cli import ensure_dataset

        data = ensure_dataset(args.data or os.path.join(output, "data"))
    started = time.monotonic()
    for recipe in (args.recipe, entry.twin):
        print(f"[nemo-vwn] training {recipe} ...", flush=True)
        run_training(recipe, os.path.join(output, recipe), data, args.nproc_per_node,
                     overrides, verbose=args.verbose, debug=args.debug, fresh=args.fresh)
    from nemo_vwn import results

    vwn = results.load_run(os.path.join(output, args.recipe), name=args.recipe)
    base = results.load_run(os.path.join(output, entry.twin), name=entry.twin)
    window = max(1, min(10, len(base.train_loss) // 10))
    summary = results.compare(vwn, base, window=window)
    summary["noise"] = results.noise_note(summary, args.recipe, iterations=vwn.iterations[-1])
    table = results.markdown_table(summary, args.recipe, entry.twin) + "\n" + summary["noise"]
    png = results.plot([base, vwn], os.path.join(output, "loss_vs_tokens.png"), window=window,
                       title=f"{args.recipe} vs {entry.twin}")
    summary["wall_seconds"] = time.monotonic() - started
    with open(os.path.join(output, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(output, "summary.md"), "w") as handle:
        handle.write(table + "\n")
    print("\n" + table + f"\n\nplot: {png}\nsummary: {os.path.join(output, 'summary.md')}"
          f"\nwall time: {summary['wall_seconds']:.0f} s", flush=True)
    return 0


# --------------------------------------------------------------------------- launch
def _cmd_launch(args, overrides) -> int:
    import warnings

    from nemo_vwn.bridge import launch
    from nemo_vwn.recipes.catalog import check_recipe_name, default_nodes

    check_recipe_name(args.recipe)  # from the catalog: nothing built, no megatron here
    nodes = default_nodes(args.recipe, args.nproc_per_node or launch.GPUS_PER_NODE)
    with warnings.catch_warnings(record=True) as caught:
        if not args.verbose:
            warnings.simplefilter("always")
        try:
            launch.require_nemo_run()
        except ImportError as exc:
            raise CLIError(str(exc)) from exc
    if caught:
        print(f"[nemo-vwn] {len(caught)} upstream warnings while importing NeMo-Run hidden "
              f"({', '.join(sorted({w.category.__name__ for w in caught}))}; --verbose shows "
              "them)", file=sys.stderr)
    return launch.run_cli(args, overrides, nodes=nodes)


# --------------------------------------------------------------------------- the parser
def _global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="print upstream output (megatron's logs, warnings) on the console")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an error (also NEMO_VWN_DEBUG=1)")


def _verb(sub, name: str, help: str, handler, overrides: bool = False):
    """A subparser for verb ``name``; ``overrides``: it takes trailing key=value overrides."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)  # also after the verb; never resets the global
    parser = sub.add_parser(name, help=help, parents=[common])
    parser.set_defaults(handler=handler, takes_overrides=overrides)
    return parser


def add_recipes(sub) -> None:
    _verb(sub, "recipes", "list the recipes", _cmd_recipes)


def add_patches(sub) -> None:
    _verb(sub, "patches", "list the upstream workarounds", _cmd_patches)


def add_data(sub) -> None:
    from nemo_vwn.data import cli as data_cli

    data_cli.add_arguments(_verb(sub, "data", "build a tokenizer + indexed dataset", _cmd_data))


def add_convert(sub) -> None:
    from nemo_vwn.convert import cli as convert_cli

    convert_cli.add_arguments(_verb(
        sub, "convert", "upcycle, reshard, Hugging Face export/import of checkpoints",
        _cmd_convert))


def _training_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (`nemo-vwn recipes`)")
    parser.add_argument("--output", default=None, help="output directory (default runs/...)")
    parser.add_argument("--data", default=None,
                        help="dataset directory from `nemo-vwn data` (default: the recipe's "
                             "mock data for pretrain; the stdlib corpus for compare)")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="processes to launch with torchrun (default 1)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: move the previous run aside (nothing is deleted) "
                             "instead of resuming from its newest intact checkpoint")


def add_pretrain(sub) -> None:
    pretrain = _verb(sub, "pretrain", "train a recipe with Megatron-Bridge pretrain()",
                     _cmd_pretrain, overrides=True)
    _training_arguments(pretrain)
    pretrain.add_argument("--from", dest="pretrained", metavar="CHECKPOINT",
                          help="continue pretraining this checkpoint (e.g. `convert upcycle "
                               "--hf-model`'s output): its model, the recipe's training "
                               "settings; = checkpoint.pretrained_checkpoint. The run's own "
                               "checkpoint, if any, is resumed instead (--fresh: start over)")


def add_compare(sub) -> None:
    compare = _verb(sub, "compare", "a VWN recipe vs its baseline twin: table + plot",
                    _cmd_compare, overrides=True)
    _training_arguments(compare)
    compare.add_argument("--mock", action="store_true", help="use mock data instead of a corpus")


def add_launch(sub) -> None:
    from nemo_vwn.bridge import launch  # NeMo-Run is imported only when launching

    launch.add_arguments(_verb(sub, "launch", "run a recipe through NeMo-Run (local torchrun or "
                                              "Slurm)", _cmd_launch, overrides=True))


def _cmd_checkpoint(args, overrides) -> int:
    from nemo_vwn.bridge import checkpoints

    return checkpoints.run_checkpoint_command(args)


def add_checkpoint(sub) -> None:
    from nemo_vwn.bridge import checkpoints  # standard library only at import

    checkpoints.add_checkpoint_parser(sub).set_defaults(handler=_cmd_checkpoint,
                                                        takes_overrides=False)


def add_evaluate(sub) -> None:
    from nemo_vwn import evaluate  # standard library only at import

    evaluate.add_arguments(_verb(sub, "evaluate", "validation next-token (and MTP) losses of "
                                 "checkpoints / HF directories on a dataset",
                                 lambda args, overrides: evaluate.run_cli(args)))


VERBS = (add_recipes, add_data, add_pretrain, add_compare, add_convert, add_launch,
         add_checkpoint, add_evaluate, add_patches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-vwn", description=__doc__.split("\n\n")[0])
    _global_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [item for item in extra if item.startswith("-")]
    if unknown_flags or (extra and not args.takes_overrides):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.debug = args.debug or os.environ.get("NEMO_VWN_DEBUG", "") not in ("", "0")
    return run_command(args.handler, args, extra, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
