"""Modalities, looked up by name: what training needs to know about one kind of data.

A modality is one word in the run YAML (``modality: image``). Its room here,
``training/modalities/<name>/``, holds ``bundle.py``, which defines ``MODALITY``, a frozen :class:`Modality` bundle: the
config classes it gives the ``pretrain.input`` and ``evaluate.tasks`` sections, the mask kinds it
allows, its token geometry, the shard members it reads, its objective and its throughput unit.
What runs on data, :class:`ModalityOps` (decode a sample, tokenize a batch, the downstream tasks,
the report figure), lives in the module that ``Modality.ops`` imports on first use: reading and
validating a config never imports torch, so a login node renders cluster scripts without it.

The engine loop, loader, model, evaluation and report call only these. Nothing registers itself
at import time: :func:`modality` imports the module named by the word (as torchtitan finds a
model's spec by name), and :func:`names` lists the words the run YAML accepts: the rooms that
hold a bundle, here or in a package laid out like ours elsewhere on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import importlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training import _joined, rooms

if TYPE_CHECKING:
    import torch

    from training.objectives import Objective

DEFAULT = "image"

__path__ += _joined(__path__, __name__)  # a user's own modality rooms join


@dataclass(frozen=True)
class TokenGeometry:
    """Tokens per grid axis (row-major) and values per token: what the model is built for."""

    grid: tuple[int, ...]
    values_per_token: int
    # Tokens are ids into a vocabulary of this size (text), embedded by a table, not values
    # projected by a linear layer; 0 for value tokens.
    vocab_size: int = 0

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


@dataclass(frozen=True)
class Example:
    """One decoded sample: ``x`` as the loader collates it (e.g. uint8 ``[3, S, S]``)."""

    x: torch.Tensor
    label: int
    key: str


@dataclass(frozen=True)
class ModalityOps:
    """What a modality does to data (imports torch and its decoders)."""

    # (input config, shard sample, rng) -> Example, or None when it cannot be decoded; a training
    # sample is augmented with ``rng``, an evaluation sample (rng None) is not.
    decode: Callable[[Any, dict, random.Random | None], Example | None]
    # (input config, collated batch on its device) -> float tokens [B, N, values_per_token]
    tokenize: Callable[[Any, torch.Tensor], torch.Tensor]
    tasks: Callable[[Any], Sequence[Any]]  # tasks config -> the downstream tasks to run
    # (input config, model, collated batch, mask, title, **figure_context) -> a matplotlib
    # Figure for the report
    reconstruction_figure: Callable[..., Any]
    # (the prepared corpus folder the figure's split lies in) -> what else the figure needs
    # (text: the tokenizer that spells the ids)
    figure_context: Callable[[Any], dict] = lambda prepared_root: {}


@dataclass(frozen=True)
class Modality:
    name: str
    unit: str  # what throughput counts: "images", "seconds of audio", "clips", "tokens"
    objective: Objective  # what a run of this modality pretrains (training.objectives)
    members: tuple[str, ...]  # shard members the loader reads
    mask_kinds: tuple[str, ...]  # accepted values of pretrain.mask.kind
    mask_ratio: float  # the default of pretrain.mask.ratio (the first mask kind is the default)
    input_config: type  # the pretrain.input section
    tasks_config: type  # the evaluate.tasks section
    geometry: Callable[[Any], TokenGeometry]  # input config -> token geometry
    ops_module: str  # the module whose OPS is this modality's ModalityOps
    # The prepared splits evaluation trains and scores on (audio: the labelled set, not the
    # unlabelled pretraining corpus).
    eval_splits: tuple[str, str] = ("train", "val")
    # input config -> how many ``unit`` one sample is (audio: the clip's seconds)
    unit_per_sample: Callable[[Any], float] = lambda cfg: 1.0
    # (input config, train split dir) -> the input config with values measured at prep time
    # filled in (audio: log-mel mean and std); what the export records.
    bind_input: Callable[[Any, str], Any] = lambda cfg, train_shards: cfg
    # Files beside the splits that define what a sample's values mean (text: the tokenizer;
    # audio: the log-mel statistics): splits mixed in one pretraining stream must share them.
    encoding_files: tuple[str, ...] = ()
    # (input config, tasks config) -> the input configs the val split is scored under and the
    # function of a sample key that groups their outputs for averaging (None: each sample
    # alone). Video's multi-view test: three crops, every clip of a video averaged.
    eval_views: Callable[[Any, Any], tuple[list, Callable[[str], str] | None]] = lambda cfg, tasks: (
        [cfg],
        None,
    )
    # A model.json written before the seam (no "modality" key) -> today's layout.
    upgrade_export: Callable[[dict], dict] = lambda desc: desc
    # (stage name, today's section of a run config) -> the YAML texts an older maskmill hashed
    # for it, so a run directory it finished still reads as done (image: maskmill 0.1's layout)
    older_sections: Callable[[str, Any], list[str]] = lambda stage, section: []
    # Run-YAML keys of an older layout -> where they live now (named in the error).
    moved_keys: dict[str, str] = field(default_factory=dict)
    # Why the encoder has no exact HF transformers / timm form (training.export_interop), or
    # None when it is a ViT over patches of a picture (image; audio's spectrogram).
    foreign_export_problem: str | None = "no HF or timm mapping is written for it"
    # input config -> the HF image processor's config that does the evaluation transform
    hf_processor: Callable[[Any], dict] | None = None

    @functools.cached_property
    def ops(self) -> ModalityOps:
        return importlib.import_module(self.ops_module).OPS


@functools.cache
def names() -> tuple[str, ...]:
    """The modality words: the rooms of this package that hold a ``bundle`` module, sorted."""
    return rooms(__path__, __name__, "bundle")


def modality(name: str) -> Modality:
    """The bundle of the modality called ``name``."""
    if name not in names():
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(names())}")
    return importlib.import_module(f"training.modalities.{name}.bundle").MODALITY
