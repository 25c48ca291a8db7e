"""Masked-token accuracy and perplexity on the held-out corpus split: what the MLM objective
itself measures, scored for the pretrained model and a random-init one of the same shape.

Every sequence of ``val`` (up to ``max_sequences``) is masked once, the same way for both models
(``kind`` and ``ratio`` of this task, seeded by the sample key), and the model's prediction head
scores the chosen tokens: top-1 accuracy, and perplexity ``exp(mean cross-entropy)`` (lower is
better; a model that knows nothing scores about the vocabulary size).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from training.distributed import all_summed
from training.loader import indexed_eval_batches
from training.objectives.mlm.masking import mlm_batch
from training.tasks import HIGHER, LOWER

METRICS = {"accuracy": HIGHER, "perplexity": LOWER}


class MlmEval:
    name, title, directions = "mlm", "Masked tokens (held-out)", METRICS

    def __init__(self, cfg):
        self.cfg = cfg
        self.enabled = cfg.enabled

    @torch.no_grad()
    def run(self, encoder, data, run=None) -> dict[str, float]:
        """Each rank scores its share of the first ``max_sequences`` sequences; the sums are
        gathered (masks are drawn from the sample key, so the split among ranks changes
        nothing)."""
        model = data.pretraining_model(encoder).to(data.device)
        model.eval()
        val = str(Path(data.train_shards).parent / "val")
        vocab = data.input.vocab_size
        loss_sum, hits, count = 0.0, 0, 0
        for x, _, keys, _ in indexed_eval_batches(
            val, data.modality.name, data.input, self.cfg.batch_size, data.rank, data.world_size,
            limit=self.cfg.max_sequences,  # the ranks share the first max_sequences
        ):  # fmt: skip
            batch = mlm_batch(self.cfg.kind, data.seed, 0, keys, x, self.cfg.ratio, vocab)
            _, logits = model.loss_and_logits(batch.to(data.device))
            targets = batch.targets[batch.chosen].to(logits.device)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            hits += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
        loss_sum, hits, count = all_summed(loss_sum, hits, count)
        mean = loss_sum / max(1, count)
        return {
            "accuracy": round(100.0 * hits / max(1, count), 2),
            "perplexity": round(math.exp(mean), 2),
        }
