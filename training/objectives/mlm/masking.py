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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    the loss is taken, else :data:`IGNORE`.

    Made on the host (a loader worker), a batch also carries what would otherwise make the
    training step wait for the device: ``index``, the flat positions of the chosen tokens
    (row-major), ``picked``, their ids, and ``padding``, whether any row is padded. Selecting
    by a boolean mask on the device, or asking it whether there is padding, reads the device
    from the host (three such reads a micro step, before)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor | None = None
    picked: torch.Tensor | None = None
    padding: bool | None = None

    @staticmethod
    def of(inputs: torch.Tensor, targets: torch.Tensor) -> MlmBatch:
        """A batch with its host-side facts, from host tensors."""
        index = (targets != IGNORE).flatten().nonzero().squeeze(1)
        padding = bool((inputs == PAD).any())
        return MlmBatch(inputs, targets, index, targets.flatten()[index], padding)

    def to(self, device, non_blocking: bool = False) -> MlmBatch:
        moved = (
            None if t is None else t.to(device, non_blocking=non_blocking)
            for t in (self.inputs, self.targets, self.index, self.picked)
        )
        return MlmBatch(*moved, padding=self.padding)

    def pin_memory(self) -> MlmBatch:
        pinned = (
            None if t is None else t.pin_memory()
            for t in (self.inputs, self.targets, self.index, self.picked)
        )
        return MlmBatch(*pinned, padding=self.padding)

    @property
    def chosen(self) -> torch.Tensor:
        return self.targets != IGNORE


def uniforms_per_row(n: int) -> int:
    """How many uniforms :func:`chosen_positions` reads per row of length ``n``: a key per word
    (or token), then a length and a start per span (at most ``max(8, n // 2)`` spans)."""
    return n + 2 * max(8, n // 2)


def chosen_positions(
    kind: str, ids: np.ndarray, starts: np.ndarray, ratio: float, u: np.ndarray
) -> np.ndarray:
    """Bool ``[B, N]``: the positions of each sequence the loss is taken on, from ``u``
    ``[B, uniforms_per_row(N)]`` (each row's own uniforms), for the whole batch at once. A
    Python loop over words took 110 ms for a 128 x 512 batch of whole-word masks and 1.1 s of
    span masks (``python -m benchmarks.mlm_masks``)."""
    B, N = ids.shape
    maskable = ids >= NUM_SPECIAL
    budget = np.rint(ratio * maskable.sum(1)).astype(np.int64)
    if kind == "random":
        order = np.argsort(np.where(maskable, u[:, :N], 2.0), axis=1, kind="stable")
        return _scattered(order, np.arange(N)[None] < budget[:, None])
    if kind not in KINDS:
        raise ValueError(f"unknown MLM mask kind {kind!r}; expected one of {', '.join(KINDS)}")
    first = maskable & (starts.astype(bool) | ~np.pad(maskable, ((0, 0), (1, 0)))[:, :N])
    word_of = np.cumsum(first, axis=1) - 1  # the word of each token (where maskable)
    n_words = first.sum(1)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, N))
    lengths = np.bincount((rows * N + word_of)[maskable], minlength=B * N).reshape(B, N)
    if kind == "whole_word":  # words in the order of a random key each
        keys = np.where(np.arange(N)[None] < n_words[:, None], u[:, :N], 2.0)
        order = np.argsort(keys, axis=1, kind="stable")
        row_of = np.repeat(np.arange(B), N)
        words = order.ravel()
        valid = (np.arange(N)[None] < n_words[:, None]).ravel()
        row_of, words = row_of[valid], words[valid]
    else:
        row_of, words = _span_words(n_words, budget, u[:, N:])
    taken = _budget_prefix(row_of, words, lengths, budget, B, N)
    return maskable & np.take_along_axis(taken, np.maximum(word_of, 0), axis=1)


def _scattered(order: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """``out[b, order[b, j]] = flags[b, j]``."""
    out = np.zeros(order.shape, dtype=bool)
    np.put_along_axis(out, order, np.broadcast_to(flags, order.shape), axis=1)
    return out


def _span_words(n_words: np.ndarray, budget: np.ndarray, u: np.ndarray):
    """(row, word) of SpanBERT spans in draw order, each word at its first appearance in its
    row: ``max(8, budget // 2)`` spans a row, lengths geometric (p = 0.2, at most 10 words),
    random starts."""
    B, C = len(n_words), u.shape[1] // 2
    count = np.minimum(C, np.maximum(8, budget // 2))
    span = np.minimum(SPAN_MAX, 1 + np.floor(np.log1p(-u[:, :C]) / np.log1p(-SPAN_P)))
    first = np.floor(u[:, C:] * n_words[:, None]).astype(np.int64)
    span = (np.minimum(first + span.astype(np.int64), n_words[:, None]) - first).clip(0)
    span[np.arange(C)[None] >= count[:, None]] = 0
    span, first = span.ravel(), first.ravel()
    ends = np.cumsum(span)
    words = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - span, span)
    words += np.repeat(first, span)
    row_of = np.repeat(np.repeat(np.arange(B), C), span)
    _, seen_at = np.unique(row_of * (int(n_words.max(initial=0)) + 1) + words, return_index=True)
    seen_at.sort()
    return row_of[seen_at], words[seen_at]


def _budget_prefix(row_of, words, lengths, budget, B: int, N: int) -> np.ndarray:
    """Bool ``[B, N]`` words taken: each row's words in order until its budget of tokens; a
    word that would overshoot the budget by more than half of itself ends the row's taking."""
    size = lengths[row_of, words]
    total = np.cumsum(size)
    row_start = np.searchsorted(row_of, np.arange(B))  # row_of is sorted by row
    before = np.concatenate([[0], total])[row_start][row_of]
    total = total - before
    row_budget = budget[row_of]
    ok = (total - size < row_budget) & (total <= row_budget + size // 2)
    # a word is taken when it and every earlier word of its row are ok
    bad_before = np.cumsum(~ok) - np.concatenate([[0], np.cumsum(~ok)])[row_start][row_of]
    taken = np.zeros((B, N), dtype=bool)
    keep = bad_before == 0
    taken[row_of[keep], words[keep]] = True
    return taken


def chosen_tokens(
    kind: str, ids: np.ndarray, starts: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool ``[N]``: :func:`chosen_positions` of one sequence, with uniforms from ``rng``."""
    ids, starts = np.asarray(ids)[None], np.asarray(starts)[None]
    u = rng.random((1, uniforms_per_row(ids.shape[1])))
    return chosen_positions(kind, ids, starts, ratio, u)[0]


def mlm_batch(
    kind: str,
    seed: int,
    step: int,
    keys: Sequence[str],
    x: torch.Tensor,
    ratio: float,
    vocab_size: int,
) -> MlmBatch:
    """Inputs and targets of a batch ``x`` ``[B, 2, N]`` (ids, word starts) at ``step``; each
    row's uniforms come from its own generator, seeded by (seed, step, sample key)."""
    ids, starts = x[:, 0].long().numpy(), x[:, 1].numpy()
    n = ids.shape[1]
    u = np.stack([
        np.random.default_rng(s).random(uniforms_per_row(n) + 2 * n)
        for s in sample_seeds(seed, step, keys)
    ]) if len(keys) else np.zeros((0, uniforms_per_row(n) + 2 * n))  # fmt: skip
    chosen = chosen_positions(kind, ids, starts, ratio, u[:, : uniforms_per_row(n)])
    action, pick = u[:, -2 * n : -n], u[:, -n:]
    random_ids = NUM_SPECIAL + (pick * (vocab_size - NUM_SPECIAL)).astype(np.int64)
    # BERT's 80/10/10: [MASK], a random token, or the token itself
    inputs = np.where(chosen & (action < 0.8), MASK, ids)
    inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = np.where(chosen, ids, IGNORE)
    return MlmBatch.of(torch.from_numpy(inputs), torch.from_numpy(targets))
