"""``nemo-vwn convert``: checkpoint conversions (atomic outputs, verified).

    nemo-vwn convert reshard --checkpoint runs/x/checkpoints --output runs/x_tp2 --tp 2
    nemo-vwn convert upcycle --checkpoint runs/base/checkpoints --output runs/up --n 4 --m 2
    nemo-vwn convert upcycle --hf-model path/to/llama --output runs/llama_vwn --n 3 --m 2
    nemo-vwn convert export-hf --checkpoint runs/x/checkpoints --output runs/x_hf
    nemo-vwn convert import-hf --hf-dir runs/x_hf --output runs/x_back --n 4 --m 2
"""

from __future__ import annotations

import argparse
import json

CHECKPOINT_HELP = "a checkpoints/ directory (its latest iteration) or an iter_* dir"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="conversion", required=True)
    reshard = sub.add_parser("reshard", help="re-save a checkpoint for another TP/PP/EP layout, "
                                             "verifying logits before and after")
    upcycle = sub.add_parser("upcycle", help="a baseline GPT/GPT-MoE checkpoint or HF model -> "
                                             "a VWN checkpoint that computes the same function "
                                             "at step 0")
    reshard.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    source = upcycle.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=f"the baseline: {CHECKPOINT_HELP}")
    source.add_argument("--hf-model", metavar="DIR",
                        help="the baseline: a local Hugging Face model directory of a family "
                             "Megatron-Bridge imports (Llama, Qwen2/2.5, Qwen3, Qwen3-MoE, "
                             "OLMoE); verified against its transformers logits")
    for command in (reshard, upcycle):
        command.add_argument("--output", required=True, help="output checkpoint directory")
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    for flag in ("--tp", "--pp", "--ep"):
        reshard.add_argument(flag, type=_positive, default=1)
    upcycle.add_argument("--n", type=_positive, required=True, help="virtual_width_n")
    upcycle.add_argument("--m", type=_positive, required=True, help="virtual_width_m")
    upcycle.add_argument("--static", action="store_true", help="static GHC (default: DGHC)")
    upcycle.add_argument("--collapse", default="linear", choices=("linear", "norm_linear"),
                         help="collapse (linear: bit-identical function; default)")
    upcycle.add_argument("--embedding", default="wide", choices=("wide", "factorized"))
    upcycle.add_argument("--extra-slots", default="random", choices=("random", "copy", "zero"),
                         help="values of the new slots m..n-1 (default: random)")
    _add_hf_arguments(sub)


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _add_hf_arguments(sub) -> None:
    """export-hf / import-hf (nemo_vwn.convert.hf)."""
    export = sub.add_parser("export-hf", help="a VWN checkpoint -> a Hugging Face model directory "
                                              "(transformers, trust_remote_code), verified")
    export.add_argument("--checkpoint", required=True,
                        help="a checkpoints/ directory (its latest iteration) or an iter_* dir")
    load = sub.add_parser("import-hf", help="a VWN Hugging Face directory -> a Megatron-Bridge "
                                            "checkpoint, verified")
    load.add_argument("--hf-dir", required=True, help="directory written by export-hf")
    for command in (export, load):
        command.add_argument("--output", required=True, help="output directory")
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
        command.add_argument("--no-verify", action="store_true",
                             help="skip the Megatron-vs-HF logits check")
        for flag, field in (("--n", "virtual_width_n"), ("--m", "virtual_width_m"),
                            ("--hidden-size", "hidden_size")):
            command.add_argument(flag, type=_positive, dest=field,
                                 help=f"fail unless the model's {field} is this")
        command.add_argument("--experts", type=_nonnegative, dest="num_moe_experts",
                             help="fail unless the model has this many experts (0 = dense)")


def _run_hf(args) -> dict:
    from nemo_vwn.convert.hf import export_hf, import_hf

    expected = {k: getattr(args, k) for k in ("virtual_width_n", "virtual_width_m",
                                              "hidden_size", "num_moe_experts")
                if getattr(args, k) is not None}
    if args.conversion == "export-hf":
        return export_hf(args.checkpoint, args.output, overwrite=args.overwrite,
                         expected=expected, verify=not args.no_verify)
    return import_hf(args.hf_dir, args.output, overwrite=args.overwrite, expected=expected,
                     verify=not args.no_verify)


def _child_error(exc) -> str:
    """The last exception line of a conversion process's traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    errors = [line.strip() for line in lines if "Error:" in line and not line.startswith(" ")]
    return errors[-1] if errors else lines[-1]


def run(args) -> int:
    from nemo_vwn.convert.checkpoint import CheckpointError
    from nemo_vwn.distributed import DistributedRunError

    try:
        if args.conversion == "reshard":
            from nemo_vwn.convert.reshard import reshard

            report = reshard(args.checkpoint, args.output, tp=args.tp, pp=args.pp, ep=args.ep,
                             overwrite=args.overwrite)
        elif args.conversion in ("export-hf", "import-hf"):
            report = _run_hf(args)
        elif args.hf_model:
            from nemo_vwn.convert.upcycle_hf import upcycle_hf

            report = upcycle_hf(
                args.hf_model, args.output, n=args.n, m=args.m, dynamic=not args.static,
                collapse=args.collapse, embedding=args.embedding, extra_slots=args.extra_slots,
                overwrite=args.overwrite)
        else:
            from nemo_vwn.convert.upcycle_checkpoint import upcycle_checkpoint

            report = upcycle_checkpoint(
                args.checkpoint, args.output, n=args.n, m=args.m, dynamic=not args.static,
                collapse=args.collapse, embedding=args.embedding, extra_slots=args.extra_slots,
                overwrite=args.overwrite)
    except (CheckpointError, ValueError) as exc:
        print(f"nemo-vwn convert: error: {exc}")
        return 2
    except DistributedRunError as exc:
        print(f"nemo-vwn convert: error: {_child_error(exc)}")
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 0
