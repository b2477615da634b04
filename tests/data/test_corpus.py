"""The corpus: default stdlib selection, user files/directories/JSONL, caps, and bad input."""

import sysconfig
from pathlib import Path

import pytest

from nemo_vwn.data import Corpus, CorpusError, stdlib_dir, stdlib_files


def test_default_corpus_is_the_running_stdlib_sorted_without_tests():
    root = Path(sysconfig.get_paths()["stdlib"])
    assert stdlib_dir() == root
    files = stdlib_files()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert "os.py" in rel and "json/decoder.py" in rel
    for banned in ("test", "tests", "idle_test", "site-packages"):
        assert not any(banned in r.split("/")[:-1] for r in rel), banned
    # Independent count: every .py under the stdlib whose directories are not excluded.
    expected = [p for p in root.rglob("*.py")
                if not {"test", "tests", "idle_test", "site-packages", "dist-packages",
                        "__pycache__"} & set(p.relative_to(root).parts[:-1])]
    assert len(files) == len(expected) > 100
    assert stdlib_files() == files  # deterministic


def test_caps_take_a_prefix_of_the_default_corpus():
    expected = [t for t in (p.read_text(encoding="utf-8") for p in stdlib_files()) if t.strip()]
    assert list(Corpus(max_docs=5)) == expected[:5]
    cap = len(expected[0]) + 100
    capped = list(Corpus(max_chars=cap))
    assert capped == [expected[0], expected[1][:100]]
    assert sum(map(len, capped)) == cap
    assert list(Corpus(max_docs=3)) == list(Corpus(max_docs=3))  # re-iterable, same result


def test_directory_text_and_jsonl(tmp_path, write_jsonl):
    (tmp_path / "b.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("# first file\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "c.jsonl", [{"text": "json one", "id": 1}, "",
                                               {"text": "json two"}])
    (tmp_path / "sub" / "blank.txt").write_text("  \n\n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    corpus = Corpus([tmp_path])
    assert list(corpus) == ["# first file\n", "second file\n", "json one", "json two"]
    assert corpus.skipped["empty"] == 1
    assert corpus.describe()["kind"] == "paths"


def test_named_files_keep_the_given_order_and_any_suffix(tmp_path, write_jsonl):
    log = tmp_path / "notes.log"
    log.write_text("a log file is text too", encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "text": "from jsonl"}])
    assert list(Corpus([data, log])) == ["from jsonl", "a log file is text too"]
    assert list(Corpus([data], text_key="body")) == ["x"]


def test_missing_path_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"'.*nope\.txt' does not exist"):
        Corpus([tmp_path / "nope.txt"])


def test_directory_without_usable_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"holds no usable file \(looked for \.txt"):
        Corpus([tmp_path])


@pytest.mark.parametrize("line, message", [
    ('{"content": "no text here"}', r"bad\.jsonl:2: no 'text' field \(fields: content\)"),
    ('{"text": 3}', r"bad\.jsonl:2: field 'text' must be a string, got int"),
    ('["text"]', r"bad\.jsonl:2: expected a JSON object with a 'text' field, got list"),
    ('{"text": "unterminated', r"bad\.jsonl:2: not valid JSON"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, write_jsonl, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, line])
    corpus = Corpus([path])  # problems inside files show up while reading
    with pytest.raises(CorpusError, match=message):
        list(corpus)


def test_non_utf8_text_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt' is not UTF-8 text"):
        list(Corpus([path]))


@pytest.mark.parametrize("caps", [{"max_docs": 0}, {"max_chars": -1}, {"max_docs": 1.5}])
def test_bad_caps(caps):
    with pytest.raises(CorpusError, match="must be a positive integer"):
        Corpus(**caps)


def test_stdlib_root_without_sources(tmp_path):
    with pytest.raises(CorpusError, match="no .py sources"):
        Corpus(stdlib_root=tmp_path)
