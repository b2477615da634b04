"""The one verification every conversion runs: compare logits, report the max difference, fail.

A conversion (upcycle, reshard, export-hf, import-hf, upcycle from HF) computes the logits of a
fixed probe batch with the model it started from and with the model it produced, and calls
``verify_logits``: it returns the max |Δlogit| (over the main head and every MTP depth) for the
report, or raises ``VerificationError`` naming both sides, the difference and the tolerance. The
conversions call it inside ``atomic_output``, so a failed verification leaves no output behind.

Logits are a tensor [b, s, V] or a pair (main [b, s, V], [MTP depth logits [b, s, V] ...]).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from nemo_vwn.convert.checkpoint import CheckpointError

Logits = Union[torch.Tensor, tuple]


class VerificationError(CheckpointError):
    """The converted model does not compute the function it was converted from."""


def _heads(logits: Logits) -> Sequence[torch.Tensor]:
    if isinstance(logits, torch.Tensor):
        return [logits]
    main, depths = logits
    return [main, *depths]


def max_logit_diff(reference: Logits, other: Logits, relative: bool = False) -> float:
    """Max |Δ| over the main and every MTP depth's logits; ``relative``: each head's difference
    divided by max(1, max |reference logit|). ``inf`` for a shape or depth mismatch and for any
    NaN/inf (which ``max()`` would otherwise drop)."""
    ref_heads, heads = _heads(reference), _heads(other)
    if len(ref_heads) != len(heads):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref_heads, heads):
        if a.shape != b.shape:
            return float("inf")
        a, b = a.float(), b.float()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            return float("inf")
        scale = max(1.0, a.abs().max().item()) if relative else 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def compare_logits(reference: Logits, other: Logits) -> float:
    """``max_logit_diff`` relative to max(1, max |logit|) (the HF conversions' measure)."""
    return max_logit_diff(reference, other, relative=True)


def verify_logits(reference: Logits, other: Logits, tolerance: float, *, relative: bool = False,
                  subject: str = "the converted model", against: str = "the source") -> float:
    """The max logit difference of ``other`` (``subject``) from ``reference`` (``against``);
    raises ``VerificationError`` unless it is <= ``tolerance``."""
    diff = max_logit_diff(reference, other, relative=relative)
    if not diff <= tolerance:
        kind = "relative; " if relative else ""
        raise VerificationError(
            f"verification failed: the logits of {subject} differ from those of {against} by "
            f"{diff:.3g} ({kind}tolerance {tolerance:g}); no output written")
    return diff
