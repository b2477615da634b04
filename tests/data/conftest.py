"""Fixtures for the data-step tests: one small dataset built from a slice of the default corpus.

transformers must never reach the hub here: the offline switches are set before it is imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

# A slice of the standard library: enough real text for a 1024-token BPE, fast on 2 cores.
SMALL_MAX_DOCS = 16
SMALL_MAX_CHARS = 150_000
SMALL_VOCAB = 1024


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """(manifest, corpus) of a dataset built from the first stdlib files."""
    from nemo_vwn.data import Corpus, build_dataset

    corpus = Corpus(max_docs=SMALL_MAX_DOCS, max_chars=SMALL_MAX_CHARS)
    out = tmp_path_factory.mktemp("data") / "stdlib_small"
    manifest = build_dataset(out, corpus, vocab_size=SMALL_VOCAB)
    return manifest, corpus


@pytest.fixture
def write_jsonl():
    """``write(path, records)``: one record per line; dicts as JSON, strings written as-is."""
    import json

    def write(path, records):
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(record if isinstance(record, str) else json.dumps(record))
                handle.write("\n")
        return path

    return write
