"""The token-efficiency study's report (benchmarks/token_efficiency.py): finished runs -> per
variant over seeds (mean +- sd), deltas paired by seed, fits vs log2(r), table, JSON and figures.

    summarize(root, plan, preset) -> report dict      (after nemo_vwn.runtime.prepare_runtime())
    write_report(root, report, args, figures)         results.md, results.json, the PNGs

Parameters are counted (``nemo_vwn.bridge.params.count_parameters``) from the model provider
saved in each run's checkpoint, i.e. with the vocabulary the run really used (a byte-level
dataset's 258 entries, padded as Bridge pads them), not the recipe's placeholder vocab.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys

PNG_DPI = 100


# ------------------------------------------------------------------------------- FLOPs / vocab
def padded_vocab(model, vocab: int) -> int:
    """The vocab the model builds: ``vocab`` padded like Bridge pads a tokenizer's
    (``should_pad_vocab``; ``make_vocab_size_divisible_by`` x TP)."""
    if not getattr(model, "should_pad_vocab", True):
        return vocab
    multiple = (getattr(model, "make_vocab_size_divisible_by", 128) or 1) * (
        model.tensor_model_parallel_size or 1)
    return -(-vocab // multiple) * multiple


def flops_per_token(model, seq_length: int, vocab: int) -> float:
    """Forward matmul FLOPs per token of the model a provider builds (nemo_vwn.profiling):
    layers x (attention + MLP/MoE) + per layer two GHCs (docs/method.md §6) + the collapse (and the
    factorized embedding's up-projection) + the LM head 2*D*V; each MTP depth adds a layer, its
    input projection and the head again. ``vocab``: the padded vocabulary."""
    from nemo_vwn.profiling import backbone_flops_per_token, ghc_flops_per_token

    D, layers = model.hidden_size, model.num_layers
    layer = backbone_flops_per_token(model, seq_length)
    n = getattr(model, "virtual_width_n", None)
    ghc, wide = 0.0, D
    if n:
        m = model.virtual_width_m
        wide = D * n // m
        ghc = 2 * ghc_flops_per_token(D, n, m, model.ghc_dynamic)["total"]
    total = layers * (layer + ghc) + 2 * D * vocab
    if n and model.vwn_collapse != "none":
        total += 2 * wide * D
    if n and model.vwn_embedding == "factorized":
        total += 2 * D * wide
    depths = model.mtp_num_layers or 0
    if depths:  # stock: eh_proj 2D -> D; VWN: block-wise Linear(2d -> d) over the D' state
        mixer = 4 * D * D if not n else 4 * model.ghc_segment_size * wide
        total += depths * (layer + ghc + mixer + 2 * D * vocab)
    return float(total)


# --------------------------------------------------------------------------------- collecting
def load_runs(root: str, plan: list) -> list:
    """One row per finished run of ``plan``: its curve, eval.json, parameter count and FLOPs."""
    from nemo_vwn import results
    from nemo_vwn.bridge.params import count_parameters
    from nemo_vwn.convert.checkpoint import load_provider

    rows = []
    for entry in plan:
        out = os.path.join(root, entry["dir"])
        curve = results.load_run(out, name=entry["variant"])
        with open(os.path.join(out, "eval.json")) as handle:
            evaluation = json.load(handle)
        provider = load_provider(os.path.join(out, "checkpoints"))
        size = count_parameters(provider)
        vocab = padded_vocab(provider, provider.vocab_size)
        rows.append(dict(entry, curve=curve, eval=evaluation, params_total=size.total,
                         params_activated=size.activated, vocab_size=provider.vocab_size,
                         flops_per_token=flops_per_token(provider, curve.meta["seq_length"],
                                                         vocab)))
    return rows


def _gaps(curve, base, window):
    """Smoothed training-loss delta (run - baseline) at 25/50/75/100% of training."""
    from nemo_vwn.results import smooth

    a, b = smooth(curve.train_loss, window), smooth(base.train_loss, window)
    n = min(len(a), len(b))
    return {f"{p}%": a[max(0, n * p // 100 - 1)] - b[max(0, n * p // 100 - 1)]
            for p in (25, 50, 75, 100)}


def pair_with_baselines(rows: list, window: int) -> list:
    """Per run: validation losses and their deltas vs the baseline of the same seed and MTP
    setting (next-2-token for MTP runs), the training-loss summary and gaps."""
    from nemo_vwn import results

    paired = []
    for row in rows:
        bases = [b for b in rows if b["kind"] == "baseline" and b["mtp"] == row["mtp"]
                 and b["seed"] == row["seed"]]
        if not bases:
            raise ValueError(f"{row['dir']}: no baseline{'_mtp' if row['mtp'] else ''} run with "
                             f"seed {row['seed']} in this study to pair it with")
        base = bases[0]
        summary = results.compare(row["curve"], base["curve"], window=window)
        val2 = row["eval"].get("next_2_token_loss") if row["mtp"] else None
        paired.append(dict(
            variant=row["variant"], seed=row["seed"], dir=row["dir"], kind=row["kind"],
            r=row["r"], mtp=row["mtp"], params_total=row["params_total"],
            params_activated=row["params_activated"], vocab_size=row["vocab_size"],
            parameters_loaded=row["eval"].get("parameters"),
            flops_per_token=row["flops_per_token"],
            val_next_token=row["eval"]["next_token_loss"], val_next_2_token=val2,
            delta_next_token=row["eval"]["next_token_loss"] - base["eval"]["next_token_loss"],
            delta_next_2_token=(val2 - base["eval"]["next_2_token_loss"]) if row["mtp"] else None,
            final_train_loss=summary["vwn_final_train_loss"],
            tokens=row["curve"].tokens[-1],
            tokens_to_reach_baseline=summary["vwn_tokens_to_reach_baseline_final"],
            token_ratio=summary["token_ratio"],
            token_ratio_paired=summary["token_ratio_paired"],
            gap_by_progress=_gaps(row["curve"], base["curve"], window),
            wall_seconds=row["eval"].get("wall_seconds")))
    return paired


METRICS = ("val_next_token", "val_next_2_token", "delta_next_token", "delta_next_2_token",
           "final_train_loss", "token_ratio", "token_ratio_paired", "wall_seconds")


def fill_paired_token_ratio(paired: list) -> list:
    """Set ``token_ratio_paired`` where a run lacks it (results.json written before it existed):
    the run's token ratio / its same-seed baseline's own (the baseline's row holds its ratio vs
    itself), which is ``nemo_vwn.results.compare``'s paired ratio (both divide the same tokens)."""
    for row in paired:
        if "token_ratio_paired" in row:
            continue
        base = next((b for b in paired if b["kind"] == "baseline" and b["mtp"] == row["mtp"]
                     and b["seed"] == row["seed"]), None)
        ok = base is not None and None not in (row["token_ratio"], base["token_ratio"])
        row["token_ratio_paired"] = row["token_ratio"] / base["token_ratio"] if ok else None
    return paired


def aggregate(paired: list) -> list:
    """Per variant (plan order): seeds, and mean / sd over seeds of every metric (None where a
    run has no value, e.g. the token ratio of a run that never reached the baseline's loss)."""
    from nemo_vwn.results import mean_sd

    order = list(dict.fromkeys(p["variant"] for p in paired))
    table = []
    for name in order:
        runs = [p for p in paired if p["variant"] == name]
        first = runs[0]
        sizes = {(p["params_total"], p["params_activated"]) for p in runs}
        if len(sizes) != 1:
            raise ValueError(f"{name}: the seeds' runs have different parameter counts {sizes}")
        row = dict(variant=name, kind=first["kind"], r=first["r"], mtp=first["mtp"],
                   seeds=[p["seed"] for p in runs], params_total=first["params_total"],
                   params_activated=first["params_activated"], vocab_size=first["vocab_size"],
                   flops_per_token=first["flops_per_token"], tokens=first["tokens"])
        for metric in METRICS:
            values = [p.get(metric) for p in runs]
            if any(v is None for v in values):
                row[metric] = row[metric + "_sd"] = None
            else:
                row[metric], row[metric + "_sd"] = mean_sd(values)
        row["gap_by_progress"] = {k: sum(p["gap_by_progress"][k] for p in runs) / len(runs)
                                  for k in first["gap_by_progress"]}
        table.append(row)
    return table


def fits(paired: list, table: list) -> dict:
    """delta vs log2(r) over every VWN variant (r = 1, n = m, included; the grown baselines and
    the baseline itself are not points), with and without an intercept, on the seed means; and
    the slope of the same fit per seed (mean +- sd over seeds)."""
    from nemo_vwn.results import fit_log2, mean_sd

    out = {}
    for mtp in (False, True):
        for loss in (("delta_next_token", "delta_next_2_token") if mtp else ("delta_next_token",)):
            rows = [t for t in table if t["kind"] == "vwn" and t["mtp"] == mtp]
            points = [(t["r"], t[loss]) for t in rows]
            if len({r for r, _ in points}) < 2 or all(r == 1 for r, _ in points):
                continue
            fit = {"with_intercept": fit_log2(points), "no_intercept": fit_log2(points, False),
                   "r": [r for r, _ in points]}
            seeds = sorted({p["seed"] for p in paired if p["kind"] == "vwn" and p["mtp"] == mtp},
                           key=str)
            for how, intercept in (("with_intercept", True), ("no_intercept", False)):
                slopes = []
                for seed in seeds:
                    pts = [(p["r"], p[loss]) for p in paired if p["kind"] == "vwn"
                           and p["mtp"] == mtp and p["seed"] == seed]
                    if len(pts) == len(points):
                        slopes.append(fit_log2(pts, intercept)["slope"])
                if len(slopes) > 1:
                    fit[how]["slope_per_seed"] = slopes
                    fit[how]["slope_mean"], fit[how]["slope_sd"] = mean_sd(slopes)
            out[f"{'mtp' if mtp else 'no_mtp'}/{loss}"] = fit
    return out


def summarize(root: str, plan: list, preset: dict) -> dict:
    rows = load_runs(root, plan)
    window = max(1, len(rows[0]["curve"].train_loss) // 20)
    paired = pair_with_baselines(rows, window)
    table = aggregate(paired)
    return dict(runs=paired, variants=table, fits=fits(paired, table), window=window,
                curves={r["dir"]: r["curve"] for r in rows}, plan=plan)


# ------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_delta_vs_log2r(report: dict, path: str) -> str:
    """Per-seed paired deltas (small), their mean +- sd and both fits, vs log2(r)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=PNG_DPI)
    for key, fit in report["fits"].items():
        half, loss = key.split("/")
        mtp = half == "mtp"
        label = ("next-2-token" if loss.endswith("2_token") else "next-token") + (
            " (MTP runs)" if mtp else "")
        rows = [t for t in report["variants"] if t["kind"] == "vwn" and t["mtp"] == mtp]
        xs = [math.log2(t["r"]) for t in rows]
        line = ax.errorbar(xs, [t[loss] for t in rows], yerr=[t[loss + "_sd"] or 0 for t in rows],
                           fmt="o", capsize=3, label=f"{label}: mean +- sd over seeds")
        color = line[0].get_color()
        runs = [p for p in report["runs"] if p["kind"] == "vwn" and p["mtp"] == mtp]
        ax.plot([math.log2(p["r"]) for p in runs], [p[loss] for p in runs], ".", color=color,
                alpha=0.35, markersize=4)
        top = max(xs + [1.0])
        for how, style in (("with_intercept", "--"), ("no_intercept", ":")):
            f = fit[how]
            b = f["intercept"] or 0.0
            ax.plot([0, top], [b, f["slope"] * top + b], style, color=color, linewidth=1,
                    label=f"{f['slope']:+.4f} log2 r" + (f" {b:+.4f}" if f["intercept"] is not None
                                                          else " (no intercept)")
                    + f", R2 {f['r2']:.3f}")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("log2(r)   (r = 1: n = m, no widening)")
    ax.set_ylabel("validation loss delta vs baseline (same seed)")
    ax.legend(fontsize=6.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def control_rows(report: dict, others=()) -> list:
    """(label, mean delta, sd, seeds) of every non-baseline variant of this study and of the
    studies in ``others`` (study directories holding results.json, or such JSON files, e.g. the
    committed copies under docs/results/), for the side-by-side figure. A directory's rows are
    tagged with its name, a file's with its name less ``.json`` (``results.json``: its folder's)."""
    rows = [("", t) for t in report["variants"] if t["kind"] != "baseline"]
    for other in others:
        path = other if other.endswith(".json") else os.path.join(other, "results.json")
        with open(path) as handle:
            data = json.load(handle)
        stem = os.path.splitext(os.path.basename(path))[0]
        tag = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "results" \
            else stem
        rows += [(tag, t) for t in data.get("variants", []) if t["kind"] != "baseline"]
    out = []
    for tag, t in rows:
        loss = "delta_next_2_token" if t["mtp"] and t.get("delta_next_2_token") is not None \
            else "delta_next_token"
        label = (f"{tag}: " if tag else "") + t["variant"] + (" (next-2)" if "2" in loss else "")
        out.append((label, t[loss], t[loss + "_sd"], len(t["seeds"])))
    return out


def plot_paired_deltas(rows: list, path: str) -> str:
    """Horizontal points with error bars: each variant's paired delta, mean +- sd over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.28 * len(rows)), dpi=PNG_DPI)
    ys = list(range(len(rows)))[::-1]
    ax.errorbar([r[1] for r in rows], ys, xerr=[r[2] or 0 for r in rows], fmt="o", capsize=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r[0]} (n={r[3]})" for r in rows], fontsize=7)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("validation loss delta vs the same-seed baseline (mean +- sd)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_figures(report: dict, figures: str, prefix: str = "", title: str = "",
                  others=()) -> list:
    from nemo_vwn import results

    os.makedirs(figures, exist_ok=True)

    def name(stem):
        return os.path.join(figures, f"{prefix}{stem}.png")

    paths = []
    for mtp in (False, True):
        groups = {}
        for p in report["runs"]:
            if p["mtp"] == mtp:
                groups.setdefault(p["variant"], []).append(report["curves"][p["dir"]])
        if groups:
            paths.append(results.plot_seed_bands(
                groups, name("loss_vs_tokens" + ("_mtp" if mtp else "")),
                window=report["window"], title=title + (" + MTP" if mtp else ""), dpi=PNG_DPI))
    if report["fits"]:
        paths.append(plot_delta_vs_log2r(report, name("delta_vs_log2r")))
    rows = control_rows(report, others)
    if rows:
        paths.append(plot_paired_deltas(rows, name("paired_deltas")))
    return paths


# ------------------------------------------------------------------------------------- report
def _pm(mean, sd, spec=".4f"):
    if mean is None:
        return "-"
    return format(mean, spec) + ("" if sd is None else f" ± {format(sd, spec.lstrip('+'))}")


def markdown(report: dict, command: str, preset_name: str) -> list:
    lines = [f"# Token-efficiency study ({preset_name} preset)", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
             f"Python {platform.python_version()}  ", f"Versions: {_versions()}", "",
             "| variant | r | MTP | seeds | vocab | params total / activated | fwd MFLOP/token "
             "| val next-token | Δ next-token (paired) | val next-2-token | Δ next-2-token "
             "| final train loss | token ratio, paired (raw) | wall s |", "|" + "---|" * 14]
    for t in report["variants"]:
        lines.append(
            f"| {t['variant']} | {t['r']:g} | {'yes' if t['mtp'] else 'no'} | "
            f"{','.join('-' if s is None else str(s) for s in t['seeds'])} | {t['vocab_size']} | "
            f"{t['params_total'] / 1e6:.3f}M / {t['params_activated'] / 1e6:.3f}M | "
            f"{t['flops_per_token'] / 1e6:.2f} | "
            f"{_pm(t['val_next_token'], t['val_next_token_sd'])} | "
            f"{_pm(t['delta_next_token'], t['delta_next_token_sd'], '+.4f')} | "
            f"{_pm(t['val_next_2_token'], t['val_next_2_token_sd'])} | "
            f"{_pm(t['delta_next_2_token'], t['delta_next_2_token_sd'], '+.4f')} | "
            f"{_pm(t['final_train_loss'], t['final_train_loss_sd'])} | "
            f"{_pm(t.get('token_ratio_paired'), t.get('token_ratio_paired_sd'), '.2f')} "
            f"({_pm(t['token_ratio'], None, '.2f')}) | "
            f"{_pm(t['wall_seconds'], None, '.0f')} |")
    lines += ["", "Values are mean ± sample sd over the seeds (no sd: one seed). Δ = run − the "
              "baseline of the same seed (MTP runs: − baseline_mtp), then mean ± sd over seeds. "
              f"Training losses smoothed over {report['window']} logged iterations; token ratio, "
              "paired = tokens the same-seed baseline needs to first reach its own smoothed final "
              "loss / tokens the run needs (the baseline: 1 by definition); raw, in brackets = "
              "all the baseline's tokens / tokens the run needs, which a noisy baseline curve "
              "inflates (its own raw ratio is above 1); missing when a seed never reached it. "
              "Parameters: count_parameters of the provider saved in "
              "the checkpoint (the run's own vocab, padded).", "",
              "Fits of Δ vs log2(r) over the VWN variants (r = 1, n = m, included), on the seed "
              "means; per-seed slopes mean ± sd. The intercept is the fitted Δ at r = 1: what VWN "
              "gains without widening if the log-linear law held down to r = 1; the fit without "
              "an intercept assumes VWN at r = 1 equals the baseline.", ""]
    if not report["fits"]:
        lines.append("- not fitted (needs two distinct r, one of them > 1)")
    for key, fit in report["fits"].items():
        for how in ("with_intercept", "no_intercept"):
            f = fit[how]
            b = "" if f["intercept"] is None else f" {f['intercept']:+.4f}"
            spread = (f"; per-seed slope {_pm(f['slope_mean'], f['slope_sd'], '+.4f')}"
                      if "slope_mean" in f else "")
            lines.append(f"- {key}, {how.replace('_', ' ')}: Δ = {f['slope']:+.4f}·log2(r){b}, "
                         f"R² = {f['r2']:.3f} over r = {', '.join(f'{r:g}' for r in fit['r'])}"
                         f"{spread}")
    lines += ["", "Smoothed training-loss gap (run − baseline, seed mean) at 25/50/75/100% of "
              "training:", ""]
    for t in report["variants"]:
        if t["kind"] != "baseline":
            lines.append(f"- {t['variant']}: " + ", ".join(
                f"{k} {v:+.4f}" for k, v in t["gap_by_progress"].items()))
    if report.get("notes"):
        lines += [""] + [f"- {note}" for note in report["notes"]]
    return lines


def write_report(root: str, report: dict, args, figures: str) -> dict:
    paths = write_figures(report, figures, prefix=args.figure_prefix,
                          title=f"{os.path.basename(root)} ({args.preset} preset)",
                          others=args.controls_from)
    lines = markdown(report, " ".join(sys.argv), args.preset)
    lines += ["", "Figures: " + ", ".join(f"`{os.path.relpath(p, root)}`" for p in paths)]
    with open(os.path.join(root, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    kept = {k: report[k] for k in ("runs", "variants", "fits", "window", "notes") if k in report}
    with open(os.path.join(root, "results.json"), "w") as handle:
        json.dump(dict(kept, figures=paths), handle, indent=2, default=str)
    print("\n".join(lines), flush=True)
    report["figures"] = paths
    return report


def _versions():
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "megatron-core", "megatron-bridge"))
