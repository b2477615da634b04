"""Token efficiency of VWN vs its baseline (docs/method.md §7), on our own code. Not CI.

    .venv/bin/python benchmarks/token_efficiency.py --preset cpu --output runs/study
    .venv/bin/python benchmarks/token_efficiency.py --preset gpu \
        --output runs/study_gpu   # H100/H200
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_seeds \
        --data runs/study/data --seeds 1 2 3 --factors 1 1.5 2 4 8 --no-mtp
        # every variant once per seed: mean +- sd, deltas paired by seed
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_fact \
        --data runs/study/data --embedding factorized --only baseline vwn_r4 vwn_r8
        # the VWN runs without a wide table
    (``--embedding-up-init normal`` for the up-projection init init_method, not N(0, 1/D))
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_ctrl \
        --data runs/study/data --factors 1 --no-mtp --vwn-set model.vwn_collapse=none
        # controls: VWN machinery at r = 1
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_bytes \
        --data runs/study_bytes/data --data-vocab-size 258 ...    # byte-level vocabulary
    .venv/bin/python benchmarks/token_efficiency.py ... --equal-params-of vwn_r4 --grow depth width
        # the baseline grown to VWN r = 4's parameter count (deeper / wider backbone)

Trains, through ``nemo-vwn pretrain`` (Megatron-Bridge ``pretrain()``) on the local corpus of
``nemo-vwn data`` (Python's standard library, local BPE), with the same backbone, data order, tokens
and seed: the baseline and VWN at r = 1.5, 2, 4, 8, each also with MTP (k=1). Then it evaluates each
final checkpoint on the validation split (next-token loss; next-2-token loss for MTP runs,
``nemo_vwn.evaluate``) and writes (``benchmarks/study_report.py``) to ``--output``:
    results.md / results.json    per variant over seeds: mean +- sd of the validation losses, the
                                 delta vs the baseline of the same seed (mean +- sd), parameters
                                 counted from the trained checkpoint's model (its vocab), forward
                                 FLOPs per token, tokens to reach the baseline's final loss; the
                                 fits of the delta vs log2(r) over every VWN r (r = 1 included)
                                 with and without an intercept; the gap at 25/50/75/100%
and to ``--figures`` (default: ``--output``): ``loss_vs_tokens.png`` (seed bands),
``delta_vs_log2r.png`` (both fits), ``paired_deltas.png`` (every variant's paired delta with its
seed sd, side by side; ``--controls-from`` adds other studies' rows).

Seeds ([choice]): ``--seeds S ...`` runs every variant once per seed in ``<variant>_s<S>`` with
``rng.seed=S`` (initialisation) and ``dataset.random_seed=S`` (data order), so the seed spread
holds both sources of run-to-run noise while, for one seed, every variant sees the same data in
the same order (the deltas are paired); ``--fixed-data-order`` keeps the recipe's data order for
every seed (initialisation noise only). The validation set is the same for every run.
Without ``--seeds``: one run per variant in ``<variant>`` with the recipe's seed (1234).
[choice] m: the CPU preset (D=128) uses m=2 — (2,3), (2,4), (2,8), (2,16) — because GHC's work per
token grows with n*r*D while the backbone's grows with D^2: with the paper's m=8 at D=128 an r=8
step took 13x the baseline's (measured 5.2 s vs 0.4 s); the GPU preset (D=512) uses m=8 as the
paper's A0.8B study. 1.5x uses the linear collapse (the group norm needs integer r). The micro
preset (tiny recipes, 10 iterations) exists to test this script end to end; its numbers mean
nothing. Runs that already finished (records + eval present) are reused: rerun to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRESETS = {
    "cpu": {"vwn": "study_vwn_moe_cpu", "base": "study_moe_cpu", "m": 2, "seq": 128,
            "eval_samples": 256, "nproc": 1, "overrides": []},
    "gpu": {"vwn": "study_vwn_moe_gpu", "base": "study_moe_gpu", "m": 8, "seq": 512,
            "eval_samples": 512, "nproc": 1, "overrides": []},
    # end-to-end test size (tests/benchmarks/test_token_efficiency.py): numbers mean nothing
    "micro": {"vwn": "tiny_vwn_moe_cpu", "base": "tiny_moe_cpu", "m": 2, "seq": 64,
              "eval_samples": 16, "nproc": 1,
              "overrides": ["train.train_iters=10", "train.global_batch_size=4",
                            "train.micro_batch_size=4", "validation.eval_interval=5",
                            "validation.eval_iters=1", "scheduler.lr_warmup_iters=2",
                            "scheduler.lr_decay_iters=10", "logger.log_interval=1",
                            "checkpoint.save_interval=10"]},
}
FACTORS = (1.5, 2, 4, 8)


def variants(preset: dict, embedding: str = "wide", up_init: str = "scaled", factors=FACTORS,
             mtp_runs=(False, True), vwn_set=()):
    """(name, recipe, overrides, r, mtp) for every run of the study; ``embedding`` is the VWN
    runs' ``vwn_embedding`` ("factorized": a width-D table + Linear D -> D', which keeps the
    table's parameters at the baseline's size) and ``up_init`` their ``vwn_embedding_up_init``.
    ``factors`` may hold r = 1 (n = m: the VWN machinery without widening, a control);
    ``vwn_set`` are extra overrides of the VWN runs only (the baselines lack VWN fields)."""
    for r in factors:
        if r < 1 or (r != 1.5 and r != int(r)):
            raise ValueError(f"--factors: r={r:g} is not supported; "
                             "allowed: 1, 1.5 or an integer >= 2")
    bad = [item for item in vwn_set if not item.startswith("model.") or "=" not in item]
    if bad:
        raise ValueError(f"--vwn-set takes model.KEY=VALUE items, got {bad}")
    if up_init != "scaled" and embedding != "factorized":
        raise ValueError(f"--embedding-up-init={up_init!r} needs --embedding factorized")
    runs = []
    for mtp in mtp_runs:
        suffix, extra = ("_mtp", ["model.mtp_num_layers=1"]) if mtp else ("", [])
        runs.append((f"baseline{suffix}", preset["base"], list(extra), 1.0, mtp))
        for r in factors:
            m, n = (2, 3) if r == 1.5 else (preset["m"], int(preset["m"] * r))
            overrides = [f"model.virtual_width_m={m}", f"model.virtual_width_n={n}"]
            if r == 1.5:
                overrides.append("model.vwn_collapse=linear")
            if embedding != "wide":
                overrides.append(f"model.vwn_embedding={embedding}")
            if up_init != "scaled":
                overrides.append(f"model.vwn_embedding_up_init={up_init}")
            runs.append((f"vwn_r{r:g}{suffix}", preset["vwn"], overrides + list(vwn_set) + extra,
                         float(r), mtp))
    return runs


def is_baseline(name: str) -> bool:
    return name.startswith("baseline")


def kind_of(name: str) -> str:
    """"baseline", "vwn" (a VWN run at some r) or "control" (a grown baseline)."""
    if is_baseline(name):
        return "baseline"
    return "vwn" if name.startswith("vwn_r") else "control"


def seeded_plan(runs, seeds=None, fixed_data_order: bool = False) -> list:
    """One entry per training run: every variant once per seed (``<variant>_s<S>``, seed overrides
    appended), or once with the recipe's seed (``<variant>``) when ``seeds`` is None."""
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError(f"--seeds takes distinct integers, got {seeds}")
    plan = []
    for name, recipe, overrides, r, mtp in runs:
        for seed in (seeds or [None]):
            extra = [] if seed is None else [f"rng.seed={seed}"] + (
                [] if fixed_data_order else [f"dataset.random_seed={seed}"])
            plan.append(dict(variant=name, seed=seed, kind=kind_of(name), recipe=recipe,
                             overrides=list(overrides) + extra, r=r, mtp=mtp,
                             dir=name if seed is None else f"{name}_s{seed}"))
    return plan


# ----------------------------------------------------------------- equal-parameter baselines
GROW_CHOICES = ("depth", "width")


def equal_params_variants(preset: dict, runs, of: str, grow, data: str, user_overrides=()):
    """Baselines grown to the parameter count of variant ``of`` (e.g. "vwn_r4"): per ``grow``
    "depth" (more layers) or "width" (D, FFN and expert FFN scaled together, D a multiple of
    2 x heads), the size above the baseline's whose total count (``count_parameters``, the
    dataset's vocab) is nearest.
    Returns (variants, notes); each variant is (name, recipe, overrides, 1.0, mtp)."""
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.data.build import load_manifest
    from nemo_vwn.recipes import build_recipe

    by_name = {name: (recipe, overrides, mtp) for name, recipe, overrides, _r, mtp in runs}
    if of not in by_name or kind_of(of) != "vwn":
        choices = sorted(n for n in by_name if kind_of(n) == "vwn")
        raise ValueError(f"--equal-params-of {of!r} is not a VWN variant of this study; "
                         f"allowed: {', '.join(choices)}")
    bad = [g for g in grow if g not in GROW_CHOICES]
    if bad:
        raise ValueError(f"--grow {bad}: allowed {', '.join(GROW_CHOICES)}")
    vocab = load_manifest(data).vocab_size
    common = list(preset.get("overrides", [])) + list(user_overrides)
    recipe, overrides, mtp = by_name[of]
    target = count_parameters(build_recipe(recipe, None, overrides + common).model,
                              vocab_size=vocab).total
    mtp_extra = ["model.mtp_num_layers=1"] if mtp else []
    base = build_recipe(preset["base"], None, mtp_extra + common).model

    def size(**fields):
        model = build_recipe(preset["base"], None, mtp_extra + common).model
        for key, value in fields.items():
            setattr(model, key, value)
        return count_parameters(model, vocab_size=vocab).total

    variants, notes = [], []
    suffix = "_mtp" if mtp else ""
    for how in grow:
        if how == "depth":
            layers = range(base.num_layers + 1, 8 * base.num_layers + 1)
            choices = {L: {"num_layers": L} for L in layers}
        else:
            step = 2 * base.num_attention_heads
            ffn = base.ffn_hidden_size / base.hidden_size
            expert = (base.moe_ffn_hidden_size or 0) / base.hidden_size
            choices = {D: {"hidden_size": D, "ffn_hidden_size": round(D * ffn),
                           **({"moe_ffn_hidden_size": round(D * expert)} if expert else {})}
                       for D in range(base.hidden_size + step, 8 * base.hidden_size + 1, step)}
        best, fields = min(((abs(size(**f) - target), f) for f in choices.values()),
                           key=lambda item: item[0])
        key = "L" if how == "depth" else "D"
        value = fields["num_layers" if how == "depth" else "hidden_size"]
        name = f"{'deeper' if how == 'depth' else 'wider'}_base_{key}{value}{suffix}"
        variants.append((name, preset["base"],
                         [f"model.{k}={v}" for k, v in fields.items()] + mtp_extra, 1.0, mtp))
        notes.append(f"{name}: the baseline grown in {how} to {of}'s {target / 1e6:.3f}M "
                     f"parameters ({size(**fields) / 1e6:.3f}M; vocab {vocab})")
    return variants, notes


# ----------------------------------------------------------------------------------- running
def run_one(entry, out, data, user_overrides, preset):
    name = entry["dir"]
    records = os.path.join(out, "records")
    if (os.path.isdir(records) and os.listdir(records)
            and os.path.exists(os.path.join(out, "eval.json"))):
        print(f"[study] {name}: reusing {out}", flush=True)
        return
    command = [sys.executable, "-m", "nemo_vwn.cli", "pretrain", "--recipe", entry["recipe"],
               "--data", data, "--output", out, "--nproc-per-node", str(preset["nproc"]),
               *preset.get("overrides", []), *entry["overrides"], *user_overrides]
    print(f"[study] {name}: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    status = subprocess.call(command, cwd=REPO)
    if status != 0:
        raise SystemExit(f"[study] {name} failed (exit {status})")
    wall = time.monotonic() - started
    from nemo_vwn.evaluate import evaluate_checkpoint

    run = json.load(open(os.path.join(out, "run.json")))
    evaluation = evaluate_checkpoint(os.path.join(out, "checkpoints"), data, run["seq_length"],
                                     num_samples=preset["eval_samples"])
    evaluation["wall_seconds"] = wall
    evaluation["seed"] = entry["seed"]
    json.dump(evaluation, open(os.path.join(out, "eval.json"), "w"), indent=2)


def fit_log_linear(points):
    """Least squares delta = a * log2(r) + b; returns (a, b, R^2)."""
    from nemo_vwn.results import fit_log2

    fit = fit_log2(points)
    return fit["slope"], fit["intercept"], fit["r2"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "study"))
    parser.add_argument("--data", default=None, help="dataset dir (default: <output>/data)")
    parser.add_argument("--data-vocab-size", type=int, default=None,
                        help="vocab of the dataset built when --data holds none (default 8192; "
                             "258: byte-level); a dataset there with another vocab is an error")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    from nemo_vwn.config import EMBEDDING_CHOICES, EMBEDDING_UP_INIT_CHOICES

    parser.add_argument("--embedding", choices=EMBEDDING_CHOICES, default="wide",
                        help="vwn_embedding of the VWN runs (default: wide, the recipe's)")
    parser.add_argument("--embedding-up-init", choices=EMBEDDING_UP_INIT_CHOICES, default="scaled",
                        help="vwn_embedding_up_init of the factorized VWN runs (default: scaled)")
    parser.add_argument("--factors", nargs="+", type=float, default=list(FACTORS),
                        help="virtual-width factors r of the VWN runs (default: 1.5 2 4 8; "
                             "1 = n = m, a control)")
    parser.add_argument("--no-mtp", action="store_true", help="skip the MTP half of the study")
    parser.add_argument("--mtp-only", action="store_true",
                        help="only the MTP half (baseline_mtp and vwn_r*_mtp)")
    parser.add_argument("--vwn-set", nargs="+", default=[], metavar="model.KEY=VALUE",
                        help="overrides of the VWN runs only, "
                             "e.g. model.vwn_collapse_init=identity")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run every variant once per seed (<variant>_s<seed>); the table "
                             "reports mean +- sd and deltas paired by seed")
    parser.add_argument("--fixed-data-order", action="store_true",
                        help="with --seeds: vary the initialisation only (rng.seed), keep the "
                             "recipe's data order")
    parser.add_argument("--equal-params-of", default=None, metavar="VARIANT",
                        help="add baselines grown to this VWN variant's parameter count "
                             "(e.g. vwn_r4); how: --grow")
    parser.add_argument("--grow", nargs="+", default=["depth"], metavar="{depth,width}",
                        help="how --equal-params-of grows the baseline (default: depth)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (default 1; more only on a machine "
                             "with cores to spare: wall times are then not comparable)")
    parser.add_argument("--figures", default=None,
                        help="directory of the PNGs (default: --output)")
    parser.add_argument("--figure-prefix", default="",
                        help="prefix of the PNG names (several studies into one directory)")
    parser.add_argument("--controls-from", nargs="+", default=[], metavar="STUDY",
                        help="other studies (output dirs or results.json files) whose paired "
                             "deltas join paired_deltas.png")
    args, user_overrides = parser.parse_known_args(argv)
    if args.only:  # "--only a b key=value": the key=value items are overrides, not names
        user_overrides += [item for item in args.only if "=" in item]
        args.only = [item for item in args.only if "=" not in item]
    unknown = [item for item in user_overrides if item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.no_mtp and args.mtp_only:
        parser.error("--no-mtp and --mtp-only exclude each other")
    return args, user_overrides


def main(argv=None):
    args, user_overrides = parse_args(argv)
    preset = PRESETS[args.preset]
    root = os.path.abspath(args.output)
    from nemo_vwn.data.cli import ensure_dataset

    data = ensure_dataset(os.path.abspath(args.data or os.path.join(root, "data")),
                          vocab_size=args.data_vocab_size)
    mtp_runs = (True,) if args.mtp_only else (False,) if args.no_mtp else (False, True)
    runs = variants(preset, args.embedding, args.embedding_up_init, args.factors, mtp_runs,
                    args.vwn_set)
    grown, notes = [], []
    if args.equal_params_of:  # always run: they are what the option asks for
        from nemo_vwn.runtime import prepare_runtime

        prepare_runtime()
        grown, notes = equal_params_variants(preset, runs, args.equal_params_of, args.grow, data,
                                             user_overrides)
    if args.only:
        missing = sorted(set(args.only) - {name for name, *_ in runs + grown})
        if missing:
            raise SystemExit(f"--only: no variant named {missing}; this study has "
                             f"{', '.join(name for name, *_ in runs + grown)}")
        runs = [v for v in runs if v[0] in args.only]
    runs += [v for v in grown if v[0] not in {name for name, *_ in runs}]
    plan = seeded_plan(runs, args.seeds, args.fixed_data_order)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own processes
        for future in [pool.submit(run_one, entry, os.path.join(root, entry["dir"]), data,
                                   user_overrides, preset) for entry in plan]:
            future.result()
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import study_report

    report = study_report.summarize(root, plan, preset)
    report["notes"] = notes
    study_report.write_report(root, report, args, figures=os.path.abspath(args.figures or root))
    return report


if __name__ == "__main__":
    main()
