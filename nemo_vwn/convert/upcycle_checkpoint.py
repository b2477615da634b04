"""``nemo-vwn convert upcycle``: a baseline Megatron-Bridge checkpoint -> a VWN checkpoint.

The baseline's run config gives the provider (its own class, e.g. an OLMoE provider);
``nemo_vwn.bridge.to_vwn_provider`` makes its VWN variant with the same backbone
(``build_vwn_model``),
``nemo_vwn.convert.upcycle.upcycle_weights`` maps the weights (see there for the choices), the
result is verified (``nemo_vwn.convert.verify``) — the logits of a probe batch must equal the
baseline's (bit for bit with the linear collapse, within ``NORM_LINEAR_TOLERANCE`` with
norm_linear) — and saved atomically with Bridge's ``save_megatron_model`` (weights + run config;
no optimizer state). Continue pretraining from it with ``checkpoint.pretrained_checkpoint=<output>``
and the VWN fields it reports. Starting from a Hugging Face model instead: ``nemo_vwn.convert.
upcycle_hf``.
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_vwn.convert.checkpoint import CheckpointError, atomic_output, resolve_checkpoint
from nemo_vwn.convert.models import clear_training_hooks, init_layout, load_models, probe_logits
from nemo_vwn.convert.verify import verify_logits

SINGLE_PROCESS = dict(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                      expert_model_parallel_size=1, context_parallel_size=1,
                      virtual_pipeline_model_parallel_size=None, sequence_parallel=False,
                      num_layers_in_first_pipeline_stage=None,
                      num_layers_in_last_pipeline_stage=None, pipeline_model_parallel_layout=None)
PROBE_TOKENS = 32
NORM_LINEAR_TOLERANCE = 1e-4
"""norm_linear at gain 1 differs from the baseline by a factor 1 + O(eps / mean(h^2)) (see
nemo_vwn.convert.upcycle); the linear collapse is exact (tolerance 0)."""


def upcycle_tolerance(collapse: str) -> float:
    """Max |Δlogit| an upcycled model may differ from its baseline by."""
    return 0.0 if collapse == "linear" else NORM_LINEAR_TOLERANCE


def upcycle_rank(rank: int, world_size: int, source: str, output: str, n: int, m: int,
                 dynamic: bool, collapse: str, embedding: str, extra_slots: str,
                 seed: int = 1234) -> dict:
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()
    from nemo_vwn.convert.checkpoint import load_provider
    from nemo_vwn.convert.upcycle import upcycle_weights

    init_layout(rank, world_size, 1, 1, 1)
    baseline = load_models(source, 1, 1, 1)
    if hasattr(baseline[0].config, "virtual_width_n"):
        raise CheckpointError(f"{source} is already a VWN checkpoint "
                              f"(virtual_width_n={baseline[0].config.virtual_width_n})")
    provider = load_provider(source)
    for field, value in SINGLE_PROCESS.items():
        if hasattr(provider, field):
            setattr(provider, field, value)
    vwn = [build_vwn_model(provider, n, m, dynamic, collapse, embedding)]
    report = upcycle_weights(baseline[0], vwn[0], extra_slots=extra_slots,
                             generator=torch.Generator().manual_seed(seed))
    diff = verify_logits(probe_logits(baseline, PROBE_TOKENS), probe_logits(vwn, PROBE_TOKENS),
                         upcycle_tolerance(collapse), subject="the upcycled model",
                         against="the baseline")
    from megatron.bridge.training.model_load_save import save_megatron_model

    save_megatron_model(vwn, output)
    config = vwn[0].config
    report.update(logits_max_abs_diff=diff, virtual_width_n=n, virtual_width_m=m,
                  ghc_dynamic=dynamic, vwn_collapse=collapse, vwn_collapse_init="identity",
                  vwn_embedding=embedding, provider=type(config).__name__)
    return report


def build_vwn_model(provider, n: int, m: int, dynamic: bool, collapse: str, embedding: str):
    """The VWN variant of a baseline provider (its own class with the VWN fields, identity
    collapse init), built fresh on this rank in eval mode; ``provider`` is left unchanged."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemo_vwn.bridge.apply import to_vwn_provider

    provider.perform_initialization = True
    if not torch.cuda.is_available():
        provider.use_cpu_initialization = True
    vwn_provider = to_vwn_provider(provider, n, m, dynamic=dynamic, vwn_collapse=collapse,
                                   vwn_collapse_init="identity", vwn_embedding=embedding)
    vwn_provider.finalize()
    vwn_provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    model = vwn_provider.provide()
    model.eval()
    clear_training_hooks(model.config)
    return model


def upcycle_checkpoint(checkpoint: str, output: str, n: int, m: int, dynamic: bool = True,
                       collapse: str = "linear", embedding: str = "wide",
                       extra_slots: str = "random", overwrite: bool = False,
                       seed: Optional[int] = 1234) -> dict:
    """Upcycle ``checkpoint`` (a baseline) into a VWN checkpoint at ``output``; returns a report."""
    from nemo_vwn.distributed import run_distributed

    source = resolve_checkpoint(checkpoint)
    if n < m:
        raise CheckpointError(f"virtual_width_n={n} must be >= virtual_width_m={m}")
    with atomic_output(output, overwrite=overwrite) as tmp:
        report = run_distributed(
            "nemo_vwn.convert.upcycle_checkpoint:upcycle_rank", 1,
            kwargs=dict(source=source, output=tmp, n=n, m=m, dynamic=dynamic, collapse=collapse,
                        embedding=embedding, extra_slots=extra_slots, seed=seed),
            sys_path=[])[0]
    report["output"] = output
    return report
