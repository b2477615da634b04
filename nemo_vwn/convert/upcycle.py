"""Upcycling: a trained standard GPT / GPT-MoE into a VWN model computing the same function.

Why it works (vwn-method.md sections 2-3): at the static init, GHC reads slots 0..m-1 (A_read =
[I_m; 0]), carries every slot (A_carry = I_n) and writes each backbone segment i into every slot
j = i (mod m); DGHC adds nothing at init (W_A = W_B = 0). So slots 0..m-1 of the wide state evolve
exactly like the baseline's residual stream whatever the other slots hold, and a collapse that
reads slots 0..m-1 reproduces the baseline's final hidden state.

What ``upcycle_weights`` sets in the VWN model (all other weights are the baseline's, by name):
    embedding (wide)        slots 0..m-1 = the baseline table; slots m..n-1 per ``extra_slots``
    embedding (factorized)  table = the baseline table; up-projection = [I_D ; extra rows]
    GHC                     the method's init (already so in a freshly built VWN model)
    collapse                W_reduce = [I_D | 0] (``vwn_collapse_init="identity"``): with
                            "linear" the upcycled model is bit-identical to the baseline; with
                            "norm_linear" (gain 1) it differs by a factor 1 + O(eps / mean(h^2)),
                            negligible at a trained model's residual magnitudes
    LM head                 the baseline's (a tied baseline's embedding table is copied into it)

[choice] ``extra_slots`` (the new capacity): "random" = Megatron's embedding init (default: the
slots start distinct so DGHC can use them), "copy" = slot j repeats segment j mod m, "zero".
"""

from __future__ import annotations

from typing import Optional

import torch

EXTRA_SLOT_CHOICES = ("random", "copy", "zero")


class UpcycleError(ValueError):
    """The baseline and the VWN model do not fit together (names, shapes, VWN settings)."""


def _vwn_settings_ok(config) -> None:
    if config.vwn_embedding == "factorized" and config.vwn_embedding_up_act != "none":
        raise UpcycleError(
            "upcycling needs vwn_embedding_up_act='none' (an identity up-projection reproduces "
            f"the baseline's embedding only without an activation); got "
            f"{config.vwn_embedding_up_act!r}")
    if config.vwn_collapse == "none":
        return
    if config.vwn_collapse_init != "identity":
        raise UpcycleError(
            "upcycling needs vwn_collapse_init='identity' (W_reduce = [I_D | 0] reads slots "
            f"0..m-1); got {config.vwn_collapse_init!r}"
        )


@torch.no_grad()
def upcycle_weights(baseline: torch.nn.Module, vwn: torch.nn.Module,
                    extra_slots: str = "random",
                    generator: Optional[torch.Generator] = None) -> dict:
    """Copy a baseline model's weights into a freshly built VWN model of the same backbone.

    Both models must have the same parallel layout (this rank's shards are copied). Returns a
    report: {"copied": n, "vwn_only": [names], "extra_slots": choice}.
    """
    if extra_slots not in EXTRA_SLOT_CHOICES:
        raise UpcycleError(f"extra_slots={extra_slots!r} is not one of {list(EXTRA_SLOT_CHOICES)}")
    config = vwn.config
    _vwn_settings_ok(config)
    base_params = dict(baseline.named_parameters())
    vwn_params = dict(vwn.named_parameters())
    d_model, m = config.hidden_size, config.virtual_width_m
    copied, vwn_only = 0, []
    for name, param in vwn_params.items():
        if name == "embedding.word_embeddings.weight" and config.vwn_embedding == "wide":
            _upcycle_wide_table(param, base_params[name], config, extra_slots, generator)
        elif name in base_params:
            source = base_params[name]
            if source.shape != param.shape:
                raise UpcycleError(
                    f"{name}: baseline shape {tuple(source.shape)} != VWN shape "
                    f"{tuple(param.shape)} (the backbones differ: hidden size, layers, experts?)"
                )
            param.copy_(source)
        elif name == "output_layer.weight" and "embedding.word_embeddings.weight" in base_params:
            param.copy_(base_params["embedding.word_embeddings.weight"])  # the baseline was tied
        elif name == "embedding.up_proj_weight":
            _upcycle_up_projection(param, config, extra_slots, generator)
            vwn_only.append(name)
            continue
        else:
            vwn_only.append(name)
            continue
        copied += 1
    missing = sorted(set(base_params) - set(vwn_params) - {"output_layer.weight"})
    if missing:
        raise UpcycleError(f"baseline parameters with no place in the VWN model: {missing[:8]}")
    _reset_vwn_only(vwn)
    return {"copied": copied, "vwn_only": sorted(vwn_only), "extra_slots": extra_slots,
            "backbone_width": d_model, "slots_read": m}


def _fill_extra(target: torch.Tensor, template: torch.Tensor, config, extra_slots: str,
                generator) -> None:
    """target: [rows, (n-m)*d] new slots; template: [rows, m*d] the baseline's segments."""
    if extra_slots == "zero":
        target.zero_()
    elif extra_slots == "copy":
        d, m = config.ghc_segment_size, config.virtual_width_m
        for j in range(target.shape[1] // d):
            segment = (m + j) % m
            target[:, j * d:(j + 1) * d].copy_(template[:, segment * d:(segment + 1) * d])
    else:
        values = torch.empty(target.shape, dtype=torch.float32)
        if generator is not None:
            values.normal_(0.0, config.init_method_std, generator=generator)
        else:
            config.embedding_init_method(values)
        target.copy_(values)


def _upcycle_wide_table(param, base_table, config, extra_slots, generator) -> None:
    d_model = config.hidden_size
    if param.shape[0] != base_table.shape[0] or base_table.shape[1] != d_model:
        raise UpcycleError(
            f"embedding: baseline table {tuple(base_table.shape)} does not fit the VWN table "
            f"{tuple(param.shape)} (vocab or hidden size differ)"
        )
    param[:, :d_model].copy_(base_table)
    _fill_extra(param[:, d_model:], base_table, config, extra_slots, generator)


def _upcycle_up_projection(param, config, extra_slots, generator) -> None:
    # up_proj: [D', D]; rows 0..D-1 = I_D so slots 0..m-1 = the baseline embedding
    d_model = config.hidden_size
    param[:d_model].copy_(torch.eye(d_model))
    rows = param[d_model:].t()  # [D, D'-D]: fill as "new slots" of the identity's columns
    _fill_extra(rows, torch.eye(d_model), config, extra_slots, generator)


def _reset_vwn_only(vwn) -> None:
    """GHC at the method's init, the collapse at [I_D | 0] (already so when freshly built)."""
    from nemo_vwn.collapse import VWNCollapse
    from nemo_vwn.ghc import GHC

    for module in vwn.modules():
        if isinstance(module, (GHC, VWNCollapse)):
            module.reset_parameters()
