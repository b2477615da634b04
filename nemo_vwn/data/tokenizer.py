"""Train a byte-level BPE tokenizer locally and save it as a HuggingFace tokenizer directory.

The directory holds ``tokenizer.json`` (the ``tokenizers`` model), ``tokenizer_config.json`` and
``special_tokens_map.json``, so ``transformers.AutoTokenizer.from_pretrained(<dir>)`` loads it
offline as a fast tokenizer, and Megatron's ``HuggingFaceTokenizer`` (Bridge
``tokenizer_type="HuggingFaceTokenizer"``) uses ``eos_token`` as its EOD.

Byte-level means every byte has a token: any UTF-8 text encodes without unknown tokens and decodes
back to the identical string. No BOS/EOS is added on encode; the data step appends EOD itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Union

from nemo_vwn.data.errors import DataError

EOD_TOKEN = "<|endoftext|>"
"""End-of-document token (HF ``eos_token``; Megatron's ``tokenizer.eod``). Always id 0."""

PAD_TOKEN = "<|pad|>"
"""Padding token (HF ``pad_token``), distinct from EOD so Megatron never masks real EODs. Id 1."""

SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
"""The 256 byte tokens plus the special tokens: the smallest vocabulary that makes sense."""

TOKENIZER_FILE = "tokenizer.json"


def check_vocab_size(vocab_size: int) -> None:
    """Raise ``DataError`` unless ``vocab_size`` is an int of at least ``MIN_VOCAB_SIZE``."""
    is_int = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
    if not is_int or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + "
                        f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size!r}")


def train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``documents``.

    The result has at most ``vocab_size`` tokens (fewer when the corpus runs out of pairs seen
    ``min_frequency`` times). Ids 0 and 1 are ``EOD_TOKEN`` and ``PAD_TOKEN``; the 256 byte tokens
    follow. Training is deterministic for the same documents in the same order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def save_hf_tokenizer(tokenizer, directory: Union[str, Path]) -> Path:
    """Write ``tokenizer`` as a HuggingFace fast-tokenizer directory; returns the directory.

    The config names ``PreTrainedTokenizerFast`` (understood by transformers 4.x and 5.x), sets
    ``eos_token``/``pad_token`` and turns off ``clean_up_tokenization_spaces`` so decode is exact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    special = {"eos_token": EOD_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 1_000_000_000,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                     encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n",
                                                       encoding="utf-8")
    return directory


def load_tokenizer(directory: Union[str, Path]):
    """The ``tokenizers.Tokenizer`` saved in ``directory`` by ``save_hf_tokenizer``."""
    from tokenizers import Tokenizer

    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no {TOKENIZER_FILE} in tokenizer directory {str(directory)!r}")
    return Tokenizer.from_file(str(path))


def special_token_ids(tokenizer) -> dict:
    """``{"eod": id, "pad": id}`` of a tokenizer trained by ``train_bpe``."""
    ids = {"eod": tokenizer.token_to_id(EOD_TOKEN), "pad": tokenizer.token_to_id(PAD_TOKEN)}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise DataError(f"tokenizer lacks the special tokens {missing} ({EOD_TOKEN!r}, "
                        f"{PAD_TOKEN!r}); was it trained by nemo_vwn.data?")
    return ids
