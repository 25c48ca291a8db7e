"""The signal modality's corpus reader: ``<split>/<class>/<n>.npy`` -> samples of ``npy`` (the
float32 signal) and ``cls`` (the class index)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from data_prep.signal.demo import SignalDemoConfig, write_demo

from data_prep.corpus import CorpusReader, prep_problems
from data_prep.writer import Sample, SkipSample


@dataclass
class SignalPrepConfig:
    source: str = "???"
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    samples_per_shard: int = 32
    seed: int = 0
    num_cpus: int | None = None
    ray_address: str | None = None

    def problems(self):
        yield from prep_problems(self)


def _classes(cfg: SignalPrepConfig) -> list[str]:
    return sorted(p.name for p in (Path(cfg.source) / "train").iterdir() if p.is_dir())


def items(cfg: SignalPrepConfig, split: str) -> list[str]:
    root = Path(cfg.source)
    return sorted(str(p.relative_to(root)) for p in (root / split).glob("*/*.npy"))


def encode(cfg: SignalPrepConfig, state, item: str):
    split, cls, name = Path(item).parts
    try:
        wave = np.load(Path(cfg.source) / item).astype(np.float32)
    except (OSError, ValueError) as err:
        raise SkipSample("unreadable_signal", str(err)) from None
    label = _classes(cfg).index(cls)
    yield Sample(f"{split}_{cls}_{Path(name).stem}", {"npy": wave.tobytes(), "cls": b"%d" % label})


READER = CorpusReader(
    modality="signal",
    layout="<split>/<class>/<n>.npy, float32 1-D signals",
    config=SignalPrepConfig,
    items=items,
    fit=lambda cfg, train_items: None,
    encode=encode,
    labels=lambda cfg: [{"index": i, "name": c} for i, c in enumerate(_classes(cfg))],
    demo_config=SignalDemoConfig,
    write_demo=write_demo,
)
