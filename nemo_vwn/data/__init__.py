"""Real data for Megatron: a local corpus -> a locally trained tokenizer -> an indexed dataset.

    from nemo_vwn.data import build_dataset
    manifest = build_dataset("runs/data")              # default corpus: Python's stdlib sources
    manifest = build_dataset("runs/mine", ["notes/", "more.jsonl"], vocab_size=4096)

Modules: ``corpus`` (documents), ``tokenizer`` (byte-level BPE, HF directory), ``indexed``
(.bin/.idx write + read-back check), ``build`` (the pipeline and manifest), ``bridge``
(Megatron-Bridge ``TokenizerConfig``/``GPTDatasetConfig``; import after
``nemo_vwn.runtime.prepare_runtime()``), ``cli`` (the ``nemo-vwn data`` subcommand).
Nothing here downloads anything.
"""

from nemo_vwn.data.build import DEFAULT_VOCAB_SIZE, DatasetManifest, build_dataset, load_manifest
from nemo_vwn.data.corpus import Corpus, stdlib_dir, stdlib_files
from nemo_vwn.data.errors import CorpusError, DataError, OutputExistsError, VerificationError

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "Corpus",
    "CorpusError",
    "DataError",
    "DatasetManifest",
    "OutputExistsError",
    "VerificationError",
    "build_dataset",
    "load_manifest",
    "stdlib_dir",
    "stdlib_files",
]
