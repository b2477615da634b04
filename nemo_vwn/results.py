"""Loss curves of training runs, VWN vs baseline: merging records, tokens-to-reach, table, plot;
across seeds: mean / sd, the fit of the loss delta vs log2(r), loss curves with seed bands.

Input: the per-rank ``losses.rank<R>.json`` files ``ProgressRecorder`` writes and the ``run.json``
the pretrain command writes next to them (tokens per iteration, recipe, VWN fields).
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass
class RunCurve:
    name: str
    tokens_per_iteration: int
    iterations: list = field(default_factory=list)  # training iterations, ascending
    train_loss: list = field(default_factory=list)  # token-weighted mean loss per iteration
    eval_iterations: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> list:
        return [i * self.tokens_per_iteration for i in self.iterations]

    def final_train_loss(self, window: int) -> float:
        tail = self.train_loss[-window:]
        return sum(tail) / len(tail)


def _merge(records_by_rank: Sequence[dict], key: str):
    """{iteration: (loss sum, tokens)} over the ranks that hold distinct losses: last pipeline
    stage, tensor-parallel rank 0 (TP ranks see the same tokens), every data-parallel rank."""
    merged: dict[int, list] = {}
    for data in records_by_rank:
        layout = data.get("parallel", {})
        if not layout.get("pp_last", True) or layout.get("tp", 0) != 0:
            continue
        for iteration, loss_sum, tokens in data[key]:
            entry = merged.setdefault(int(iteration), [0.0, 0])
            entry[0] += loss_sum
            entry[1] += tokens
    return {i: (s, t) for i, (s, t) in sorted(merged.items()) if t > 0}


def load_run(run_dir: str, name: Optional[str] = None) -> RunCurve:
    """Read a run directory written by ``nemo-vwn pretrain`` (``run.json`` + ``records/``)."""
    with open(os.path.join(run_dir, "run.json")) as handle:
        meta = json.load(handle)
    files = sorted(glob.glob(os.path.join(run_dir, "records", "losses.rank*.json")))
    if not files:
        raise FileNotFoundError(f"no loss records under {run_dir}/records (did the run finish?)")
    data = [json.load(open(path)) for path in files]
    curve = RunCurve(name=name or meta.get("recipe", os.path.basename(run_dir)),
                     tokens_per_iteration=int(meta["tokens_per_iteration"]), meta=meta)
    for iteration, (loss_sum, tokens) in _merge(data, "train").items():
        curve.iterations.append(iteration)
        curve.train_loss.append(loss_sum / tokens)
    for iteration, (loss_sum, tokens) in _merge(data, "eval").items():
        curve.eval_iterations.append(iteration)
        curve.eval_loss.append(loss_sum / tokens)
    return curve


def smooth(values: Sequence[float], window: int) -> list:
    """Trailing moving average (the first points average what exists)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def tokens_to_reach(curve: RunCurve, target: float, window: int) -> Optional[int]:
    """Tokens after which the smoothed training loss first drops to ``target`` (None: never)."""
    for tokens, loss in zip(curve.tokens, smooth(curve.train_loss, window)):
        if loss <= target:
            return tokens
    return None


def compare(vwn: RunCurve, baseline: RunCurve, window: int = 10) -> dict:
    """Final losses, their difference, and the token efficiency of VWN vs its baseline twin.

    Token efficiency is judged on the smoothed training loss against the baseline's smoothed
    final value, the target. ``token_ratio`` = the baseline's tokens trained / the tokens VWN
    needs to first reach the target. A noisy baseline curve itself first reaches its own smoothed
    final value before its last step (1.18x early, averaged over the round-2 seeds), so that ratio
    flatters VWN; ``token_ratio_paired`` judges both curves by the same first crossing:
    tokens the baseline needs to first reach the target / tokens VWN needs."""
    base_final = smooth(baseline.train_loss, window)[-1]
    vwn_final = smooth(vwn.train_loss, window)[-1]
    reach = tokens_to_reach(vwn, base_final, window)
    base_reach = tokens_to_reach(baseline, base_final, window)  # never None: its last step
    base_tokens = baseline.tokens[-1]
    base_eval = baseline.eval_loss[-1] if baseline.eval_loss else None
    vwn_eval = vwn.eval_loss[-1] if vwn.eval_loss else None
    return {
        "baseline_final_train_loss": base_final,
        "vwn_final_train_loss": vwn_final,
        "delta_train_loss": vwn_final - base_final,
        "baseline_final_eval_loss": base_eval,
        "vwn_final_eval_loss": vwn_eval,
        "delta_eval_loss": (vwn_eval - base_eval) if None not in (vwn_eval, base_eval) else None,
        "baseline_tokens": base_tokens,
        "vwn_tokens_to_reach_baseline_final": reach,
        "baseline_tokens_to_reach_own_final": base_reach,
        "token_ratio": (base_tokens / reach) if reach else None,
        "token_ratio_paired": (base_reach / reach) if reach else None,
        "smoothing_window": window,
    }


@dataclass(frozen=True)
class SeedSpread:
    """What several seeds of one VWN recipe vs its baseline twin measured: the paired
    validation-loss delta's mean and sample sd, at ``iterations`` training iterations."""
    seeds: int
    mean_delta_eval: float
    sd_delta_eval: float
    iterations: int
    source: str


MEASURED_SPREAD = {
    # seeds 1234, 1, 2 of `nemo-vwn compare`'s recipe pair on the stdlib corpus, the current
    # collapse init; the runs, command and per-seed losses: docs/results.md section 1.6
    "tiny_vwn_moe_cpu": SeedSpread(3, -0.0681, 0.0367, 300, "docs/results.md section 1.6"),
}
"""recipe -> its measured seed spread (``noise_note``); add a recipe when it is measured."""


def noise_note(summary: dict, recipe: str, iterations: Optional[int] = None) -> str:
    """How much of one run's VWN-vs-baseline result may be noise: the recipe's measured seed
    spread (``MEASURED_SPREAD``) next to this run's validation delta, or that none is known."""
    spread = MEASURED_SPREAD.get(recipe)
    delta = summary.get("delta_eval_loss")
    if spread is None:
        return (f"noise: one seed, and the seed spread of {recipe} has not been measured: repeat "
                "with other rng.seed=... values (or benchmarks/token_efficiency.py --seeds 1 2 3) "
                "before reading the delta or the token ratio")
    text = (f"noise: one seed. Over {spread.seeds} seeds ({spread.source}, "
            f"{spread.iterations} iterations) this recipe's validation delta was "
            f"{spread.mean_delta_eval:+.3f} +- {spread.sd_delta_eval:.3f} (sd)")
    if delta is not None:
        k = abs(delta - spread.mean_delta_eval) / spread.sd_delta_eval
        text += (f"; this run's {delta:+.4f} is {k:.1f} sd from that mean, and one run cannot "
                 f"tell a delta within about {2 * spread.sd_delta_eval:.2f} (2 sd) from zero")
    if iterations is not None and iterations != spread.iterations:
        text += (f" (this run trained {iterations} iterations, the spread was measured at "
                 f"{spread.iterations})")
    return text + "; the token ratio was not measured per seed and is noisier than the delta"


def markdown_table(summary: dict, vwn_name: str, base_name: str) -> str:
    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    reach = summary["vwn_tokens_to_reach_baseline_final"]
    rows = [
        ("final train loss (smoothed)", fmt(summary["baseline_final_train_loss"]),
         fmt(summary["vwn_final_train_loss"])),
        ("final validation loss", fmt(summary["baseline_final_eval_loss"]),
         fmt(summary["vwn_final_eval_loss"])),
        ("tokens trained", f"{summary['baseline_tokens']:,}", f"{summary['baseline_tokens']:,}"),
        ("tokens to first reach the baseline's final train loss",
         f"{summary['baseline_tokens_to_reach_own_final']:,}",
         "not reached" if reach is None else f"{reach:,}"),
    ]
    lines = [f"| | {base_name} (baseline) | {vwn_name} (VWN) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    ratio, paired = summary["token_ratio"], summary["token_ratio_paired"]
    lines.append("")
    if summary.get("delta_eval_loss") is not None:
        lines.append(f"delta validation loss (VWN - baseline): {summary['delta_eval_loss']:+.4f}")
    lines.append(f"delta train loss (VWN - baseline): {summary['delta_train_loss']:+.4f}; "
                 + (f"token efficiency: VWN first reaches the baseline's final loss with "
                    f"{paired:.2f}x fewer tokens than the baseline first does ({ratio:.2f}x "
                    f"fewer than the baseline trained)" if ratio else
                    "VWN did not reach the baseline's final loss in this run"))
    return "\n".join(lines)


def plot(curves: Sequence[RunCurve], path: str, window: int = 10, title: str = "") -> str:
    """Loss vs tokens (smoothed training loss as lines, validation loss as markers) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for curve in curves:
        line, = ax.plot(curve.tokens, smooth(curve.train_loss, window),
                        label=f"{curve.name} train (smoothed {window})")
        if curve.eval_loss:
            ax.plot([i * curve.tokens_per_iteration for i in curve.eval_iterations],
                    curve.eval_loss, "o--", color=line.get_color(), markersize=4,
                    label=f"{curve.name} validation")
    ax.set_title(title or "loss vs tokens")
    return save_loss_figure(fig, ax, path, legend_fontsize=8)


def save_loss_figure(fig, ax, path: str, legend_fontsize: int) -> str:
    """Label the loss-vs-tokens axes, add grid and legend, write ``path`` (its folder made)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ several seeds of one variant
def mean_sd(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation with n - 1; None for a single value) of ``values``."""
    values = list(values)
    if not values:
        raise ValueError("mean_sd needs at least one value")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def fit_log2(points: Sequence[tuple], intercept: bool = True) -> dict:
    """Least squares ``delta = slope * log2(r) [+ intercept]`` over ``(r, delta)`` points.

    Without an intercept the line goes through (r = 1, delta = 0): VWN at r = 1 equals its
    baseline and the whole gain grows with log2(r). With one, ``intercept`` is the fitted delta at
    r = 1 (docs/method.md §7). ``r2`` is 1 - SS_res / SS_tot with SS_tot about the mean delta in
    both cases, so the two are comparable (it can be negative without an intercept).
    """
    xs = [math.log2(r) for r, _ in points]
    ys = [d for _, d in points]
    if len(xs) < 2 or len(set(xs)) < (2 if intercept else 1) or not any(xs):
        raise ValueError(f"fit_log2 needs at least two distinct r (and one r != 1), got "
                         f"{sorted({r for r, _ in points})}")
    my = sum(ys) / len(ys)
    if intercept:
        mx = sum(xs) / len(xs)
        slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
                 / sum((x - mx) ** 2 for x in xs))
        offset = my - slope * mx
    else:
        slope, offset = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs), 0.0
    ss_res = sum((y - (slope * x + offset)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "intercept": offset if intercept else None,
            "r2": 1 - ss_res / ss_tot if ss_tot else float("nan"), "points": len(xs)}


def plot_seed_bands(groups: dict, path: str, window: int = 10, title: str = "",
                    dpi: int = 100) -> str:
    """Loss vs tokens per variant over seeds -> PNG: the mean of the smoothed training losses as a
    line in a min-max band, the mean validation loss as markers. ``groups``: {name: [RunCurve]}
    (the seeds of one variant share tokens per iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=dpi)
    for name, curves in groups.items():
        length = min(len(c.train_loss) for c in curves)
        smoothed = [smooth(c.train_loss, window)[:length] for c in curves]
        tokens = curves[0].tokens[:length]
        mean = [sum(col) / len(col) for col in zip(*smoothed)]
        line, = ax.plot(tokens, mean, linewidth=1.2,
                        label=f"{name} train ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(tokens, [min(col) for col in zip(*smoothed)],
                            [max(col) for col in zip(*smoothed)], color=line.get_color(),
                            alpha=0.2, linewidth=0)
        evals = [c for c in curves if c.eval_loss]
        if evals:
            count = min(len(c.eval_loss) for c in evals)
            ax.plot([i * evals[0].tokens_per_iteration for i in evals[0].eval_iterations[:count]],
                    [sum(c.eval_loss[k] for c in evals) / len(evals) for k in range(count)],
                    "o--", color=line.get_color(), markersize=3, linewidth=0.8)
    ax.set_title((title or "loss vs tokens") + f" (train smoothed {window}; band: seed min-max; "
                 "o: validation)", fontsize=8)
    return save_loss_figure(fig, ax, path, legend_fontsize=7)
