"""Checkpoint conversion: upcycling a baseline into VWN, resharding, Hugging Face export/import."""
