"""What the wide state of trained VWN checkpoints holds, and how their GHCs use it (issue
"Evidence, round 2", item 2: why a factorized embedding loses). Not CI.

    .venv/bin/python benchmarks/wide_state_probe.py --data runs/study/data \
        --checkpoint runs/study/vwn_r4/checkpoints --checkpoint runs/study_fact/vwn_r4/checkpoints \
        --init --output runs/probe.json

For each checkpoint (and, with ``--init``, the same model freshly initialised), one forward over
the first ``--samples`` validation samples; per GHC (``nemo_vwn.diagnostics``): the extra slots'
share of the state's energy, its effective rank over tokens next to the backbone slots' and the
maximum, and how much the read takes from / the write puts into the extra slots. Prints a
markdown table (layers averaged per position: the first GHC, the attention and the MLP GHCs) and
writes every number to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics


def probe_checkpoint(path: str, data: str, samples: int, seq: int, fresh: bool) -> list:
    import torch

    from nemo_vwn.convert.checkpoint import load_provider, resolve_checkpoint
    from nemo_vwn.convert.models import (
        apply_overrides,
        build_models,
        causal_mask,
        load_vwn_checkpoint,
        runtime_overrides,
    )
    from nemo_vwn.diagnostics import probe_wide_state
    from nemo_vwn.evaluate import validation_samples

    iteration_dir = resolve_checkpoint(path)
    if fresh:
        provider = load_provider(iteration_dir)
        # conversion builds skip the init (weights are loaded next); here the init is the point
        apply_overrides(provider, dict(runtime_overrides(provider), perform_initialization=True))
        torch.manual_seed(0)
        (model,) = build_models(provider)
    else:
        _, (model,) = load_vwn_checkpoint(iteration_dir)
    batch = validation_samples(data, seq, samples)
    tokens = torch.stack([torch.as_tensor(s["tokens"]) for s in batch]).long()  # [b, s]
    positions = torch.arange(seq)[None].expand_as(tokens)
    return probe_wide_state(model, lambda: model(tokens, positions, causal_mask(seq)))


def summarize(sites: list) -> dict:
    """Means over layers: the first GHC (the embedding's state), attention and MLP GHCs."""
    groups = {"first GHC": sites[:1],
              "attention GHCs": [s for s in sites if s["name"].endswith("self_attention_ghc")],
              "MLP GHCs": [s for s in sites if s["name"].endswith("mlp_ghc")]}
    keys = ("extra_slot_energy", "effective_rank", "backbone_rank", "max_rank",
            "read_from_extra", "write_to_extra")
    return {group: {k: statistics.mean(s[k] for s in items) for k in keys}
            for group, items in groups.items() if items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--data", required=True, help="a nemo-vwn data dataset")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--init", action="store_true",
                        help="also probe each checkpoint's model freshly initialised")
    parser.add_argument("--output", default=None, help="JSON with every GHC's numbers")
    args = parser.parse_args()

    from nemo_vwn.convert.models import single_process_megatron
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    report = []
    with single_process_megatron():
        for path in args.checkpoint:
            for fresh in ((False, True) if args.init else (False,)):
                sites = probe_checkpoint(path, args.data, args.samples, args.seq, fresh)
                report.append(dict(checkpoint=path, state="init" if fresh else "trained",
                                   sites=sites, summary=summarize(sites)))
    print("| checkpoint | state | GHCs | extra-slot energy | eff. rank (wide / backbone / max) "
          "| read from extra | write to extra |")
    print("|---|---|---|---|---|---|---|")
    for entry in report:
        for group, v in entry["summary"].items():
            print(f"| {entry['checkpoint']} | {entry['state']} | {group} | "
                  f"{v['extra_slot_energy']:.3f} | {v['effective_rank']:.1f} / "
                  f"{v['backbone_rank']:.1f} / {v['max_rank']:.0f} | "
                  f"{v['read_from_extra']:.3f} | {v['write_to_extra']:.3f} |")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
