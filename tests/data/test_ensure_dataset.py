"""``ensure_dataset`` reuses a built dataset only when its vocab is the one asked for."""

import pytest

from nemo_vwn.data.cli import ensure_dataset
from nemo_vwn.data.errors import DataError


def test_ensure_dataset_reuses_a_matching_dataset_and_names_a_wrong_vocab(small_dataset):
    manifest, _ = small_dataset
    assert ensure_dataset(manifest.output_dir) == manifest.output_dir
    assert ensure_dataset(manifest.output_dir, vocab_size=manifest.vocab_size) \
        == manifest.output_dir
    with pytest.raises(DataError, match=f"vocab_size {manifest.vocab_size}, not the requested 258"):
        ensure_dataset(manifest.output_dir, vocab_size=258)
