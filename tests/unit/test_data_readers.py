"""Data readers (issue 13, item 18): documents are streamed (paragraph, jsonl line, JSON list item, parquet batch)
and read only until the blocks a run needs are filled; slices are Python slices; malformed JSON lists end in one line.
A run on 50 MB files through the CLI: tests/e2e/test_cli_refusals.py."""
from __future__ import annotations

import json

import pytest

from runner.job import data, readers
from runner.config.schema import DatasetConfig, DatasetKind
from runner.job.tokenizer import byte_tokenizer


def test_capped_tokenization_gives_the_leading_blocks_of_the_whole_stream():
    tok = byte_tokenizer()
    docs = data.load_documents(DatasetConfig())
    whole = data.tokenize(docs, tok, 128, "builtin")
    for cap in (128, 128 * 8, 128 * 8 * 3, 10**9):
        capped = data.tokenize(docs, tok, 128, "builtin", max_tokens=cap)
        assert capped.num_blocks == min(whole.num_blocks, cap // 128)
        assert capped.ids.equal(whole.ids[: capped.num_blocks])
    long_doc = ["the quick brown fox jumps over the lazy dog. " * 20_000, "tail"]
    whole = data.tokenize(long_doc, tok, 64, "long")
    capped = data.tokenize(long_doc, tok, 64, "long", max_tokens=64 * 4)
    assert capped.num_blocks == 4 and capped.ids.equal(whole.ids[:4])


@pytest.mark.parametrize("spec", ["[:3]", "[2:5]", "[-3:]", "[:-2]", "[-4:-1]", "[:50%]", "[25%:75%]", "[-25%:]",
                                  "[5:2]", "[:100]", "[0:]"])
def test_streamed_slices_are_python_slices(tmp_path, spec):
    path = tmp_path / "ten.jsonl"
    docs = [f"document {i}" for i in range(10)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    expected = eval(f"docs{spec.replace('%', '')}") if "%" not in spec else None
    if expected is None:  # datasets' percent slices: round(n * p / 100)
        start, stop = (None if not t else round(10 * int(t[:-1]) / 100) for t in spec[1:-1].split(":"))
        expected = docs[start:stop]
    cfg = DatasetConfig(kind=DatasetKind.local, path=str(path), slice=spec)
    if not expected:
        with pytest.raises(data.DataError, match=r"is empty \(10 documents available\)"):
            data.load_documents(cfg)
        return
    documents = data.load_documents(cfg)
    assert list(documents) == expected and list(documents) == expected  # every pass streams the file again
    assert documents.read == len(expected)


def test_json_lists_are_decoded_an_item_at_a_time(tmp_path, monkeypatch):
    """A chunk far smaller than an item (and numbers cut at a chunk boundary) decodes exactly as json.loads does."""
    records = [{"text": "x" * n, "n": 10 ** (n % 12), "nested": {"a": [1, 2.5, None, True]}} for n in range(1, 60)]
    path = tmp_path / "list.json"
    path.write_text("  [\n" + " ,\n ".join(json.dumps(r) for r in records) + "\n]  \n")
    for chunk in (1, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(readers, "_CHUNK", chunk)
        assert list(data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path)))) == [r["text"] for r in records]


@pytest.mark.parametrize("content, text", [
    ('[{"text": "a"} {"text": "b"}]', "malformed JSON (expected ',' or ']' after item 0)"),
    ('[{"text": "a"}, {"text": "b"', "malformed JSON (item 1: "),
    ('[{"text": "a"},', "malformed JSON (the list is not closed)"),
    ('[{"text": "a"}] {}', "malformed JSON (extra data after the list)"),
    ('[{"text": "a"}, 7]', "list.json[1]: expected a JSON object with a 'text' field, got int"),
    ('"text"', "expected a JSON list of objects with a 'text' field"),
])
def test_malformed_json_lists_are_one_line(tmp_path, monkeypatch, content, text):
    monkeypatch.setattr(readers, "_CHUNK", 4)
    path = tmp_path / "list.json"
    path.write_text(content)
    with pytest.raises(data.DataError) as info:
        list(data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path))))
    assert text in str(info.value) and "\n" not in str(info.value)


def test_a_capped_run_reads_only_the_documents_it_needs(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"paragraph {i} " * 20 + "\n\n" for i in range(5000)))
    documents = data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path)))
    blocks = data.tokenize(documents, byte_tokenizer(), 64, "many", max_tokens=64 * 8)
    assert blocks.num_blocks == 8 and blocks.documents == documents.read < 100  # of 5,000 (grouped by ~16k characters)
