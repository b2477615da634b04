"""build_dataset: what Megatron reads back matches an independent re-tokenization; the tokenizer
round-trips real text; user corpora; every bad input fails cleanly without a half-written output."""

import json
from pathlib import Path

import numpy
import pytest

from nemo_vwn.data import (
    Corpus,
    CorpusError,
    DataError,
    OutputExistsError,
    build_dataset,
    load_manifest,
    stdlib_files,
)

EOD = "<|endoftext|>"


def _hf(manifest):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(manifest.tokenizer_dir)


def _read_back(manifest):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(manifest.prefix)
    return [numpy.array(dataset[i]) for i in range(len(dataset))]


def _expected_records(hf, documents):
    """Independent encoding: transformers' tokenizer on each document, then EOD."""
    return [hf(text, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
            for text in documents]


def test_counts_read_back_match_an_independent_tokenization(small_dataset):
    manifest, corpus = small_dataset
    documents = list(corpus)
    hf = _hf(manifest)
    expected = _expected_records(hf, documents)
    records = _read_back(manifest)
    assert manifest.num_docs == len(documents) == len(records) > 1
    assert manifest.num_tokens == sum(map(len, expected)) == sum(map(len, records))
    for want, got in zip(expected, records):
        assert got.tolist() == want
    assert manifest.corpus["num_chars"] == sum(map(len, documents))
    assert manifest.dtype == "uint16" and records[0].dtype == numpy.uint16


def test_manifest_file_round_trips_and_names_relative_paths(small_dataset):
    manifest, _ = small_dataset
    stored = json.loads((Path(manifest.output_dir) / "manifest.json").read_text())
    assert stored["prefix"] == "text_document" and stored["tokenizer_dir"] == "tokenizer"
    assert load_manifest(manifest.output_dir) == manifest
    assert manifest.corpus["kind"] == "python-stdlib"
    assert manifest.vocab_size == len(_hf(manifest)) <= 1024
    assert (manifest.eod_id, manifest.pad_id) == (0, 1)
    mode = Path(manifest.output_dir).stat().st_mode & 0o777
    # published like a plain mkdir, not with mkdtemp's 0700
    assert mode == Path(manifest.output_dir, "tokenizer").stat().st_mode & 0o777


def test_tokenizer_round_trips_real_text(small_dataset):
    manifest, corpus = small_dataset
    hf = _hf(manifest)
    assert hf.eos_token == EOD and hf.pad_token == "<|pad|>" and hf.bos_token is None
    held_out = (Path(stdlib_files()[0]).parent / "json" / "decoder.py").read_text("utf-8")
    samples = list(corpus)[:4] + [held_out, "naïve café ✓ 日本語 \t\r\n  end", "x" * 3]
    for text in samples:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf.decode(ids) == text
        assert hf.unk_token_id not in ids or hf.unk_token_id is None
    # BPE compresses real code: well under one token per character.
    ids = hf(held_out, add_special_tokens=False)["input_ids"]
    assert len(ids) < 0.6 * len(held_out)


def test_user_text_and_jsonl_corpus(tmp_path, write_jsonl):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 20, "utf-8")
    write_jsonl(src / "b.jsonl", [{"text": f"Record {i}: lorem ipsum dolor sit amet {i * i}."}
                                  for i in range(30)])
    out = tmp_path / "out"
    manifest = build_dataset(out, [src], vocab_size=300)
    documents = list(Corpus([src]))
    assert len(documents) == 31 == manifest.num_docs
    records = _read_back(manifest)
    assert [r.tolist() for r in records] == _expected_records(_hf(manifest), documents)
    assert manifest.corpus["kind"] == "paths" and manifest.corpus["files"] == 2


def test_literal_eod_text_is_not_an_eod(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"before {EOD} after"}, {"text": "two"}])
    manifest = build_dataset(tmp_path / "out", [path], vocab_size=300)
    records = _read_back(manifest)
    assert [int((r == manifest.eod_id).sum()) for r in records] == [1, 1]
    assert _hf(manifest).decode(records[0][:-1].tolist()) == f"before {EOD} after"


def test_build_is_deterministic(tmp_path):
    first = build_dataset(tmp_path / "a", Corpus(max_docs=3), vocab_size=400)
    second = build_dataset(tmp_path / "b", Corpus(max_docs=3), vocab_size=400)
    assert first.tokens_sha256 == second.tokens_sha256
    tok = "tokenizer/tokenizer.json"
    assert (tmp_path / "a" / tok).read_bytes() == (tmp_path / "b" / tok).read_bytes()


# ---------------------------------------------------------------------------------- bad input
def _leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_missing_corpus_path(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        build_dataset(tmp_path / "out", [tmp_path / "missing"])
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_empty_corpus(tmp_path, write_jsonl):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blank.txt").write_text("\n   \n", "utf-8")
    write_jsonl(tmp_path / "src" / "blank.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(CorpusError, match="no non-empty document"):
        build_dataset(tmp_path / "out", [tmp_path / "src"])
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_jsonl_without_text_leaves_nothing(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}] * 5 + [{"body": "no text"}])
    with pytest.raises(CorpusError, match=r"x\.jsonl:6: no 'text' field"):
        build_dataset(tmp_path / "out", [path])
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some words to tokenize, some words to tokenize", "utf-8")
    out = tmp_path / "out"
    first = build_dataset(out, [src], vocab_size=300)
    before = (out / "text_document.bin").read_bytes()
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True"):
        build_dataset(out, [src], vocab_size=300)
    assert (out / "text_document.bin").read_bytes() == before
    (out / "cache").mkdir()  # e.g. Megatron's sample-index cache from an earlier training run
    src.write_text("different words now", "utf-8")
    second = build_dataset(out, [src], vocab_size=300, overwrite=True)
    assert second.tokens_sha256 != first.tokens_sha256
    assert load_manifest(out) == second and not (out / "cache").exists()
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("text", "utf-8")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.me").write_text("x")
    with pytest.raises(OutputExistsError, match="refusing to overwrite"):
        build_dataset(precious, [src], vocab_size=300, overwrite=True)
    assert (precious / "keep.me").exists() and _leftovers(tmp_path) == []
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        build_dataset(afile, [src], vocab_size=300, overwrite=True)


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(DataError, match="vocab_size must be an integer >= 258"):
        build_dataset(tmp_path / "out", Corpus(max_docs=1), vocab_size=100)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_load_manifest_of_a_non_dataset(tmp_path):
    with pytest.raises(DataError, match="is not a built dataset"):
        load_manifest(tmp_path)


def test_read_back_check_catches_a_corrupted_bin(tmp_path):
    from nemo_vwn.data.errors import VerificationError
    from nemo_vwn.data.indexed import verify_indexed, write_documents

    docs = [[5, 6, 7], [8], [9, 10]]
    written = write_documents(str(tmp_path / "d"), docs, eod_id=0, vocab_size=300)
    assert written.lengths.tolist() == [4, 2, 3] and written.num_tokens == 9
    verify_indexed(written, eod_id=0)
    data = bytearray((tmp_path / "d.bin").read_bytes())
    data[2] ^= 1  # second token of the first document (uint16)
    (tmp_path / "d.bin").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="differ from the tokens written"):
        verify_indexed(written, eod_id=0)
    with pytest.raises(DataError, match=r"token id out of range \[0, 300\)"):
        write_documents(str(tmp_path / "e"), [[1, 300]], eod_id=0, vocab_size=300)


def test_loading_the_tokenizer_makes_no_network_call(small_dataset, monkeypatch):
    """Even with offline mode off, loading the local directory opens no connection."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    manifest, _ = small_dataset
    assert len(_hf(manifest)) == manifest.vocab_size
