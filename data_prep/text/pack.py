"""Packing token ids into fixed-length sequences (pure functions).

Documents are laid end to end, each followed by the separator, and cut every ``seq_len`` tokens, so
no token is padding except at the very end of a stream; a document longer than a sequence simply
spans several. Each sequence carries its word-start flags (1 where a token begins a word; the
separator is a word of its own) for whole-word and span masking.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Packed:
    """``ids`` and ``starts`` ``[seq_len]``; the first ``tokens`` are real, the rest padding."""

    ids: np.ndarray
    starts: np.ndarray
    tokens: int


def pack_stream(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int, pad: int
) -> Iterator[Packed]:
    """Consecutive pieces of one token stream (ids int64, starts uint8: documents with their
    separators already in place, as ``tokenizer.StreamEncoder`` lays a batch out) -> packed
    sequences; the last one padded. The cuts depend on the stream alone, not on how it comes
    in pieces, so a batch at a time gives what a document at a time gives."""
    ids: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    held = 0
    for chunk_ids, chunk_starts in chunks:
        ids.append(chunk_ids)
        starts.append(chunk_starts)
        held += len(chunk_ids)
        if held < seq_len:
            continue
        all_ids, all_starts = np.concatenate(ids), np.concatenate(starts)
        cut = held - held % seq_len
        for i in range(0, cut, seq_len):
            yield Packed(all_ids[i : i + seq_len], all_starts[i : i + seq_len], seq_len)
        ids, starts, held = [all_ids[cut:]], [all_starts[cut:]], held - cut
    if held:
        tail_ids, tail_starts = np.concatenate(ids), np.concatenate(starts)
        yield Packed(
            np.concatenate([tail_ids, np.full(seq_len - held, pad, np.int64)]),
            np.concatenate([tail_starts, np.ones(seq_len - held, np.uint8)]),
            held,
        )
