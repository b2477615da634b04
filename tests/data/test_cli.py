"""The `nemo-vwn data` hook: add_arguments(parser) + run(args), and `python -m nemo_vwn.data`."""

import argparse
import json

import pytest

from nemo_vwn.data import load_manifest
from nemo_vwn.data.cli import add_arguments, main, run


def _parse(argv):
    return add_arguments(argparse.ArgumentParser(prog="nemo-vwn data")).parse_args(argv)


def test_defaults_mean_the_stdlib_corpus():
    args = _parse([])
    assert args.corpus == [] and args.output == "runs/data" and args.vocab_size == 8192
    assert (args.max_docs, args.max_chars, args.overwrite) == (None, None, False)


def test_run_builds_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(_parse(["--output", str(out), "--max-docs", "2", "--max-chars", "20000",
                     "--vocab-size", "300", "-q"]))
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = load_manifest(out)
    assert summary["num_docs"] == manifest.num_docs == 2
    assert summary["num_tokens"] == manifest.num_tokens
    assert summary["data_prefix"] == manifest.prefix and summary["corpus"] == "python-stdlib"
    assert manifest.corpus["num_chars"] <= 20000


def test_bad_input_is_exit_status_2_with_the_reason(tmp_path, capsys):
    assert main([str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.txt' does not exist" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "a.txt").write_text("hello", "utf-8")
    assert main([str(tmp_path / "a.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_argparse_rejects_non_positive_numbers(capsys):
    with pytest.raises(SystemExit):
        _parse(["--vocab-size", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
