"""The prepared splits a pretraining stream draws from (``pretrain.data``, or ``train_shards``
alone): checked before any work to hold samples of the run's modality, encoded alike, and
sized for ``pretrain.epochs``.

A mixture's splits must agree on what a sample's values mean: a text split tokenised by another
tokenizer, or an audio split normalised with other log-mel statistics, would train on ids or
values that mean something else. Such a split is refused by its key, naming the file that
differs (the modality lists those files: ``Modality.encoding_files``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from data_prep.shard_format import read_manifest, read_shard_samples
from data_prep.store import location
from training.config import DataSource
from training.modalities import Modality


def source_problems(sources: Sequence[DataSource], modality: Modality) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for each source that is not of ``modality`` or not encoded as
    the first one is. One source (no mixture) is checked by the loader as before."""
    if len(sources) < 2:
        return []
    problems = []
    first = _encoding(sources[0].shards, modality)
    for i, source in enumerate(sources):
        key = f"pretrain.data[{i}].shards"
        found = _members(source.shards)
        if found is not None and not found & (set(modality.members) - {"cls"}):  # cls: any labels
            problems.append((key, f"a split of {modality.name} samples (members "
                                  f"{', '.join(modality.members)}); {source.shards} holds "
                                  f"{', '.join(sorted(found))}"))  # fmt: skip
            continue
        for name, digest in _encoding(source.shards, modality).items():
            if digest != first.get(name):
                problems.append((key, f"prepared with the {name} of data[0] ({sources[0].shards}): "
                                      f"its {name} differs, so its samples mean something else"))  # fmt: skip
    return problems


def epoch_samples(sources: Sequence[DataSource]) -> int:
    """Samples of one pass over the stream: each source's, times its ``repeat`` when given."""
    total = 0.0
    for source in sources:
        samples = sum(r.samples for r in read_manifest(source.shards))
        total += samples * (source.repeat if source.repeat is not None else 1.0)
    return int(total)


def _members(split: str) -> set[str] | None:
    """The member kinds of the split's first sample (None: the split holds none)."""
    records = [r for r in read_manifest(split) if r.samples]
    if not records:
        return None
    sample = next(read_shard_samples(str(location(split) / records[0].file)), {})
    return {k for k in sample if not k.startswith("__")}


def _encoding(split: str, modality: Modality) -> dict[str, str]:
    """The sha256 of each of the modality's encoding files beside ``split`` (absent: '')."""
    found = {}
    for name in modality.encoding_files:
        path = location(split).parent / name
        found[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
    return found
