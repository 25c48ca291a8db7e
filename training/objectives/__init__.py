"""Pretraining objectives, one room each: ``training/objectives/<name>/``.

An objective is the second axis beside the modality: which model a run trains, what one micro
step feeds it, what its encoder is for the downstream tasks, and what the report says of it.
Its room's ``bundle.py`` defines ``OBJECTIVE``, a frozen :class:`Objective`; the modality names
its objective by one word (``Modality.objective``) and :func:`objective` finds the bundle by
that convention, as :func:`training.modalities.modality` finds a modality. Shared code asks the
bundle and never compares the word. Reading a bundle imports no torch (a login node validates
configs without it); what runs on tensors is imported when first called.

* ``mae`` (``model.py``, ``masking.py``): the encoder sees the visible tokens only; a light
  decoder reconstructs the masked ones. Masks depend on the token grid alone.
* ``mlm`` (``model.py``, ``masking.py``, ``scores.py``): the encoder sees every token, masked
  ones replaced 80/10/10; a head tied to the embeddings predicts them. Which tokens are chosen
  depends on the ids themselves (special tokens and word boundaries).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training import _joined, rooms

__path__ += _joined(__path__, __name__)  # a user's own objective rooms join


@dataclass(frozen=True)
class Objective:
    name: str
    # (model config, token geometry, mask kind or None) -> the pretraining model
    build_model: Callable[[Any, Any, str | None], Any]
    # (mask config, seed, micro step, keys, collated batch, geometry, progress in [0, 1]) -> what
    # the step feeds the model beside the batch, on the CPU (has .pin_memory() and .to())
    step_inputs: Callable[..., Any]
    # (engine, modality, input config, batch on the host, step inputs on the device, device,
    # dtype) -> the step's loss
    loss: Callable[..., Any]
    # (mask config, seed, keys, batch, geometry) -> the masking the report's figure shows
    figure_inputs: Callable[..., Any]
    # (model config) -> the report's row about what sits on the encoder
    head_fact: Callable[[Any], tuple[str, str]]
    # (mask config, token grid) -> the report's row about the mask
    mask_fact: Callable[[Any, tuple[int, ...]], tuple[str, str]]
    # The report's figure shows the pretraining corpus's held-out split (True) or the
    # evaluation's val split (False).
    figure_on_pretrain_split: bool = False
    # Downstream tasks get the whole model (its head scores), not the encoder alone.
    downstream_needs_head: bool = False
    allows_mixing: bool = True  # mixup / cutmix in fine-tuning
    allows_per_sample: bool = True  # several masks per decoded sample (pretrain.mask.per_sample)
    on_masking_frontier: bool = False  # the report places the run on the measured frontier
    # (model, path, accepted missing prefixes) -> what was loaded: starts the pretraining model
    # from a published checkpoint (pretrain.init); None: this objective reads none
    load_published: Callable[..., Any] | None = None


@functools.cache
def names() -> tuple[str, ...]:
    """The objective words: the rooms of this package that hold a ``bundle`` module, sorted."""
    return rooms(__path__, __name__, "bundle")


def objective(name: str) -> Objective:
    """The bundle of the objective called ``name``."""
    if name not in names():
        raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}.bundle").OBJECTIVE
