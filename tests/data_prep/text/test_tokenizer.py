"""The stream encoder: a batch's ids and word starts, whichever way it finds the starts, are what
each text's ``word_ids`` and a separator give."""

import random
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import AddedToken, pre_tokenizers

from data_prep.text.tokenizer import SEP, StreamEncoder, train_tokenizer, word_starts

WORDS = ["the", "cat's", "hat", "sat,", "on", "a", "mat.", "naïve", "co-op", "42", "x!", "unhatted"]
# pieces a text is made of: the mark of a word's later tokens, the separator's spelling, a word
# too long for WordPiece (one [UNK]), CJK characters (a word each), tabs and newlines
PIECES = [*WORDS, " ", " ", "##", "#", "##ing", "[SEP]", "a" * 120, "東京", "\t", "\n", "", "ünï"]


def _tokenizer(kind: str):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    return train_tokenizer(texts, kind, 300, lowercase=False)


def _texts(seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    batches = []
    for _ in range(300):
        n = rng.randint(1, 9)
        batches.append(
            ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))) for _ in range(n)]
        )
    return batches


def _expected(tok, texts):
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    ids = [i for e in encodings for i in [*e.ids, SEP]]
    return ids, [s for e in encodings for s in [*word_starts(e).tolist(), 1]]


@pytest.mark.parametrize(("kind", "by_table"), [("wordpiece", True), ("bpe", False)])
def test_a_stream_is_each_texts_word_starts_and_a_separator(kind, by_table):
    tok = _tokenizer(kind)
    stream = StreamEncoder(tok, SEP)
    assert (stream.continues is not None) == by_table  # WordPiece takes the fast way
    for texts in _texts(1):
        ids, starts = stream(texts)
        assert (ids.tolist(), starts.tolist()) == _expected(tok, texts), texts
        assert ids.dtype == np.int64 and starts.dtype == np.uint8


@pytest.mark.parametrize(("added", "by_table"), [("##zq", True), ("##hat", False)])
def test_an_added_token_spelt_as_a_later_piece_is_a_word_of_its_own(added, by_table):
    """ "##zq" is new (an id of its own: a start wherever it is); "##hat" is also the model's
    piece after "un" (one id, two roles: the table cannot say, word_ids can)."""
    tok = _tokenizer("wordpiece")
    tok.add_tokens([AddedToken(added, normalized=False)])
    stream = StreamEncoder(tok, SEP)
    assert (stream.continues is not None) == by_table
    for texts in [[f"a{added} b", added, f"unhatted{added}"], *_texts(2)[:50]]:
        ids, starts = stream(texts)
        assert (ids.tolist(), starts.tolist()) == _expected(tok, texts), texts


def test_wordpiece_behind_another_pre_tokenizer_takes_word_ids():
    """A pre-tokenizer that keeps "##" in one word could start a word with a marked token."""
    tok = _tokenizer("wordpiece")
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    stream = StreamEncoder(tok, SEP)
    assert stream.continues is None
    for texts in _texts(3)[:50]:
        ids, starts = stream(texts)
        assert (ids.tolist(), starts.tolist()) == _expected(tok, texts), texts


_TRAIN = """
import hashlib, random, sys
from data_prep.text.tokenizer import train_tokenizer
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzé-'") for _ in range(rng.randint(1, 9)))
         for _ in range(400)]
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
print(hashlib.sha256(train_tokenizer(texts, sys.argv[1], 500, True).to_str().encode()).hexdigest())
"""


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_tokenizer_trains_the_same_in_every_process(kind):
    """Each process has its own hash seed. HF's WordPiece trainer gave each another vocabulary
    (tokenizers#1794; before the ``##`` pieces were numbered first, three processes gave three
    here); the quickstart's numbers and two preps' manifests rely on the same one."""
    runs = {
        subprocess.run(
            [sys.executable, "-c", _TRAIN, kind], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(runs) == 1, runs
