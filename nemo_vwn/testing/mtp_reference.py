"""Per-token next-token and MTP losses of a VWNGPTModel, written from docs/method.md §5.

The reference reuses the model's embedding, decoder layers, collapse + final norm and LM head; the
MTP-specific parts (shifting tokens and labels, the two RMSNorms, the block-wise Linear(2d -> d)
over [hidden_slot ; embedding_slot] pairs, the masking of positions past the sequence end) are its
own. Tests combine the per-token terms as the model is supposed to.
"""

from __future__ import annotations

import torch


def shift_left(t: torch.Tensor) -> torch.Tensor:
    """Tokens t+1 at position t; the vacated last position is 0 (and masked out)."""
    out = torch.zeros_like(t)
    out[:, :-1] = t[:, 1:]
    return out


def _rms(x, weight, eps):
    return x / torch.sqrt((x.float() ** 2).mean(-1, keepdim=True) + eps) * weight


def mtp_reference_terms(model, batch, mask):
    """(main [b, s], [(ce_j [b, s], valid_j [b, s]) for depth j = 1..k]) per-token CE, unreduced."""
    config = model.config
    n, d, k = config.virtual_width_n, config.ghc_segment_size, config.mtp_num_layers or 0
    input_ids, position_ids, labels = batch
    s = input_ids.shape[1]
    rotary = model.rotary_pos_emb(s)

    def head(wide):
        logits = model.output_layer(model.decoder.final_layernorm(wide))[0]  # [s, b, V]
        return logits.float().transpose(0, 1)  # [b, s, V]

    def ce(logits, target):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(),
                                                 reduction="none").view(target.shape)

    wide = model.embedding(input_ids, position_ids)
    for layer in model.decoder.layers:
        wide, _ = layer(hidden_states=wide, attention_mask=mask, rotary_pos_emb=rotary)
    main = ce(head(wide), labels)
    terms = []
    hidden, ids, pos, lab = wide, input_ids, position_ids, labels
    for j in range(k):
        ids, pos, lab = shift_left(ids), shift_left(pos), shift_left(lab)
        valid = (torch.arange(s) < s - 1 - j).to(torch.float32).expand_as(lab)
        depth = model.mtp.layers[j]
        hn = _rms(hidden, depth.hnorm.weight, config.layernorm_epsilon)
        en = _rms(model.embedding(ids, pos), depth.enorm.weight, config.layernorm_epsilon)
        W = depth.block_mixer.weight  # [d, 2d], one Linear shared by the n slot pairs
        mixed = torch.cat([
            torch.cat([hn[..., i * d:(i + 1) * d], en[..., i * d:(i + 1) * d]], dim=-1) @ W.T
            for i in range(n)
        ], dim=-1)
        hidden, _ = depth.mtp_model_layer(hidden_states=mixed, attention_mask=mask,
                                          rotary_pos_emb=rotary)
        terms.append((ce(head(hidden), lab), valid))
    return main, terms
