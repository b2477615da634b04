"""Token efficiency of VWN vs its baseline (docs/method.md §7), on our own code. Not CI.

    .venv/bin/python benchmarks/token_efficiency.py --preset cpu --output runs/study
    .venv/bin/python benchmarks/token_efficiency.py --preset gpu \
        --output runs/study_gpu   # H100/H200
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_fact \
        --data runs/study/data --embedding factorized --only baseline vwn_r4 vwn_r8
        # the VWN runs without a wide table
    (``--embedding-up-init normal`` for the up-projection init init_method, not N(0, 1/D))
    .venv/bin/python benchmarks/token_efficiency.py --output runs/study_ctrl \
        --data runs/study/data --factors 1 --no-mtp --vwn-set model.vwn_collapse=none
        # controls: VWN machinery at r = 1

Trains, through ``nemo-vwn pretrain`` (Megatron-Bridge ``pretrain()``) on the local corpus of
``nemo-vwn data`` (Python's standard library, local BPE), with the same backbone, data order, tokens
and seed: the baseline and VWN at r = 1.5, 2, 4, 8, each also with MTP (k=1). Then it evaluates each
final checkpoint on the validation split (next-token loss; next-2-token loss for MTP runs,
``nemo_vwn.evaluate``) and writes to ``--output``:
    results.md / results.json    table (final losses, delta vs baseline, tokens to reach the
                                 baseline's final loss and the ratio), the fit of the loss delta vs
                                 log2(r) with R^2, and the gap at 25/50/75/100% of training
    loss_vs_tokens.png           smoothed training loss vs tokens, every variant
    delta_vs_log2r.png           validation-loss delta vs log2(r) with the fit

[choice] m: the CPU preset (D=128) uses m=2 — (2,3), (2,4), (2,8), (2,16) — because GHC's work per
token grows with n*r*D while the backbone's grows with D^2: with the paper's m=8 at D=128 an r=8
step took 13x the baseline's (measured 5.2 s vs 0.4 s); the GPU preset (D=512) uses m=8 as the
paper's A0.8B study. 1.5x uses the linear collapse (the group norm needs integer r).
Runs that already finished (records + eval present) are reused: rerun to resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRESETS = {
    "cpu": {"vwn": "study_vwn_moe_cpu", "base": "study_moe_cpu", "m": 2, "seq": 128,
            "eval_samples": 256, "nproc": 1},
    "gpu": {"vwn": "study_vwn_moe_gpu", "base": "study_moe_gpu", "m": 8, "seq": 512,
            "eval_samples": 512, "nproc": 1},
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


def run_one(name, recipe, overrides, out, data, user_overrides, nproc):
    records = os.path.join(out, "records")
    if (os.path.isdir(records) and os.listdir(records)
            and os.path.exists(os.path.join(out, "eval.json"))):
        print(f"[study] {name}: reusing {out}", flush=True)
        return
    command = [sys.executable, "-m", "nemo_vwn.cli", "pretrain", "--recipe", recipe, "--data", data,
               "--output", out, "--nproc-per-node", str(nproc), *overrides, *user_overrides]
    print(f"[study] {name}: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    status = subprocess.call(command, cwd=REPO)
    if status != 0:
        raise SystemExit(f"[study] {name} failed (exit {status})")
    wall = time.monotonic() - started
    from nemo_vwn.evaluate import evaluate_checkpoint

    run = json.load(open(os.path.join(out, "run.json")))
    evaluation = evaluate_checkpoint(os.path.join(out, "checkpoints"), data, run["seq_length"],
                                     num_samples=PRESET["eval_samples"])
    evaluation["wall_seconds"] = wall
    json.dump(evaluation, open(os.path.join(out, "eval.json"), "w"), indent=2)


def fit_log_linear(points):
    """Least squares delta = a * log2(r) + b; returns (a, b, R^2)."""
    xs = [math.log2(r) for r, _ in points]
    ys = [d for _, d in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    b = my - a * mx
    ss_res = sum((y - (a * x + b)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss_res / ss_tot if ss_tot else float("nan")


def summarize(root, runs):
    from nemo_vwn import results
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.recipes import build_recipe

    rows, curves = [], {}
    for name, recipe, overrides, r, mtp in runs:
        out = os.path.join(root, name)
        curve = results.load_run(out, name=name)
        curves[name] = curve
        evaluation = json.load(open(os.path.join(out, "eval.json")))
        cfg = build_recipe(recipe, out, overrides)
        size = count_parameters(cfg.model, vocab_size=curve.meta.get("vocab_size") or 8192)
        rows.append(dict(name=name, r=r, mtp=mtp, params_total=size.total,
                         params_activated=size.activated, curve=curve, eval=evaluation))
    window = max(1, len(rows[0]["curve"].train_loss) // 20)
    table = []
    for row in rows:
        base = next(b for b in rows if is_baseline(b["name"]) and b["mtp"] == row["mtp"])
        summary = results.compare(row["curve"], base["curve"], window=window)
        key = "next_2_token_loss" if row["mtp"] else None
        table.append(dict(
            variant=row["name"], r=row["r"], mtp=row["mtp"],
            params_total=row["params_total"], params_activated=row["params_activated"],
            final_train_loss=summary["vwn_final_train_loss"],
            val_next_token=row["eval"]["next_token_loss"],
            val_next_2_token=row["eval"].get("next_2_token_loss") if key else None,
            delta_val_next_token=row["eval"]["next_token_loss"] - base["eval"]["next_token_loss"],
            delta_val_next_2_token=(row["eval"]["next_2_token_loss"]
                                    - base["eval"]["next_2_token_loss"]) if key else None,
            tokens=row["curve"].tokens[-1],
            tokens_to_reach_baseline=summary["vwn_tokens_to_reach_baseline_final"],
            token_ratio=summary["token_ratio"],
            gap_by_progress=_gaps(row["curve"], base["curve"], window),
            wall_seconds=row["eval"].get("wall_seconds"),
        ))
    fits = {}
    for mtp, key in ((False, "delta_val_next_token"), (True, "delta_val_next_2_token")):
        points = [(t["r"], t[key]) for t in table if t["mtp"] == mtp and t["r"] > 1]
        if len(points) >= 3:
            fits["mtp" if mtp else "no_mtp"] = dict(zip(("slope", "intercept", "r2"),
                                                        fit_log_linear(points)))
    return table, fits, curves, window


def _gaps(curve, base, window):
    """Smoothed training-loss delta (VWN - baseline) at 25/50/75/100% of training."""
    from nemo_vwn.results import smooth

    a, b = smooth(curve.train_loss, window), smooth(base.train_loss, window)
    n = min(len(a), len(b))
    return {f"{p}%": a[max(0, n * p // 100 - 1)] - b[max(0, n * p // 100 - 1)]
            for p in (25, 50, 75, 100)}


def write_report(root, table, fits, curves, window, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nemo_vwn import results

    for mtp in (False, True):
        chosen = [curves[t["variant"]] for t in table if t["mtp"] == mtp]
        results.plot(chosen, os.path.join(root, f"loss_vs_tokens{'_mtp' if mtp else ''}.png"),
                     window=window, title=f"study ({args.preset} preset){' + MTP' if mtp else ''}")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mtp, key, label in ((False, "delta_val_next_token", "next-token"),
                            (True, "delta_val_next_2_token", "next-2-token (MTP runs)")):
        pts = [(math.log2(t["r"]), t[key]) for t in table if t["mtp"] == mtp and t["r"] > 1]
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=label)[0]
        fit = fits.get("mtp" if mtp else "no_mtp")
        if fit:
            xs = [0, 3]
            ax.plot(xs, [fit["slope"] * x + fit["intercept"] for x in xs], "--",
                    color=line.get_color(),
                    label=f"fit {fit['slope']:+.4f}*log2(r) {fit['intercept']:+.4f} "
                          f"(R2 {fit['r2']:.3f})")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("log2(r)")
    ax.set_ylabel("validation loss delta vs baseline")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "delta_vs_log2r.png"))
    plt.close(fig)

    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)

    lines = [f"# Token-efficiency study ({args.preset} preset)", "",
             f"Command: `{' '.join(sys.argv)}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
             f"Python {platform.python_version()}  ",
             f"Versions: {_versions()}", "",
             "| variant | r | MTP | params total / activated | final train loss | val next-token "
             "| val next-2-token | delta next-token | delta next-2-token | tokens "
             "| tokens to reach baseline | ratio | wall s |", "|" + "---|" * 13]
    for t in table:
        reach = t["tokens_to_reach_baseline"]
        lines.append(
            f"| {t['variant']} | {t['r']:g} | {'yes' if t['mtp'] else 'no'} | "
            f"{t['params_total'] / 1e6:.2f}M / {t['params_activated'] / 1e6:.2f}M | "
            f"{f(t['final_train_loss'])} | {f(t['val_next_token'])} | {f(t['val_next_2_token'])} | "
            f"{f(t['delta_val_next_token'], '+.4f')} | {f(t['delta_val_next_2_token'], '+.4f')} | "
            f"{t['tokens']:,} | {'-' if reach is None else format(reach, ',')} | "
            f"{f(t['token_ratio'], '.2f')} | {f(t['wall_seconds'], '.0f')} |")
    lines += ["", f"Training losses are smoothed over {window} logged iterations. 'tokens to reach "
              "baseline': the first token count at which the smoothed training loss is at or below "
              "the (MTP-matched) baseline's smoothed final loss; ratio = baseline tokens / that. "
              "The baseline's own row shows the resolution of this measure (its smoothed curve "
              "may dip below its final value before the end). Deltas of MTP runs are vs "
              "baseline_mtp.", "",
              "Fit of the validation-loss delta vs log2(r) (VWN runs, r > 1):", ""]
    if not fits:
        lines.append("- not fitted (needs at least 3 values of r)")
    for key, fit in fits.items():
        lines.append(f"- {key}: delta = {fit['slope']:+.4f} * log2(r) {fit['intercept']:+.4f}, "
                     f"R^2 = {fit['r2']:.3f}")
    lines += ["", "Smoothed training-loss gap (VWN - baseline) at 25/50/75/100% of training:", ""]
    for t in table:
        if not is_baseline(t["variant"]):
            lines.append(f"- {t['variant']}: " + ", ".join(f"{k} {v:+.4f}"
                                                          for k, v in t["gap_by_progress"].items()))
    lines += ["", "Plots: `loss_vs_tokens.png`, `loss_vs_tokens_mtp.png`, `delta_vs_log2r.png`."]
    open(os.path.join(root, "results.md"), "w").write("\n".join(lines) + "\n")
    json.dump({"table": table, "fits": fits}, open(os.path.join(root, "results.json"), "w"),
              indent=2, default=str)
    print("\n".join(lines), flush=True)


def _versions():
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "megatron-core", "megatron-bridge"))


def main():
    global PRESET
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "study"))
    parser.add_argument("--data", default=None, help="dataset dir (default: <output>/data)")
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
    parser.add_argument("--vwn-set", nargs="+", default=[], metavar="model.KEY=VALUE",
                        help="overrides of the VWN runs only, "
                             "e.g. model.vwn_collapse_init=identity")
    args, user_overrides = parser.parse_known_args()
    if args.only:  # "--only a b key=value": the key=value items are overrides, not names
        user_overrides += [item for item in args.only if "=" in item]
        args.only = [item for item in args.only if "=" not in item]
    PRESET = PRESETS[args.preset]
    root = os.path.abspath(args.output)
    from nemo_vwn.data.cli import ensure_dataset

    data = ensure_dataset(args.data or os.path.join(root, "data"))
    mtp_runs = (False,) if args.no_mtp else (False, True)
    runs = [v for v in variants(PRESET, args.embedding, args.embedding_up_init, args.factors,
                                mtp_runs, args.vwn_set)
            if not args.only or v[0] in args.only]
    for name, recipe, overrides, r, mtp in runs:
        run_one(name, recipe, overrides, os.path.join(root, name), data, user_overrides,
                PRESET["nproc"])
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    table, fits, curves, window = summarize(root, runs)
    write_report(root, table, fits, curves, window, args)


PRESET = PRESETS["cpu"]

if __name__ == "__main__":
    main()
