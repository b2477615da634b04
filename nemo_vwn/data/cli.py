"""The ``nemo-vwn data`` subcommand: build a tokenizer and an indexed dataset from a local corpus.

    nemo-vwn data --output runs/data                       # default corpus: Python's stdlib
    nemo-vwn data notes/ extra.jsonl --output runs/mine --vocab-size 4096 --overwrite

``add_arguments(parser)`` fills an argparse (sub)parser, ``run(args)`` executes it and returns
the exit status: 0 on success, 2 on bad input (the message names the input and what is allowed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

DEFAULT_OUTPUT = "runs/data"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the data-step options to ``parser`` and return it."""
    from nemo_vwn.data.build import DEFAULT_VOCAB_SIZE

    parser.add_argument("corpus", nargs="*", metavar="PATH",
                        help="text files, .jsonl files (one {\"text\": ...} per line) or "
                             "directories of them; none: the running Python's standard library "
                             "sources (the default corpus)")
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                        help=f"output directory (default {DEFAULT_OUTPUT})")
    parser.add_argument("--vocab-size", type=_positive_int, default=DEFAULT_VOCAB_SIZE,
                        help=f"BPE vocabulary size, at least 258 (default {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--max-docs", type=_positive_int, default=None,
                        help="use at most this many documents (in corpus order)")
    parser.add_argument("--max-chars", type=_positive_int, default=None,
                        help="use at most this many characters in total")
    parser.add_argument("--text-key", default="text",
                        help="JSONL field holding the text (default: text)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output directory if it holds a dataset built here")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the dataset described by ``args``; print a summary; return the exit status."""
    from nemo_vwn.data.build import build_dataset
    from nemo_vwn.data.corpus import Corpus
    from nemo_vwn.data.errors import DataError

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[nemo-vwn data] {message}", file=sys.stderr, flush=True)

    try:
        corpus = Corpus(args.corpus or None, max_docs=args.max_docs, max_chars=args.max_chars,
                        text_key=args.text_key)
        manifest = build_dataset(args.output, corpus, vocab_size=args.vocab_size,
                                 overwrite=args.overwrite, log=log)
    except DataError as exc:
        print(f"nemo-vwn data: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "output_dir": manifest.output_dir,
        "data_prefix": manifest.prefix,
        "tokenizer_dir": manifest.tokenizer_dir,
        "num_docs": manifest.num_docs,
        "num_tokens": manifest.num_tokens,
        "vocab_size": manifest.vocab_size,
        "corpus": manifest.corpus["kind"],
        "build_seconds": manifest.build_seconds,
    }
    print(json.dumps(summary, indent=2))
    return 0


def ensure_dataset(data_dir: str, vocab_size: Optional[int] = None) -> str:
    """Reuse a dataset built earlier at ``data_dir``, else build the default (stdlib) corpus there
    (``nemo-vwn compare`` and the token-efficiency benchmark); returns ``data_dir``.
    ``vocab_size``: the tokenizer's size when building (default ``DEFAULT_VOCAB_SIZE``; 258 is
    byte-level); a dataset found there with another vocab size is an error, not reused."""
    from nemo_vwn.data.build import DEFAULT_VOCAB_SIZE, build_dataset, load_manifest
    from nemo_vwn.data.errors import DataError

    try:
        manifest = load_manifest(data_dir)
    except (FileNotFoundError, ValueError):
        manifest = None
    if manifest is not None:
        if vocab_size is not None and manifest.vocab_size != vocab_size:
            raise DataError(f"{data_dir} holds a dataset with vocab_size {manifest.vocab_size}, "
                            f"not the requested {vocab_size}; choose another data directory")
        return data_dir
    print(f"[nemo-vwn] building the default dataset (Python standard library) in {data_dir}",
          flush=True)
    build_dataset(data_dir, overwrite=os.path.exists(data_dir),
                  vocab_size=vocab_size or DEFAULT_VOCAB_SIZE)
    return data_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry (``python -m nemo_vwn.data``)."""
    parser = argparse.ArgumentParser(prog="python -m nemo_vwn.data",
                                     description=__doc__.split("\n\n")[0])
    return run(add_arguments(parser).parse_args(argv))
