"""Megatron-Bridge configs for a dataset built by ``build_dataset``.

How Bridge loads the tokenizer offline: ``TokenizerConfig(tokenizer_type="HuggingFaceTokenizer",
tokenizer_model=<absolute tokenizer dir>)``. Bridge's ``build_tokenizer`` passes it to
megatron-core's ``build_tokenizer``, which creates ``HuggingFaceTokenizer`` ->
``transformers.AutoTokenizer.from_pretrained(<dir>)``: a local directory, so nothing is fetched
(Bridge's only hub call, ``snapshot_download``, happens when ``hf_tokenizer_kwargs["revision"]``
is set *and* the path is not local). Megatron's ``tokenizer.eod`` is the HF ``eos_token``
(``<|endoftext|>``) and ``tokenizer.pad`` the separate ``<|pad|>``.

Import this module only after ``nemo_vwn.runtime.prepare_runtime()`` on a machine without
Transformer Engine (it imports ``megatron.bridge``).
"""

from __future__ import annotations

import os
from typing import Union

from nemo_vwn.data.build import DatasetManifest, load_manifest
from nemo_vwn.data.corpus import PathLike
from nemo_vwn.data.errors import DataError

DEFAULT_SPLIT = "90,5,5"
"""Train/valid/test split by documents; small corpora need a few percent for validation."""

ManifestLike = Union[DatasetManifest, PathLike]


def _manifest(data: ManifestLike) -> DatasetManifest:
    return data if isinstance(data, DatasetManifest) else load_manifest(data)


def parse_split_weights(split: str) -> list:
    """The three split weights of a megatron ``split`` string ("90,5,5" -> [90.0, 5.0, 5.0])."""
    import re

    weights = [float(w) for w in re.findall(r"[.0-9]+", split)]
    if not weights or len(weights) > 3 or sum(weights) <= 0:
        raise DataError(f"split must be up to three non-negative weights like \"90,5,5\", "
                        f"got {split!r}")
    return weights + [0.0] * (3 - len(weights))


def split_document_counts(num_docs: int, split: str) -> list:
    """Documents per train/valid/test split, computed as megatron-core's dataset builder does.

    A split with a non-zero weight but no document makes megatron-core's ``GPTDataset`` loop
    forever while it looks for enough tokens, so ``dataset_config`` rejects such splits.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [0 if bounds is None else
            int(round(bounds[1] * num_docs)) - int(round(bounds[0] * num_docs))
            for bounds in matrix]


def check_split(num_docs: int, split: str) -> None:
    """Raise ``DataError`` when a split with non-zero weight would receive no document."""
    weights = parse_split_weights(split)
    counts = split_document_counts(num_docs, split)
    names = ("train", "valid", "test")
    empty = [names[i] for i in range(3) if weights[i] > 0 and counts[i] == 0]
    if empty:
        raise DataError(
            f"split {split!r} gives the {'/'.join(empty)} split no document of the {num_docs} in "
            f"this dataset (documents per split: {counts}); use larger fractions, e.g. "
            f"\"80,10,10\", a weight of 0 to drop a split, or build from more documents")


def tokenizer_config(data: ManifestLike, **overrides):
    """Bridge ``TokenizerConfig`` that loads the dataset's tokenizer directory offline.

    ``use_tokenizer_vocab_size=True`` (from-scratch pretraining): Bridge sets the model's vocab to
    the tokenizer's (padded by the model provider). ``overrides`` go to ``TokenizerConfig``.
    """
    from megatron.bridge.training.tokenizers.config import TokenizerConfig

    manifest = _manifest(data)
    fields = dict(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=manifest.tokenizer_dir,
                  use_tokenizer_vocab_size=True)
    fields.update(overrides)
    return TokenizerConfig(**fields)


def dataset_config(data: ManifestLike, seq_length: int, *, split: str = DEFAULT_SPLIT,
                   seed: int = 1234, **overrides):
    """Bridge ``GPTDatasetConfig`` reading the dataset's prefix (not finalized; Bridge does that).

    Raises ``DataError`` when ``split`` leaves a weighted split without documents (see
    ``check_split``).

    The sample-index cache goes to ``<dataset dir>/cache`` unless ``path_to_cache`` is given, so
    rebuilding the dataset with ``--overwrite`` also drops stale caches. ``overrides`` go to
    ``GPTDatasetConfig`` (e.g. ``num_workers=0`` on CPU, ``eod_mask_loss=True``).
    """
    from megatron.bridge.training.config import GPTDatasetConfig

    manifest = _manifest(data)
    check_split(manifest.num_docs, split)
    fields = dict(
        random_seed=seed,
        seq_length=seq_length,
        blend=([manifest.prefix], None),
        blend_per_split=None,
        split=split,
        path_to_cache=os.path.join(manifest.output_dir, "cache"),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        dataloader_type="single",
    )
    fields.update(overrides)
    return GPTDatasetConfig(**fields)


_KEPT_DATASET_FIELDS = ("random_seed", "reset_position_ids", "reset_attention_mask",
                        "eod_mask_loss", "dataloader_type", "num_workers", "data_sharding",
                        "pin_memory", "persistent_workers", "drop_last")


def use_dataset(cfg, data: ManifestLike, *, split: str = DEFAULT_SPLIT):
    """Point a Bridge ``ConfigContainer`` (e.g. a mock-data recipe) at a built dataset, in place.

    Replaces ``cfg.tokenizer`` and ``cfg.dataset``; keeps the old dataset's sequence length,
    seed and loader settings. Returns ``cfg``.
    """
    old = cfg.dataset
    kept = {name: getattr(old, name) for name in _KEPT_DATASET_FIELDS if hasattr(old, name)}
    seed = kept.pop("random_seed", 1234)
    cfg.tokenizer = tokenizer_config(data)
    cfg.dataset = dataset_config(data, old.seq_length, split=split, seed=seed, **kept)
    return cfg
