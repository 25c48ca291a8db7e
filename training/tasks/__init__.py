"""Downstream tasks: what an encoder is worth, measured on the pretrained and a random-init
encoder alike.

A task has a ``name`` (its key in ``metrics.json``), a ``title`` (the report's), ``directions``
(each metric it returns, ``higher`` or ``lower`` is better: accuracy goes up, WER and perplexity
go down; the report colours gains by it), ``enabled``, and ``run(encoder, data) -> {metric:
value}``. Tasks run one after another on the same encoder, so ``run`` leaves it as it found
it: a task that trains the encoder trains a copy. :class:`Downstream` is what every task may read: the splits, the modality and its input
config, the class count, and features of frozen encoders (extracted once, shared by the probe and
k-NN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from training.tasks.downstream import Downstream

HIGHER, LOWER = "higher", "lower"
ACCURACY = {"top1": HIGHER, "top5": HIGHER}


class Task(Protocol):
    name: str
    title: str
    directions: dict[str, str]
    enabled: bool

    def run(self, encoder: torch.nn.Module, data: Downstream) -> dict[str, float]: ...
