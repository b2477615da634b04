"""Checkpoint conversion: upcycling a baseline (a Bridge checkpoint or an HF model) into VWN,
resharding, Hugging Face export/import.

Shared pieces: ``checkpoint`` (paths, atomic outputs), ``models`` (layout, build, load, logits),
``verify`` (the one logits check), ``hf_dir`` (HF directories). Conversions on top:
``upcycle_checkpoint``, ``upcycle_hf``, ``reshard``, ``hf`` (``upcycle`` maps the weights).
"""
