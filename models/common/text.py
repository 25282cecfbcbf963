"""Language-model data (docs/method.md 4.4): corpus -> token stream -> ``n_ctx`` chunks -> seeded
samples.

A corpus is a sequence of pieces, each a text document or an array of token ids. Text documents
are tokenised with the model's tokenizer and each gets the EOS token appended; token arrays
(pre-tokenised corpora) are taken as they are. All pieces are concatenated, cut into chunks of
``n_ctx`` tokens (the last partial chunk is dropped), and samples are drawn from the chunks with a
seeded permutation. No BOS is prepended. A tokenizer that turns a non-blank document into no
tokens is refused (it would leave a corpus of lone EOS tokens).

Corpora come from local files (:func:`local_corpus`) or, with the optional ``datasets`` package
and a network or its cache, from a Hugging Face dataset (:func:`hub_corpus`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Union

import numpy as np

from libjax.errors import DataError

Piece = Union[str, np.ndarray]
CORPUS_SUFFIXES = (".txt", ".jsonl", ".npy")
ENCODE_BATCH = 1000  # documents per tokenizer call


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number} is not valid JSON ({err})") from None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                yield record["text"]
            elif isinstance(record, str):
                yield record
            else:
                raise DataError(f"{path}:{number}: each JSONL line must be a string or an object "
                                "with a string field \"text\"")


def _token_file(path: Path) -> np.ndarray:
    try:  # never unpickle: a .npy of Python objects could run code, and is no token array
        tokens = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        what = ("holds pickled Python objects" if "allow_pickle" in str(err)
                else f"is not a readable .npy array ({err})")
        raise DataError(f"{path} {what}; a .npy corpus file must hold one integer array of token "
                        "ids (np.save(path, ids.astype(np.int32)))") from None
    if not isinstance(tokens, np.ndarray):  # an .npz archive under a .npy name
        tokens.close()
        raise DataError(f"{path} is an .npz archive, not a .npy array of token ids")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"{path} holds {tokens.dtype} values; a .npy corpus file must hold "
                        "integer token ids")
    return tokens.reshape(-1)


def local_corpus(path: str | Path) -> Iterator[Piece]:
    """The pieces of a file, or of every corpus file in a directory (sorted by name).

    ``.txt``: one document per file; ``.jsonl``: one document per line (a JSON string, or an
    object with a ``"text"`` field); ``.npy``: integer token ids, already tokenised (flattened in
    row-major order, so a ``(n, n_ctx)`` array of samples comes back as the same chunks).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"--data_dir={path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in CORPUS_SUFFIXES) if path.is_dir() \
        else [path]
    if not files:
        raise DataError(f"{path} has no corpus files ({', '.join(CORPUS_SUFFIXES)})")
    for file in files:
        try:
            if file.suffix == ".npy":
                yield _token_file(file)
            elif file.suffix == ".jsonl":
                yield from _jsonl_documents(file)
            elif file.suffix == ".txt":
                yield file.read_text(encoding="utf-8")
            else:
                raise DataError(f"{file}: unknown corpus file type; use "
                                f"{', '.join(CORPUS_SUFFIXES)}")
        except UnicodeDecodeError as err:
            raise DataError(f"{file} is not UTF-8 text (byte {err.start}: {err.reason}); save "
                            "the corpus as UTF-8") from None
        except OSError as err:
            raise DataError(f"cannot read the corpus file {file} ({err.strerror})") from None


def _hub_rows(datasets, name: str, split: str, max_documents: int) -> Iterator[dict]:
    try:
        yield from itertools.islice(datasets.load_dataset(name, split=split, streaming=True),
                                    max_documents)
    except (OSError, ValueError, ConnectionError) as err:
        raise DataError(f"cannot read dataset {name!r} ({type(err).__name__}: {err}); without a "
                        "network give local files with --data_dir=PATH") from None


def hub_corpus(name: str, max_documents: int, split: str = "train") -> Iterator[Piece]:
    """The first ``max_documents`` documents of Hugging Face dataset ``name`` (streamed): its
    ``input_ids`` if it is pre-tokenised, else its ``text``."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"--dataset={name} needs the optional `datasets` package (pip install "
                        "datasets) and a network or its cache; or give local files with "
                        "--data_dir=PATH (.txt, .jsonl or .npy token ids)") from None
    for row in _hub_rows(datasets, name, split, max_documents):
        if "input_ids" in row:
            yield np.asarray(row["input_ids"], np.int64)
        elif "text" in row:
            yield row["text"]
        else:
            raise DataError(f"dataset {name!r} has neither an 'input_ids' nor a 'text' column "
                            f"(columns: {sorted(row)})")


def token_stream(pieces: Iterable[Piece], encoder: Callable[[], Callable],
                 eos_id: int) -> np.ndarray:
    """Concatenate the pieces' tokens: documents encoded with an EOS after each, token arrays as
    they are. ``encoder()`` returns the tokenizer (``texts -> ids``); it is only called if there
    is text."""
    parts: list[np.ndarray] = []
    texts: list[str] = []
    encode = None

    def flush():
        nonlocal encode
        if texts:
            encode = encode or encoder()
            for text, ids in zip(texts, encode(texts)):
                if not len(ids) and text.strip():
                    raise DataError(
                        f"the tokenizer turned a document of {len(text)} characters "
                        f"({text[:40]!r}...) into no tokens: it is empty or does not fit the "
                        "text. Give the checkpoint its own tokenizer files, or pre-tokenised "
                        ".npy token ids")
                parts.append(np.asarray(list(ids) + [eos_id], np.int64))
            texts.clear()

    for piece in pieces:
        if isinstance(piece, str):
            texts.append(piece)
            if len(texts) >= ENCODE_BATCH:
                flush()
        else:
            flush()
            parts.append(np.asarray(piece, np.int64))
    flush()
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def chunks(tokens: np.ndarray, n_ctx: int) -> np.ndarray:
    """``(len(tokens) // n_ctx, n_ctx)`` chunks; the last partial chunk is dropped."""
    n = len(tokens) // n_ctx
    return tokens[:n * n_ctx].reshape(n, n_ctx)


def sample(pool: np.ndarray, n_samples: int, n_gram_samples: int, seed: int):
    """Basis/edge samples and Gram samples from ``pool`` with one seeded permutation: the first
    ``n_samples`` and the first ``n_gram_samples`` chunks of it (so the smaller set is part of
    the larger, as when both are drawn from one corpus with the same seed)."""
    need = max(n_samples, n_gram_samples)
    if need > len(pool):
        raise DataError(f"the corpus has {len(pool)} chunks of {pool.shape[1]} tokens, fewer than "
                        f"the {need} samples asked for; lower --n_samples/--n_gram_samples or "
                        "--n_ctx, or give more data")
    order = drawn(len(pool), need, seed)
    return pool[order[:n_samples]], pool[order[:n_gram_samples]]


def drawn(n_chunks: int, n: int, seed: int) -> np.ndarray:
    """The indices of the chunks :func:`sample` draws for ``n = max(n_samples,
    n_gram_samples)`` samples, in drawing order (what a build did not see is the rest)."""
    return np.random.default_rng(seed).permutation(n_chunks)[:n]


def check_vocab(tokens: np.ndarray, vocab: int) -> None:
    """Token ids must index the model's embedding."""
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
        raise DataError(f"token ids span [{tokens.min()}, {tokens.max()}], outside the model's "
                        f"vocabulary [0, {vocab}); is the data tokenised for this model?")
