"""CTC fine-tuning of a spectrogram-patch encoder on transcribed utterances, scored by word
error rate (lower is better) with greedy decoding.

Time resolution: 16x16 patches leave one token column per 160 ms (64 per 10 s), and a column
holds 8 frequency tokens. The head mean-pools each column's frequency tokens (where a sound is
in frequency says little about which letter it is, once the encoder has mixed them) and
upsamples time by predicting ``upsample`` output steps from each column (4: a step every 40 ms).
Characters rather than subword units: they need no tokenizer trained on the labelled set, work
for any vocabulary, and read speech runs at ~15 characters a second, under half the 25 steps a
second the head gives; a CTC path needs a step per character plus one between repeats.

The vocabulary is LibriSpeech's (upper-case letters and the apostrophe) with ``|`` between words
and index 0 the CTC blank. Utterances longer than the clip are left out of training and scoring
(their transcript would not match the audio), and counted in the log.
"""

from __future__ import annotations

import copy
import json
import logging

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.shard_format import read_shard_samples, shard_urls
from training.tasks import LOWER
from training.tasks.config import CtcConfig
from training.tasks.downstream import Downstream
from training.tasks.finetune import EncoderJob
from training.tasks.trainer import TaskRun, schedule_for, train

log = logging.getLogger(__name__)

BLANK = 0
VOCAB = "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"  # token i + 1; 0 is the blank


def text_to_ids(text: str) -> list[int]:
    """Words joined by ``|``, one id per character; characters outside the vocabulary dropped."""
    joined = "|".join(text.upper().split())
    return [VOCAB.index(c) + 1 for c in joined if c in VOCAB]


def greedy_decode(log_probs: torch.Tensor) -> str:
    """Best path of ``[T, V]``: argmax per step, repeats merged, blanks dropped, ``|`` -> space."""
    best = log_probs.argmax(dim=-1).tolist()
    chars = [
        VOCAB[i - 1] for j, i in enumerate(best) if i != BLANK and (j == 0 or i != best[j - 1])
    ]
    return " ".join("".join(chars).replace("|", " ").split())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def error_counts(ref: str, hyp: str) -> tuple[int, int, int, int]:
    """Word edits, reference words, character edits, reference characters of one utterance."""
    return (edit_distance(ref.split(), hyp.split()), len(ref.split()),
            edit_distance(list(ref), list(hyp)), len(ref))  # fmt: skip


def rates_of_counts(counts: torch.Tensor) -> dict[str, float]:
    """Corpus word and character error rates in percent from :func:`error_counts` rows: total
    edits over total reference words (characters), as sclite and jiwer count them."""
    word_edits, words, char_edits, chars = counts.sum(dim=0).tolist()
    return {
        "wer": round(100.0 * word_edits / max(1, words), 2),
        "cer": round(100.0 * char_edits / max(1, chars), 2),
    }


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus error rates of whole lists of transcripts (:func:`rates_of_counts`)."""
    counts = [error_counts(r, h) for r, h in zip(refs, hyps)]
    return rates_of_counts(torch.tensor(counts, dtype=torch.float64).reshape(-1, 4))


class CtcHead(nn.Module):
    """Encoder + frequency pooling + a linear layer giving ``upsample`` steps per time column."""

    def __init__(self, encoder: nn.Module, grid: tuple[int, int], upsample: int):
        super().__init__()
        self.encoder, self.grid, self.upsample = encoder, grid, upsample
        dim = encoder.cfg.embed_dim
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, upsample * (len(VOCAB) + 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T*F, P]`` -> log-probabilities ``[B, T * upsample, V]``."""
        b = tokens.shape[0]
        time, freq = self.grid
        encoded = self.encoder(tokens)[:, 1:].reshape(b, time, freq, -1).mean(dim=2)
        logits = self.head(self.norm(encoded)).reshape(b, time * self.upsample, -1)
        return logits.float().log_softmax(dim=-1)


def spec_keep(
    seed: int, step: int, batch_size: int, grid: tuple[int, int], shares: tuple[float, float]
) -> torch.Tensor:
    """``[B, T*F]`` booleans, False on the patches SpecAugment zeroes in every row of a global
    batch at ``step``: ``round(share * T)`` time columns and ``round(share * F)`` frequency rows
    a row, drawn per row (rows, not ranks, own them: the same masks whatever the world size,
    and again on resume)."""
    gen = torch.Generator().manual_seed(seed * 1_000_033 + step)
    keep = torch.ones(batch_size, *grid, dtype=torch.bool)
    for axis, (share, size) in enumerate(zip(shares, grid)):
        count = round(share * size)
        chosen = torch.rand(batch_size, size, generator=gen).argsort(dim=1)[:, :count]
        dropped = torch.zeros(batch_size, size, dtype=torch.bool).scatter_(1, chosen, True)
        keep &= ~dropped.unsqueeze(2 - axis)  # time: [B, T, 1]; frequency: [B, 1, F]
    return keep.reshape(batch_size, -1)


class CtcFinetune:
    name, title, directions = "ctc", "CTC fine-tune", {"wer": LOWER, "cer": LOWER}

    def __init__(self, cfg: CtcConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled

    def run(self, encoder: nn.Module, data: Downstream, run: TaskRun) -> dict[str, float]:
        job = CtcJob(encoder, data, self.cfg, run)
        return train(job, run, schedule_for(self.cfg, job.samples), "CTC fine-tune")


def transcripts(split_dir: str, max_seconds: float) -> dict[str, str]:
    """``{key: transcript}`` of every transcribed sample of a split no longer than
    ``max_seconds``."""
    found, too_long = {}, 0
    for url in shard_urls(split_dir):
        for sample in read_shard_samples(url, members=("json",)):
            meta = json.loads(sample["json"])
            if meta.get("transcript") is None:
                continue
            if meta["seconds"] > max_seconds:
                too_long += 1
            else:
                found[sample["__key__"]] = meta["transcript"]
    if too_long:
        log.warning("CTC: %d utterances of %s are longer than the %.2f s clip, left out",
                    too_long, split_dir, max_seconds)  # fmt: skip
    return found


class CtcJob(EncoderJob):
    """CTC on this rank's transcribed rows; scored by greedy decoding of the val split."""

    metric = ("wer", LOWER)

    def __init__(self, encoder: nn.Module, data: Downstream, cfg: CtcConfig, run: TaskRun):
        torch.manual_seed(data.seed)  # the head's initialisation
        encoder = copy.deepcopy(encoder)  # the tasks after this one get the encoder as it was
        seconds = data.modality.unit_per_sample(data.input)
        self.train_text = transcripts(data.train_shards, seconds)
        if not self.train_text:
            raise ValueError(f"{data.train_shards} holds no transcribed utterance for CTC")
        self.val_text = transcripts(data.val_shards, seconds)
        grid = data.modality.geometry(data.input).grid
        super().__init__(CtcHead(encoder, grid, cfg.upsample), data, cfg, data.input, run)
        self.samples = len(self.train_text)
        self.grid, self.shares = grid, (cfg.mask_time, cfg.mask_freq)

    def loss(self, batch, step: int, first_row: int) -> torch.Tensor:
        x, _, keys = batch
        rows = [i for i, k in enumerate(keys) if k in self.train_text]
        tokens = self.data.tokens(x)
        if any(self.shares):
            keep = spec_keep(self.data.seed, step, self.cfg.batch_size, self.grid, self.shares)
            keep = keep[first_row : first_row + len(x)].to(tokens.device)
            tokens = tokens * keep.unsqueeze(-1).to(tokens.dtype)
        log_probs = self.engine(self.cast(tokens))
        if not rows:  # every rank steps together: a batch with no transcript adds nothing
            return log_probs.sum() * 0.0
        return ctc_loss(log_probs[rows], [self.train_text[keys[i]] for i in rows])

    def val_rows(self):
        """Each transcribed utterance's edit counts (:func:`error_counts`): four numbers a row,
        decoded here, so the gather moves no text."""
        order, counts = [], []
        for x, _, keys, places in self.data.indexed_eval_batches(self.data.val_shards):
            log_probs = self.module(self.cast(self.data.tokens(x)))
            for key, place, row in zip(keys, places, log_probs):
                if key in self.val_text:
                    ref = " ".join(self.val_text[key].upper().split())
                    order.append(place)
                    counts.append(error_counts(ref, greedy_decode(row.float())))
        return {"order": torch.tensor(order, dtype=torch.long),
                "counts": torch.tensor(counts, dtype=torch.float64).reshape(-1, 4)}  # fmt: skip

    def metrics(self, rows: dict) -> dict[str, float]:
        if not len(rows["counts"]):
            raise ValueError(f"{self.data.val_shards} holds no transcribed utterance for CTC")
        return rates_of_counts(rows["counts"])


def ctc_loss(log_probs: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Mean CTC loss per target character of a batch ``[B, T, V]`` against its transcripts."""
    targets = [torch.tensor(text_to_ids(t)) for t in texts]
    steps = torch.full((len(texts),), log_probs.shape[1], dtype=torch.long)
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        torch.cat(targets),
        steps,
        torch.tensor([len(t) for t in targets]),
        blank=BLANK,
        zero_infinity=True,
    )
