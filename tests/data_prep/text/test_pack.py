"""Packing: a batch laid out as one stream packs to what a document at a time packs to."""

import itertools

import numpy as np
import pytest

from data_prep.text.pack import pack_stream
from data_prep.text.tokenizer import PAD, SEP


@pytest.mark.parametrize("seq_len", [1, 7, 64])
def test_packing_a_stream_in_any_pieces_is_packing_its_documents(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = []
    for _ in range(40):
        n = int(rng.integers(0, 30))
        docs.append((rng.integers(5, 300, n), rng.integers(0, 2, n).astype(np.uint8)))
    by_doc = list(_pack_by_document(docs, seq_len))
    stream_ids = np.concatenate([np.append(i, SEP) for i, _ in docs])
    stream_starts = np.concatenate([np.append(s, 1) for _, s in docs]).astype(np.uint8)
    cuts = sorted({0, len(stream_ids), *rng.integers(0, len(stream_ids), 9).tolist()})
    pieces = [(stream_ids[a:b], stream_starts[a:b]) for a, b in itertools.pairwise(cuts)]
    by_stream = list(pack_stream(pieces, seq_len, PAD))
    assert len(by_doc) == len(by_stream) == -(-len(stream_ids) // seq_len)
    for x, y in zip(by_doc, by_stream, strict=True):
        assert x.tokens == y.tokens
        assert np.array_equal(x.ids, y.ids) and np.array_equal(x.starts, y.starts)
    last = by_stream[-1]
    assert (last.ids[last.tokens :] == PAD).all() and len(last.ids) == seq_len


def _pack_by_document(docs, seq_len: int):
    """The packing a document at a time, as the reader packed before batches were laid out as
    one stream: each document's ids and starts, then the separator (a start of its own)."""
    return pack_stream(
        ((np.append(np.asarray(i, np.int64), SEP), np.append(np.asarray(s, np.uint8), 1))
         for i, s in docs),
        seq_len,
        PAD,
    )  # fmt: skip
