"""Combine finished token-efficiency studies into one table, one fit over every r, and figures.

    python benchmarks/study_combine.py docs/results/r2_wide.json runs/r2_small/results.json \\
        --output docs/results/r2_all --figures docs/figures --figure-prefix all_

Inputs are the ``results.json`` files benchmarks/token_efficiency.py writes (committed copies
under docs/results/ work too, so a study whose runs/ folder is gone can still be combined). Every
run there already carries its delta vs the baseline of its own study and seed; the deltas of two
studies can share a table and a fit only if those baselines are the same training runs. So the
baselines of each (seed, MTP) pair must appear with the same validation loss in every study that
has them (``--baseline-tol``, default 1e-6: CPU training here is deterministic, so equal runs
give equal numbers); any other mismatch, or a non-baseline run present in two studies, is an
error naming the runs. Writes ``<output>.md`` and ``<output>.json`` (the study report's table and
fits, docs/results.md explains the columns) and, with ``--figures``, ``delta_vs_log2r`` and
``paired_deltas`` PNGs (the loss curves are not in results.json: each study draws its own);
``--controls-from`` adds other studies' paired deltas to the latter without combining them
(a factorized or byte-level study whose variants share names with the main one's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KIND_ORDER = {"baseline": 0, "vwn": 1}


class CombineError(ValueError):
    """The studies cannot share one table (mismatched baselines, a run in two studies)."""


def _load(path: str) -> dict:
    path = os.path.join(path, "results.json") if os.path.isdir(path) else path
    with open(path) as handle:
        data = json.load(handle)
    if not isinstance(data.get("runs"), list) or not data["runs"]:
        raise CombineError(f"{path}: no 'runs' list (not a token_efficiency.py results.json)")
    return dict(data, path=path)


def combine_runs(studies: list, baseline_tol: float = 1e-6) -> tuple:
    """(runs, notes): the per-run rows of every study, one per (variant, seed, MTP); the
    baselines shared by several studies checked equal, everything else present once."""
    runs, where, notes = [], {}, []
    for study in studies:
        for row in study["runs"]:
            key = (row["variant"], row["seed"], row["mtp"])
            if key not in where:
                where[key] = (study["path"], row)
                runs.append(row)
                continue
            first_path, first = where[key]
            if row["kind"] != "baseline":
                raise CombineError(
                    f"{row['variant']} seed {row['seed']} is in both {first_path} and "
                    f"{study['path']}: keep it in one study (--only) before combining")
            gap = abs(row["val_next_token"] - first["val_next_token"])
            same_size = (row["params_total"], row["tokens"], row["vocab_size"]) == (
                first["params_total"], first["tokens"], first["vocab_size"])
            if gap > baseline_tol or not same_size:
                raise CombineError(
                    f"{row['variant']} seed {row['seed']}: {first_path} has validation loss "
                    f"{first['val_next_token']:.8f} ({first['params_total']} params, "
                    f"{first['tokens']} tokens, vocab {first['vocab_size']}), {study['path']} "
                    f"{row['val_next_token']:.8f} ({row['params_total']}, {row['tokens']}, "
                    f"{row['vocab_size']}): not the same baseline run (gap {gap:.2e} > "
                    f"--baseline-tol {baseline_tol:g}), so their deltas cannot share a fit")
            notes.append(f"{row['variant']} seed {row['seed']}: the same run in {first_path} and "
                         f"{study['path']} (validation loss gap {gap:.1e})")
    runs.sort(key=lambda p: (p["mtp"], KIND_ORDER.get(p["kind"], 2), p["r"], p["variant"],
                             str(p["seed"])))
    return runs, notes


def combine(paths: list, baseline_tol: float = 1e-6) -> dict:
    """The combined report: runs, per-variant table, fits vs log2(r), window, notes."""
    sys.path.insert(0, HERE)
    import study_report

    studies = [_load(p) for p in paths]
    runs, notes = combine_runs(studies, baseline_tol)
    study_report.fill_paired_token_ratio(runs)
    windows = sorted({s.get("window") for s in studies})
    table = study_report.aggregate(runs)
    notes = [f"combined from {', '.join(s['path'] for s in studies)}"] + notes
    if len(windows) > 1:
        notes.append(f"the studies smoothed training losses over different windows {windows}")
    return dict(runs=runs, variants=table, fits=study_report.fits(runs, table),
                window=windows[0], notes=notes)


def write(report: dict, output: str, figures=None, prefix: str = "", command: str = "",
          controls=()) -> list:
    sys.path.insert(0, HERE)
    import study_report

    paths = []
    if figures:
        os.makedirs(figures, exist_ok=True)
        if report["fits"]:
            paths.append(study_report.plot_delta_vs_log2r(
                report, os.path.join(figures, f"{prefix}delta_vs_log2r.png")))
        paths.append(study_report.plot_paired_deltas(
            study_report.control_rows(report, controls),
            os.path.join(figures, f"{prefix}paired_deltas.png")))
    lines = study_report.markdown(report, command, "combined")
    lines[0] = "# Token-efficiency studies, combined (benchmarks/study_combine.py)"
    if paths:
        lines += ["", "Figures: " + ", ".join(f"`{os.path.relpath(p)}`" for p in paths)]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(output + ".json", "w") as handle:
        json.dump(dict(report, figures=[os.path.relpath(p) for p in paths]), handle, indent=2)
    print("\n".join(lines), flush=True)
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="results.json files (or study directories)")
    parser.add_argument("--output", required=True, help="path stem of the .md and .json written")
    parser.add_argument("--figures", default=None, help="directory of the PNGs (default: none)")
    parser.add_argument("--figure-prefix", default="combined_")
    parser.add_argument("--baseline-tol", type=float, default=1e-6,
                        help="largest validation-loss gap between one baseline run's copies")
    parser.add_argument("--controls-from", nargs="+", default=[], metavar="STUDY",
                        help="other studies (results.json files or study dirs), not combined: "
                             "their paired deltas only join paired_deltas.png, tagged by name")
    args = parser.parse_args(argv)
    if len(args.studies) < 2:
        parser.error("give at least two studies to combine")
    try:
        report = combine(args.studies, args.baseline_tol)
    except CombineError as exc:
        raise SystemExit(f"study_combine: {exc}") from None
    write(report, args.output, args.figures, args.figure_prefix,
          "python benchmarks/study_combine.py " + " ".join(argv or sys.argv[1:]),
          args.controls_from)
    return report


if __name__ == "__main__":
    main()
