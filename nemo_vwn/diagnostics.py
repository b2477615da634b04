"""What the wide state holds and how the GHCs use it (issue "Evidence, round 2", item 2).

For every GHC of a VWN model, on the wide state H [s, b, n, d] it reads (docs/method.md §3-4):

* ``extra_slot_energy``: the share of sum ||H_j||^2 in the slots j >= m, i.e. outside the m slots
  that the static init reads (0 would mean the extra width carries nothing);
* ``effective_rank`` of H as a [tokens, n*d] matrix (centred over tokens; exp of the entropy of
  the normalised squared singular values, Roy & Vetterli 2007), next to ``backbone_rank``, the same
  of the first m slots [tokens, m*d], and ``max_rank`` = min(tokens, n*d): a factorized embedding
  (a width-D table times Linear(D, D')) starts with rank <= D whatever r is;
* ``read_from_extra``: the share of sum |A_read| (over tokens, slots, backbone rows) on slots
  j >= m, how much the read takes from the extra slots (0 at the static init);
* ``write_to_extra``: the share of sum |B| on slots j >= m, how much the write puts into them
  ((n - m) / n at the static init, where every slot gets one backbone row).

``probe_wide_state(model, forward)`` runs ``forward()`` once with every GHC's read observed (no
gradients) and returns one dict per GHC, in call order.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(entropy of sigma_i^2 / sum sigma^2) of ``matrix`` [rows, cols] centred over rows."""
    centred = matrix.double() - matrix.double().mean(dim=0, keepdim=True)
    sigma2 = torch.linalg.svdvals(centred) ** 2
    total = sigma2.sum()
    if total <= 0:
        return 0.0
    p = sigma2[sigma2 > 0] / total
    return math.exp(-(p * p.log()).sum().item())


def ghc_usage(ghc, H: torch.Tensor) -> dict:
    """The statistics of the module docstring for one GHC reading H [s, b, n, d]."""
    n, m = ghc.n, ghc.m
    alpha, beta = ghc.coefficients(H)  # static [n, m+n] / [m, n]; dynamic [s, b, ...]
    read = alpha[..., :m].abs()  # [..., n, m]: A_read, slot j -> backbone row i
    read_per_slot = read.reshape(-1, n, m).sum(dim=(0, 2))  # [n]
    write_per_slot = beta.abs().reshape(-1, m, n).sum(dim=(0, 1))  # [n]
    energy = H.double().pow(2).sum(dim=-1).reshape(-1, n).sum(dim=0)  # [n]
    tokens = H.shape[0] * H.shape[1]
    flat = H.reshape(tokens, n * ghc.d)
    return {
        "n": n, "m": m, "tokens": tokens,
        "extra_slot_energy": (energy[m:].sum() / energy.sum()).item(),
        "effective_rank": effective_rank(flat),
        "backbone_rank": effective_rank(flat[:, : m * ghc.d]),
        "max_rank": min(tokens, n * ghc.d),
        "read_from_extra": (read_per_slot[m:].sum() / read_per_slot.sum()).item(),
        "write_to_extra": (write_per_slot[m:].sum() / write_per_slot.sum()).item(),
    }


def probe_wide_state(model: torch.nn.Module, forward: Callable[[], object]) -> list:
    """One ``ghc_usage`` dict per GHC read during ``forward()`` (with ``name``: the module's
    name in ``model``), in call order; the model's outputs are discarded."""
    from nemo_vwn.ghc import GHC

    found = []
    ghcs = [(name, module) for name, module in model.named_modules() if isinstance(module, GHC)]
    if not ghcs:
        raise ValueError("probe_wide_state: the model has no GHC module (not a VWN model)")
    for name, module in ghcs:
        def observed(hidden_states, _module=module, _name=name, _read=module.read):
            s, b, _ = hidden_states.shape
            H = hidden_states.view(s, b, _module.n, _module.d)  # [s, b, n, d]
            found.append(dict(name=_name, **ghc_usage(_module, H)))
            return _read(hidden_states)

        module.read = observed
    try:
        with torch.no_grad():
            forward()
    finally:
        for _, module in ghcs:
            del module.read  # back to the class's method
    return found
