"""``build_dataset``: corpus -> locally trained tokenizer -> verified Megatron indexed dataset.

Output directory layout (paths in ``manifest.json`` are relative to it, so it can be moved)::

    <output>/manifest.json             what was built (see ``DatasetManifest``)
    <output>/tokenizer/                HuggingFace tokenizer directory (AutoTokenizer loads it)
    <output>/text_document.bin|.idx    the indexed dataset; its prefix is <output>/text_document

Everything is written into a hidden temporary directory next to ``<output>`` and renamed into
place only after the dataset was read back and verified, so a failure never leaves a half-written
output. ``overwrite`` replaces only a directory that is empty or holds a ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from nemo_vwn.data.corpus import Corpus, PathLike
from nemo_vwn.data.errors import CorpusError, DataError, OutputExistsError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "nemo-vwn-data/1"
PREFIX_NAME = "text_document"
TOKENIZER_DIRNAME = "tokenizer"
DEFAULT_VOCAB_SIZE = 8192
ENCODE_BATCH = 64


@dataclass
class DatasetManifest:
    """A built dataset. ``prefix`` and ``tokenizer_dir`` are absolute paths on this machine.

    ``num_tokens`` counts every token in the .bin, the one EOD per document included
    (``num_tokens - num_docs`` text tokens). ``corpus`` describes the source and what was taken
    from it (``num_docs``, ``num_chars``, ``sha256`` of the documents).
    """

    output_dir: str
    prefix: str
    tokenizer_dir: str
    num_docs: int
    num_tokens: int
    vocab_size: int
    eod_id: int
    pad_id: int
    dtype: str
    tokens_sha256: str
    corpus: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    build_seconds: float = 0.0

    def to_json(self) -> dict:
        """The manifest as stored: paths relative to the output directory."""
        data = asdict(self)
        data.pop("output_dir")
        data["prefix"] = PREFIX_NAME
        data["tokenizer_dir"] = TOKENIZER_DIRNAME
        return {"format": MANIFEST_FORMAT, **data}


def load_manifest(output_dir: PathLike) -> DatasetManifest:
    """Read ``<output_dir>/manifest.json`` written by ``build_dataset``.

    Raises:
        DataError: no manifest, an unknown format, or the files it names are missing.
    """
    output_dir = Path(output_dir).expanduser().resolve()
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{str(output_dir)!r} is not a built dataset (no {MANIFEST_NAME}); run "
                        "`nemo-vwn data` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("format", None) != MANIFEST_FORMAT:
        raise DataError(f"{str(path)!r} is not a {MANIFEST_FORMAT} manifest")
    data["prefix"] = str(output_dir / data["prefix"])
    data["tokenizer_dir"] = str(output_dir / data["tokenizer_dir"])
    manifest = DatasetManifest(output_dir=str(output_dir), **data)
    for needed in (manifest.prefix + ".bin", manifest.prefix + ".idx",
                   str(Path(manifest.tokenizer_dir) / "tokenizer.json")):
        if not Path(needed).is_file():
            raise DataError(f"dataset {str(output_dir)!r} is incomplete: {needed!r} is missing")
    return manifest


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists() and not output_dir.is_symlink():
        return
    if not output_dir.is_dir() or output_dir.is_symlink():
        raise OutputExistsError(f"output {str(output_dir)!r} exists and is not a directory; "
                                "choose another output path")
    if not overwrite:
        raise OutputExistsError(f"output directory {str(output_dir)!r} already exists; pass "
                                "overwrite=True (--overwrite) to replace it or choose another")
    if any(output_dir.iterdir()) and not (output_dir / MANIFEST_NAME).is_file():
        raise OutputExistsError(f"refusing to overwrite {str(output_dir)!r}: it is not empty and "
                                f"holds no {MANIFEST_NAME}, so it is not a dataset built here")


class _Tally:
    """Counts and hashes the documents that pass through it (used on the encoding pass)."""

    def __init__(self) -> None:
        self.docs = 0
        self.chars = 0
        self.digest = hashlib.sha256()

    def __call__(self, documents) -> Iterator[str]:
        for text in documents:
            self.docs += 1
            self.chars += len(text)
            data = text.encode("utf-8")
            self.digest.update(len(data).to_bytes(8, "little"))
            self.digest.update(data)
            yield text


def _encoded(tokenizer, documents) -> Iterator[list]:
    batch = []
    for text in documents:
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            yield from (e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False))


def build_dataset(
    output_dir: PathLike,
    corpus: Union[Corpus, Sequence[PathLike], None] = None,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_docs: Optional[int] = None,
    max_chars: Optional[int] = None,
    min_frequency: int = 2,
    overwrite: bool = False,
    log=None,
) -> DatasetManifest:
    """Build a Megatron indexed dataset and its tokenizer from a local corpus.

    Args:
        output_dir: directory to create (see the module docstring for its layout).
        corpus: a ``Corpus``, a list of corpus paths, or ``None`` for the default corpus (the
            running interpreter's standard library).
        vocab_size: requested BPE vocabulary size (>= 258); a small corpus may yield fewer.
        max_docs, max_chars: caps when ``corpus`` is not already a ``Corpus``.
        min_frequency: a pair must occur this often to become a merge.
        overwrite: replace an existing dataset directory.
        log: optional ``callable(str)`` for progress lines.

    Returns:
        The ``DatasetManifest`` (also written to ``<output_dir>/manifest.json``).

    Raises:
        DataError (``CorpusError``, ``OutputExistsError``, ``VerificationError``): bad input or a
            failed read-back; nothing is left at ``output_dir`` in that case.
    """
    from nemo_vwn.data import indexed
    from nemo_vwn.data import tokenizer as tok

    start = time.perf_counter()
    say = log or (lambda message: None)
    tok.check_vocab_size(vocab_size)
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus, max_docs=max_docs, max_chars=max_chars)
    elif max_docs is not None or max_chars is not None:
        raise DataError("give max_docs/max_chars to the Corpus, not to build_dataset, when "
                        "passing a Corpus")
    output_dir = Path(output_dir).expanduser().resolve()
    _check_output(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it 0700; publish like mkdir
        say(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on {corpus.describe()}")
        first_pass = _Tally()
        bpe = tok.train_bpe(first_pass(corpus), vocab_size, min_frequency=min_frequency)
        if first_pass.docs == 0:
            raise CorpusError(f"the corpus holds no non-empty document: {corpus.describe()}")
        tok.save_hf_tokenizer(bpe, staging / TOKENIZER_DIRNAME)
        special = tok.special_token_ids(bpe)
        actual_vocab = bpe.get_vocab_size(with_added_tokens=True)
        # Literal "<|endoftext|>" in the text stays text: EOD comes only from the data step.
        bpe.encode_special_tokens = True

        say(f"encoding {first_pass.docs} documents ({first_pass.chars} characters)")
        second_pass = _Tally()
        written = indexed.write_documents(str(staging / PREFIX_NAME),
                                          _encoded(bpe, second_pass(corpus)),
                                          special["eod"], actual_vocab)
        if (second_pass.docs, second_pass.digest.hexdigest()) != (
                first_pass.docs, first_pass.digest.hexdigest()):
            raise CorpusError("the corpus changed between the tokenizer and the encoding pass")
        indexed.verify_indexed(written, special["eod"])
        say(f"wrote and verified {written.num_docs} documents, {written.num_tokens} tokens")

        manifest = DatasetManifest(
            output_dir=str(output_dir),
            prefix=str(output_dir / PREFIX_NAME),
            tokenizer_dir=str(output_dir / TOKENIZER_DIRNAME),
            num_docs=written.num_docs,
            num_tokens=written.num_tokens,
            vocab_size=actual_vocab,
            eod_id=special["eod"],
            pad_id=special["pad"],
            dtype=written.dtype.__name__,
            tokens_sha256=written.sha256,
            corpus={**corpus.describe(), "num_docs": first_pass.docs,
                    "num_chars": first_pass.chars, "sha256": first_pass.digest.hexdigest(),
                    "skipped": dict(corpus.skipped)},
            tokenizer={"type": "byte-level BPE (tokenizers)", "requested_vocab_size": vocab_size,
                       "min_frequency": min_frequency, "eod_token": tok.EOD_TOKEN,
                       "pad_token": tok.PAD_TOKEN},
        )
        manifest.build_seconds = round(time.perf_counter() - start, 3)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2) + "\n",
                                             encoding="utf-8")
        _publish(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Move the finished ``staging`` directory to ``output_dir`` (replacing it if allowed)."""
    _check_output(output_dir, overwrite)  # again: something may have appeared meanwhile
    if output_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        retired.rmdir()
        output_dir.rename(retired)
        try:
            staging.rename(output_dir)
        except BaseException:
            retired.rename(output_dir)  # put the previous dataset back
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)
