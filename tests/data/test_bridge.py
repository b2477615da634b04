"""Megatron-Bridge reads a built dataset: its tokenizer (HuggingFaceTokenizer on the local
directory, offline) and a GPT dataset built by Bridge's own dataset provider, on CPU."""

import numpy
import pytest
import torch

SEQ_LENGTH = 48


@pytest.fixture(scope="module")
def bridge_ready():
    from nemo_vwn.runtime import prepare_runtime

    prepare_runtime()


def _contains(haystack: numpy.ndarray, needle: numpy.ndarray) -> bool:
    """Is ``needle`` a contiguous run of ``haystack``?"""
    if needle.size == 0:
        return True
    if needle.size > haystack.size:
        return False
    windows = numpy.lib.stride_tricks.sliding_window_view(haystack, needle.size)
    return bool((windows == needle).all(axis=1).any())


def test_bridge_tokenizer_loads_the_local_directory(bridge_ready, small_dataset):
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from nemo_vwn.data.bridge import tokenizer_config

    manifest, corpus = small_dataset
    cfg = tokenizer_config(manifest)
    assert cfg.tokenizer_type == "HuggingFaceTokenizer"
    assert cfg.tokenizer_model == manifest.tokenizer_dir
    tokenizer = build_tokenizer(cfg)
    assert tokenizer.vocab_size == manifest.vocab_size
    assert (tokenizer.eod, tokenizer.pad) == (manifest.eod_id, manifest.pad_id)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    records = IndexedDataset(manifest.prefix)
    for index, text in enumerate(list(corpus)[:3]):
        ids = tokenizer.tokenize(text)
        assert ids == records[index][:-1].tolist()
        assert tokenizer.detokenize(ids) == text


def test_bridge_gpt_dataset_draws_samples(bridge_ready, megatron_cpu, small_dataset, tmp_path):
    from megatron.bridge.data.utils import pretrain_train_valid_test_datasets_provider
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from nemo_vwn.data.bridge import dataset_config, tokenizer_config

    manifest, _ = small_dataset
    cfg = dataset_config(manifest, SEQ_LENGTH, split="80,10,10",
                         path_to_cache=str(tmp_path / "cache"), num_workers=0)
    cfg.finalize()
    cfg.tokenizer = build_tokenizer(tokenizer_config(manifest))  # what Bridge's setup() does
    train, valid, test = pretrain_train_valid_test_datasets_provider([24, 4, 4], cfg)
    assert all(isinstance(d, GPTDataset) for d in (train, valid, test))
    assert len(train) >= 24

    documents = [numpy.asarray(d, dtype=numpy.int64) for d in IndexedDataset(manifest.prefix)]
    saw_eod = False
    for index in range(24):
        sample = train[index]
        tokens, labels = sample["tokens"], sample["labels"]
        assert tokens.shape == labels.shape == (SEQ_LENGTH,)
        assert tokens.dtype == torch.int64
        assert torch.equal(tokens[1:], labels[:-1])
        assert int(tokens.max()) < manifest.vocab_size
        # Every EOD-delimited piece of the sample is a run of tokens of some written document.
        stream = torch.cat([tokens, labels[-1:]]).numpy()
        cuts = numpy.flatnonzero(stream == manifest.eod_id)
        saw_eod |= cuts.size > 0
        for piece in numpy.split(stream, cuts + 1):
            assert any(_contains(doc, piece) for doc in documents), (index, piece[:8])
    assert saw_eod  # 24 samples of 48 tokens cross document boundaries in this corpus
    # Bridge's valid split is drawn from other documents than train's.
    assert valid[0]["tokens"].shape == (SEQ_LENGTH,)


def test_use_dataset_switches_a_mock_recipe_to_real_data(bridge_ready, small_dataset):
    from nemo_vwn.data.bridge import use_dataset
    from nemo_vwn.recipes import get_recipe

    manifest, _ = small_dataset
    cfg = get_recipe("tiny_dense_cpu")()
    assert cfg.tokenizer.tokenizer_type == "NullTokenizer" and cfg.dataset.blend is None
    seq_length, num_workers = cfg.dataset.seq_length, cfg.dataset.num_workers
    use_dataset(cfg, manifest.output_dir, split="80,10,10")
    assert cfg.tokenizer.tokenizer_type == "HuggingFaceTokenizer"
    assert cfg.tokenizer.tokenizer_model == manifest.tokenizer_dir
    assert cfg.dataset.blend == ([manifest.prefix], None) and cfg.dataset.split == "80,10,10"
    assert (cfg.dataset.seq_length, cfg.dataset.num_workers) == (seq_length, num_workers)


def test_a_split_without_documents_is_refused_before_megatron_hangs(bridge_ready, small_dataset):
    from nemo_vwn.data import DataError
    from nemo_vwn.data.bridge import dataset_config, split_document_counts

    manifest, _ = small_dataset
    assert manifest.num_docs == 12  # the slice the fixture builds
    # By hand: train [0, round(10.8)=11), valid [11, round(11.4)=11), test [11, 12).
    assert split_document_counts(12, "90,5,5") == [11, 0, 1]
    assert split_document_counts(12, "80,10,10") == [10, 1, 1]
    assert split_document_counts(12, "100,0,0") == [12, 0, 0]
    with pytest.raises(DataError, match=r"split '90,5,5' gives the valid split no document of "
                                        r"the 12 .*\[11, 0, 1\]"):
        dataset_config(manifest, SEQ_LENGTH, split="90,5,5")
    assert dataset_config(manifest, SEQ_LENGTH, split="100,0,0").split == "100,0,0"
    with pytest.raises(DataError, match="split must be up to three"):
        dataset_config(manifest, SEQ_LENGTH, split="0,0,0")
