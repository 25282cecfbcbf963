"""Language-model data (docs/method.md 4.4): corpus files, EOS per document, n_ctx chunks, seeded
samples."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from libjax.errors import DataError
from models.common import hf, text
from tests.helpers import hf_tiny


def fake_encoder():
    """Each word -> its length (deterministic, no tokenizer needed)."""
    return lambda texts: [[len(w) for w in t.split()] for t in texts]


def test_local_corpus_reads_txt_jsonl_and_npy_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one two"}) + "\n\n"
                                      + json.dumps("three") + "\n")
    (tmp_path / "a.txt").write_text("a whole file")
    np.save(tmp_path / "c.npy", np.array([[7, 8], [9, 10]]))
    (tmp_path / "ignored.csv").write_text("x")
    pieces = list(text.local_corpus(tmp_path))
    assert pieces[:3] == ["a whole file", "one two", "three"]
    np.testing.assert_array_equal(pieces[3], [7, 8, 9, 10])
    assert list(text.local_corpus(tmp_path / "a.txt")) == ["a whole file"]


def test_token_stream_appends_eos_per_document_and_keeps_token_arrays():
    pieces = ["ab c", np.array([5, 6]), "dddd"]
    stream = text.token_stream(pieces, fake_encoder, eos_id=0)
    np.testing.assert_array_equal(stream, [2, 1, 0, 5, 6, 4, 0])
    never = lambda: pytest.fail("no text, so no tokenizer")  # noqa: E731
    np.testing.assert_array_equal(text.token_stream([np.array([1, 2])], never, 0), [1, 2])


def test_chunks_drop_the_last_partial_chunk():
    np.testing.assert_array_equal(text.chunks(np.arange(7), 3), [[0, 1, 2], [3, 4, 5]])
    assert text.chunks(np.arange(2), 3).shape == (0, 3)


def test_sample_is_seeded_and_nested():
    pool = np.arange(40).reshape(20, 2)
    inputs, grams = text.sample(pool, 3, 8, seed=1)
    again, _ = text.sample(pool, 3, 8, seed=1)
    other, _ = text.sample(pool, 3, 8, seed=2)
    np.testing.assert_array_equal(inputs, again)
    assert not np.array_equal(inputs, other)
    np.testing.assert_array_equal(grams[:3], inputs)  # the basis samples are Gram samples too
    assert len({tuple(r) for r in grams}) == 8  # drawn without replacement
    with pytest.raises(DataError, match="20 chunks"):
        text.sample(pool, 3, 21, seed=0)


def test_bad_data_is_reported(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        list(text.local_corpus(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        list(text.local_corpus(tmp_path / "missing"))
    with pytest.raises(DataError, match="vocabulary"):
        text.check_vocab(np.array([0, 64]), 64)
    np.save(tmp_path / "floats.npy", np.ones(3))
    with pytest.raises(DataError, match="integer token ids"):
        list(text.local_corpus(tmp_path / "floats.npy"))


def test_hub_dataset_without_the_datasets_package_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(DataError, match="pip install datasets.*--data_dir"):
        next(text.hub_corpus("roneneldan/TinyStories", 10))


def test_checkpoint_tokenizer_in_both_layouts(tmp_path):
    """``tokenizer.json`` (read with ``tokenizers``) and ``vocab.json`` + ``merges.txt`` (read with
    ``transformers.AutoTokenizer``) give the same ids."""
    hf_tiny.tokenizer(tmp_path / "json")
    from tokenizers import Tokenizer
    bpe = Tokenizer.from_file(str(tmp_path / "json" / "tokenizer.json")).model
    (tmp_path / "files").mkdir()
    bpe.save(str(tmp_path / "files"))
    (tmp_path / "files" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": hf_tiny.EOS}))
    ids = hf.load_tokenizer(tmp_path / "json")(hf_tiny.CORPUS)
    assert hf.load_tokenizer(tmp_path / "files")(hf_tiny.CORPUS) == ids
    assert 0 not in ids[0] and max(max(i) for i in ids) < hf_tiny.VOCAB  # EOS not added
    with pytest.raises(DataError, match="no tokenizer"):
        hf.load_tokenizer(tmp_path)
