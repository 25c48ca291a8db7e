"""The tokenizer: a WordPiece (BERT's) or byte-level BPE model trained with HF ``tokenizers`` on a
sample of the training documents, or a given ``tokenizer.json``; saved beside the shards.

Special tokens have fixed ids, the same for both kinds, so training needs no lookup: ``[PAD]`` 0,
``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3 (the document separator in packed sequences), ``[MASK]`` 4.
A loaded tokenizer must have them at those ids.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data_prep.store import location

# One thread per tokenizer: the prep's parallelism is its Ray tasks, one per core.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL))
KINDS = ("wordpiece", "bpe")
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool):
    """A new tokenizer fitted on ``texts`` (already normalised): the same one from the same
    texts in every process (``tests/data_prep/text/test_tokenizer.py`` trains in three)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    normalizer = normalizers.Lowercase() if lowercase else None
    if kind == "wordpiece":
        texts = list(texts)
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=[*SPECIAL, *_later_pieces(texts, normalizer)],
            min_frequency=2,
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL),
            min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(texts, trainer=trainer)
    return _without_added(tok, SPECIAL) if kind == "wordpiece" else tok


def _later_pieces(texts: list[str], normalizer) -> list[str]:
    """``##c`` for every character ``c`` of the texts (as normalised), sorted. HF's WordPiece
    trainer numbers these pieces in the order a hash map gives its words, which changes from
    process to process, and breaks ties between merges by those numbers, so each process
    learned another vocabulary (huggingface/tokenizers#1794: 8 of 8,000 tokens and 709 ids
    differed between two trainings on the demo corpus). Passed to it first, as special tokens,
    they have the same numbers in every process; :func:`_without_added` then makes them
    ordinary pieces again (special tokens are matched in the raw text)."""
    chars: set[str] = set()
    for text in texts:  # a set a text at a time: 100 k of them at once would be ~200 MB
        chars.update(set(text))
    if normalizer is not None:  # lowercasing maps a character to one or more
        chars = set(normalizer.normalize_str("".join(sorted(chars))))
    return [f"##{c}" for c in sorted(chars)]


def _without_added(tok, keep: tuple[str, ...]):
    """``tok`` with only the ``keep`` added tokens: the others stay in its vocabulary as the
    model's pieces, no longer matched in the raw text."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in keep]
    return Tokenizer.from_str(json.dumps(spec))


def load_tokenizer(path: str | Path):
    """A saved tokenizer, checked for the special ids training relies on."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(location(path).read_text())  # a file, or an object in a store
    wrong = [f"{t}={tok.token_to_id(t)}" for i, t in enumerate(SPECIAL) if tok.token_to_id(t) != i]
    if wrong:
        raise ValueError(
            f"{path}: special tokens must have ids {', '.join(f'{t}={i}' for i, t in enumerate(SPECIAL))}; "
            f"got {', '.join(wrong)}"
        )
    return tok


def ids_dtype(vocab_size: int):
    """The smallest unsigned type that holds every id: uint16 up to 65,536 entries."""
    import numpy as np

    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class StreamEncoder:
    """Texts -> their token stream: the ids (int64) and word starts (uint8) laid end to end,
    ``sep`` after each text (a start of its own); what :func:`word_starts` and a separator per
    text give.

    A WordPiece model behind BERT's pre-tokenizer (what :func:`train_tokenizer` makes, and
    BERT's own ``tokenizer.json``) marks every token that goes on with a word (``##ing``): a
    word's first token cannot carry the mark, because that pre-tokenizer cuts every ``#`` into a
    word of its own. Its word starts are then the ids looked up in a table made once, and the
    texts go through ``encode_batch_fast``, which makes neither offsets nor word ids: 1.7x
    ``encode_batch``'s speed on the demo corpus (``python -m benchmarks.text_prep``). Any other
    tokenizer (a byte-level BPE starts a word at "," with no mark) takes ``word_ids``.
    ``tests/data_prep/text/test_tokenizer.py`` checks both ways against :func:`word_starts`."""

    def __init__(self, tok, sep: int):
        self.tok, self.sep = tok, sep
        self.continues = continuation_table(tok)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.continues is None:
            encodings = self.tok.encode_batch(texts, add_special_tokens=False)
            return _word_id_stream(encodings, self.sep)
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        flat, ends = _end_to_end([e.ids for e in encodings])
        starts = np.logical_not(self.continues[flat]).view(np.uint8)
        return _separated(flat, starts, ends, self.sep)


def continuation_table(tok) -> np.ndarray | None:
    """A flag per id, True where the token goes on with a word (a WordPiece ``##`` piece); None
    where a token does not say: not WordPiece behind BERT's pre-tokenizer, or an added token
    (matched in the raw text, a word of its own) that shares its id with a ``##`` piece."""
    from tokenizers import models, pre_tokenizers

    bert_words = isinstance(tok.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
    if not (isinstance(tok.model, models.WordPiece) and bert_words):
        return None
    prefix = tok.model.continuing_subword_prefix
    vocab = tok.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for token, i in tok.get_vocab(with_added_tokens=False).items():
        table[i] = token.startswith(prefix) and len(token) > len(prefix)
    added = list(tok.get_added_tokens_decoder())
    return None if table[added].any() else table


def _word_id_stream(encodings, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """The stream from each encoding's ``word_ids``, in a few numpy calls a batch (per-document
    calls were 7% of the prep at seq 128)."""
    flat_ids, ends = _end_to_end([e.ids for e in encodings])
    words = itertools.chain.from_iterable(e.word_ids for e in encodings)
    flat_words = np.array(list(words), dtype=np.float64)
    starts = np.ones(len(flat_ids), dtype=np.uint8)
    starts[1:] = flat_words[1:] != flat_words[:-1]
    firsts = ends[:-1][ends[:-1] < len(flat_ids)]  # each later document's first token
    starts[firsts] = 1
    return _separated(flat_ids, starts, ends, sep)


def _end_to_end(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The texts' ids laid end to end (int64), and the offset where each text ends."""
    ends = np.cumsum(np.fromiter(map(len, ids), np.int64, len(ids)))
    total = int(ends[-1]) if len(ends) else 0
    return np.fromiter(itertools.chain.from_iterable(ids), np.int64, total), ends


def _separated(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, sep: int):
    """The stream with ``sep`` after each text: a word start of its own."""
    return np.insert(ids, ends, sep), np.insert(starts, ends, 1)


def word_starts(encoding) -> np.ndarray:
    """1 where a token begins a word (a pre-tokenizer piece), else 0 (uint8): what whole-word
    and span masking group by. A token of no word (None: nan here, unequal to anything) is a
    start, and so is the token after it. In numpy: the loop over tokens in Python was a
    third of the prep's time beside the tokenizer."""
    words = np.array(encoding.word_ids, dtype=np.float64)
    starts = np.ones(len(words), dtype=np.uint8)
    starts[1:] = words[1:] != words[:-1]
    return starts
