"""Write token documents as Megatron's indexed dataset (``<prefix>.bin`` + ``<prefix>.idx``) and
read them back through megatron-core to check them.

One document = one record (one sequence, one document index entry) whose last token is EOD. The
token dtype is uint16 when the vocabulary fits (<= 65536 ids) and int32 otherwise, the same rule
megatron-core's ``GPTDatasetConfig`` uses for ``token_dtype_code``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy

from nemo_vwn.data.errors import DataError, VerificationError


def token_dtype(vocab_size: int):
    """``numpy.uint16`` for vocabularies of at most 65536 ids, else ``numpy.int32``."""
    return numpy.uint16 if vocab_size <= numpy.iinfo(numpy.uint16).max + 1 else numpy.int32


@dataclass
class WrittenDataset:
    """What ``write_documents`` wrote: per-document lengths (EOD included) and a token hash."""

    prefix: str
    dtype: type
    lengths: numpy.ndarray
    sha256: str

    @property
    def num_docs(self) -> int:
        return int(self.lengths.size)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def write_documents(prefix: str, documents: Iterable[Sequence[int]], eod_id: int,
                    vocab_size: int) -> WrittenDataset:
    """Write each token list in ``documents`` plus ``eod_id`` as one record under ``prefix``.

    Raises:
        DataError: a token id is outside ``[0, vocab_size)``.
    """
    import torch
    from megatron.core.datasets.indexed_dataset import (
        IndexedDatasetBuilder,
        get_bin_path,
        get_idx_path,
    )

    dtype = token_dtype(vocab_size)
    builder = IndexedDatasetBuilder(get_bin_path(prefix), dtype=dtype)
    digest = hashlib.sha256()
    lengths = []
    try:
        for ids in documents:
            array = numpy.empty(len(ids) + 1, dtype=numpy.int64)
            array[:-1] = ids
            array[-1] = eod_id
            if array.size and (array.min() < 0 or array.max() >= vocab_size):
                raise DataError(f"token id out of range [0, {vocab_size}) in document "
                                f"{len(lengths)}")
            array = array.astype(dtype)
            digest.update(array.tobytes())
            builder.add_item(torch.from_numpy(array))
            builder.end_document()
            lengths.append(array.size)
    finally:
        builder.data_file.close()
    builder.finalize(get_idx_path(prefix))
    return WrittenDataset(prefix, dtype, numpy.asarray(lengths, dtype=numpy.int64),
                          digest.hexdigest())


def verify_indexed(written: WrittenDataset, eod_id: int) -> None:
    """Read ``written.prefix`` back with megatron-core's ``IndexedDataset`` and compare.

    Checks: dtype, number of records and documents, every record length, the token hash over all
    records, and that EOD occurs exactly once per document, as its last token.

    Raises:
        VerificationError: naming the first mismatch.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(written.prefix, mmap=True)
    try:
        if dataset.index.dtype != written.dtype:
            raise VerificationError(f"read dtype {dataset.index.dtype} != written "
                                    f"{written.dtype}")
        if len(dataset) != written.num_docs:
            raise VerificationError(f"read {len(dataset)} records, wrote {written.num_docs}")
        expected_docs = numpy.arange(written.num_docs + 1)
        if not numpy.array_equal(dataset.document_indices, expected_docs):
            raise VerificationError("document index is not one record per document")
        read_lengths = numpy.asarray(dataset.sequence_lengths, dtype=numpy.int64)
        if not numpy.array_equal(read_lengths, written.lengths):
            bad = int(numpy.flatnonzero(read_lengths != written.lengths)[0])
            raise VerificationError(f"document {bad}: read {read_lengths[bad]} tokens, wrote "
                                    f"{written.lengths[bad]}")
        digest = hashlib.sha256()
        eod_count = 0
        for index in range(len(dataset)):
            tokens = dataset[index]
            if tokens[-1] != eod_id:
                raise VerificationError(f"document {index} does not end with EOD ({eod_id})")
            eod_count += int(numpy.count_nonzero(tokens == eod_id))
            digest.update(tokens.tobytes())
        if eod_count != written.num_docs:
            raise VerificationError(f"EOD ({eod_id}) occurs {eod_count} times for "
                                    f"{written.num_docs} documents")
        if digest.hexdigest() != written.sha256:
            raise VerificationError("the tokens read back differ from the tokens written")
    finally:
        del dataset
