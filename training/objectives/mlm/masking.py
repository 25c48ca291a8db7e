"""Which tokens masked language modelling predicts, and what the encoder sees there (pure
functions, reproducible from (seed, step, sample key) like the MAE masks).

Kinds (``pretrain.mask.kind``):

* ``random``: BERT's: ``ratio`` of a sequence's real tokens, each chosen independently of words;
* ``whole_word``: whole words (every piece of a chosen word) until ``ratio`` of the tokens;
* ``span``: SpanBERT's: runs of whole words whose lengths follow a geometric distribution
  (p = 0.2, clipped at 10 words; mean 3.8), until ``ratio`` of the tokens.

Special tokens (padding, separators) are never chosen. Of the chosen tokens 80% become
``[MASK]``, 10% a random token and 10% stay as they are (BERT's 80/10/10); the loss is taken on
all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.objectives.mae.masking import sample_seeds

KINDS = ("random", "whole_word", "span")
SPAN_P, SPAN_MAX = 0.2, 10
NUM_SPECIAL = 5  # ids below this are special ([PAD], [UNK], [CLS], [SEP], [MASK])
PAD, MASK = 0, 4
IGNORE = -100  # the target of a position the loss skips


@dataclass(frozen=True)
class MlmBatch:
    """``inputs`` ``[B, N]`` what the encoder reads; ``targets`` ``[B, N]`` the original id where
    the loss is taken, else :data:`IGNORE`."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> MlmBatch:
        return MlmBatch(
            *(t.to(device, non_blocking=non_blocking) for t in (self.inputs, self.targets))
        )

    def pin_memory(self) -> MlmBatch:
        return MlmBatch(self.inputs.pin_memory(), self.targets.pin_memory())

    @property
    def chosen(self) -> torch.Tensor:
        return self.targets != IGNORE


def chosen_tokens(
    kind: str, ids: torch.Tensor, starts: torch.Tensor, ratio: float, gen
) -> torch.Tensor:
    """Bool ``[N]``: the positions of one sequence the loss is taken on."""
    maskable = ids >= NUM_SPECIAL
    budget = round(ratio * int(maskable.sum()))
    if budget == 0:
        return torch.zeros_like(maskable)
    if kind == "random":
        noise = torch.rand(ids.shape, generator=gen).masked_fill(~maskable, 2.0)
        return torch.zeros_like(maskable).index_fill_(0, noise.argsort()[:budget], True)
    words = _words(starts, maskable)
    if kind == "whole_word":
        order = torch.randperm(len(words), generator=gen).tolist()
        return _take_words(words, [[w] for w in order], budget, ids.shape[0])
    if kind == "span":
        return _take_words(words, _spans(len(words), gen), budget, ids.shape[0])
    raise ValueError(f"unknown MLM mask kind {kind!r}; expected one of {', '.join(KINDS)}")


def _words(starts: torch.Tensor, maskable: torch.Tensor) -> list[tuple[int, int]]:
    """(first, end) token positions of each maskable word."""
    words, first = [], None
    for i, (s, m) in enumerate(zip(starts.tolist(), maskable.tolist())):
        if first is not None and (s or not m):  # the open word ends before i
            words.append((first, i))
            first = None
        if m and first is None:
            first = i
    if first is not None:
        words.append((first, len(starts)))
    return words


def _spans(n_words: int, gen) -> list[list[int]]:
    """Spans of consecutive word indices in random order, lengths geometric (SpanBERT)."""
    spans = []
    for _ in range(4 * n_words + 1):
        u = float(torch.rand((), generator=gen))
        length = min(SPAN_MAX, 1 + int(math.log(max(u, 1e-12)) / math.log(1 - SPAN_P)))
        start = int(torch.randint(0, max(1, n_words), (), generator=gen))
        spans.append(list(range(start, min(n_words, start + length))))
    return spans


def _take_words(words, groups, budget: int, n: int) -> torch.Tensor:
    """Choose groups of words in order until ``budget`` tokens are chosen (the last group is cut
    at the budget only if it would overshoot by more than half of itself)."""
    chosen = torch.zeros(n, dtype=torch.bool)
    count = 0
    for group in groups:
        for w in group:
            first, end = words[w]
            if chosen[first]:
                continue
            if count + (end - first) > budget + (end - first) // 2:
                return chosen
            chosen[first:end] = True
            count += end - first
            if count >= budget:
                return chosen
    return chosen


def mlm_batch(
    kind: str,
    seed: int,
    step: int,
    keys: Sequence[str],
    x: torch.Tensor,
    ratio: float,
    vocab_size: int,
) -> MlmBatch:
    """Inputs and targets of a batch ``x`` ``[B, 2, N]`` (ids, word starts) at ``step``."""
    ids, starts = x[:, 0].long(), x[:, 1]
    inputs, targets = ids.clone(), torch.full_like(ids, IGNORE)
    for row, s in enumerate(sample_seeds(seed, step, keys)):
        gen = torch.Generator().manual_seed(s)
        chosen = chosen_tokens(kind, ids[row], starts[row], ratio, gen)
        targets[row][chosen] = ids[row][chosen]
        action = torch.rand(ids.shape[1], generator=gen)
        random_ids = torch.randint(NUM_SPECIAL, vocab_size, (ids.shape[1],), generator=gen)
        inputs[row] = torch.where(chosen & (action < 0.8), MASK, inputs[row])
        inputs[row] = torch.where(
            chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs[row]
        )
    return MlmBatch(inputs, targets)
