"""What a language model's ablations score on (docs/method.md 3.4): next-token labels for chunks
of a token stream, and the chunks a build did not draw.

As the reference packs a corpus: the stream is cut into ``n_ctx`` chunks, chunk ``i``'s labels
are its tokens shifted by one, and its last label is the first token of chunk ``i + 1``; so a
chunk is scored only if a token follows it (the reference drops the last chunk). Every position
is scored.

Held out by default: the reference builds on the first 90% of a corpus's documents and ablates on
the last 10%. libjax draws a build's samples from every chunk (``text.sample``), so the held-out
set is the last tenth of the chunks, less any the build drew.
"""

from __future__ import annotations

import hashlib

import numpy as np

from libjax.errors import DataError

HELD_OUT_FRACTION = 0.1


def digest(tokens: np.ndarray) -> str:
    """Fingerprint of a token stream (recorded with a build, checked when it is read again)."""
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int64).tobytes()).hexdigest()[:16]


def scored_chunks(n_tokens: int, n_ctx: int) -> np.ndarray:
    """Indices of the chunks that have a label for every position: a token follows them."""
    return np.arange(max(n_tokens - 1, 0) // n_ctx)


def labelled(tokens: np.ndarray, n_ctx: int, chunks) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` of the given chunks, each ``(len(chunks), n_ctx)``."""
    starts = np.asarray(chunks, np.int64)[:, None] * n_ctx + np.arange(n_ctx)
    return tokens[starts].astype(np.int32), tokens[starts + 1].astype(np.int32)


def held_out(n_tokens: int, n_ctx: int, drawn) -> np.ndarray:
    """The scorable chunks in the last tenth of the corpus that the build did not draw, in
    corpus order."""
    n_chunks = n_tokens // n_ctx
    tail = np.arange(n_chunks - max(1, int(np.ceil(HELD_OUT_FRACTION * n_chunks))), n_chunks)
    keep = np.setdiff1d(np.intersect1d(tail, scored_chunks(n_tokens, n_ctx)), drawn)
    if not len(keep):
        raise DataError(f"the build drew every scorable chunk of the last tenth of its corpus "
                        f"({n_chunks} chunks of {n_ctx} tokens), so nothing is held out to ablate "
                        "on; give evaluation data with --data_dir (a file or directory of "
                        ".txt/.jsonl/.npy, used whole), or build on a larger corpus")
    return keep

