"""The run YAML: one typed config for an end-to-end run, validated before any work starts.

Sections reuse the typed configs of the stages (``data_prep`` and ``training``); defaults wire the
stages together through interpolation (``pretrain.train_shards: ${prep.out}/train``), so a minimal
YAML names a source and a model and gets a complete run.

Loading takes two passes: the top-level ``modality`` (default ``image``) picks the config classes
of ``prep`` (its corpus reader's), ``pretrain.input``, ``pretrain.mask`` kinds and
``evaluate.tasks``; then the whole file is validated against them, with dotted-key errors for
every section alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cluster.slurm_config import SlurmConfig
from data_prep.corpus import corpus_reader
from training.batching import BatchSplitError, split_batch
from training.config import (
    EvalConfig,
    MonitorConfig,
    PretrainConfig,
    default_mask,
    modality_of,
    pretrain_split,
)
from training.modalities import DEFAULT as DEFAULT_MODALITY
from training.modalities import modality as modality_named
from training.typed_config import ConfigError, load_config

LAUNCHERS = ("deepspeed", "python", "srun")
# Keys of an older layout, of every modality -> where they live now.
MOVED_KEYS = {"slurm.evaluate": "slurm.finetune and slurm.probe (one job per stage)"}


@dataclass
class LaunchConfig:
    """The training world (``nodes`` x ``ranks``) and how its processes start.

    The world size decides the global batch, the data order and the checkpoint layout, so it is
    part of the pretrain stage's fingerprint; the launcher is not, so a run started locally can
    go on under Slurm with the same world size.
    """

    ranks: int = 2  # ranks per node (GPUs per node on a GPU machine)
    nodes: int = 1  # more than one needs a cluster: `maskmill submit --slurm`
    launcher: str = "deepspeed"  # deepspeed | python (one rank) | srun (inside a Slurm job)
    # None: a free port (one machine); under Slurm one below the first node's ephemeral range,
    # from the job id and its requeue count (cluster.sbatch)
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.ranks * self.nodes

    def problems(self):
        if self.ranks < 1:
            yield ("ranks", f"an int >= 1, got {self.ranks}")
        if self.nodes < 1:
            yield ("nodes", f"an int >= 1, got {self.nodes}")
        if self.launcher not in LAUNCHERS:
            yield ("launcher", f"one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            yield ("master_port", f"a TCP port in [1, 65535] or null, got {self.master_port}")
        if self.launcher == "python" and self.world_size != 1:
            yield ("ranks", "launcher 'python' starts one rank; use 'deepspeed' for more")


@dataclass
class ReportConfig:
    POSITIVE: ClassVar = ("reconstructions",)

    reconstructions: int = 8  # val images in the original | masked | reconstruction grid


@dataclass
class RunConfig:
    # run name
    name: str = "???"
    # picks the keys of demo_data, prep, pretrain.input, pretrain.mask and evaluate.tasks (see
    # `maskmill modalities` for the words and each modality's section below)
    modality: str = DEFAULT_MODALITY
    # everything the run makes goes here
    run_dir: str = "runs/${name}"
    # seeds the shard plan, masks, augmentation and evaluation
    seed: int = 0
    demo_data: Any = None  # the modality's demo corpus, generated as a first stage when set
    prep: Any = None  # the modality's prep config (see ``run_schema``)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # used by `maskmill submit --slurm`
    report: ReportConfig = field(default_factory=ReportConfig)

    def problems(self):
        needed = tuple(dict.fromkeys(("train", *modality_named(self.modality).eval_splits)))
        if any(split not in self.prep.splits for split in needed):
            yield (
                "prep.splits",
                f"{', '.join(map(repr, needed))} (pretraining reads train, evaluation the others)",
            )
        yield from _batch_problems(self)
        for section in ("pretrain", "evaluate"):
            if getattr(self, section).modality != self.modality:
                yield (
                    f"{section}.modality",
                    f"the run's modality {self.modality!r} (leave it unset)",
                )


def _batch_problems(cfg: RunConfig):
    """The pretraining and every training task's global batch split evenly over the ranks (and
    into pairs on each rank where a task mixes samples)."""
    world = cfg.launch.world_size
    if world < 1:
        return  # launch's own check names it
    ranks = _world_words(cfg.launch)
    try:
        pretrain_split(cfg.pretrain, world)
    except BatchSplitError as e:
        yield ("pretrain.global_batch", f"a multiple of {ranks}: {e}")
    tasks = cfg.evaluate.tasks
    for f in dataclasses.fields(tasks):
        task = getattr(tasks, f.name)
        # a task that trains has a global batch (and micro_batch); a scoring pass's batch_size
        # (the MLM task's) is per rank, any size
        if not getattr(task, "enabled", False) or not hasattr(task, "micro_batch"):
            continue
        mixing = getattr(task, "mixup", 0) > 0 or getattr(task, "cutmix", 0) > 0
        if mixing and not modality_named(cfg.modality).objective.allows_mixing:
            yield (f"evaluate.tasks.{f.name}.mixup", "0 (mixup, cutmix) for token ids")
        try:
            split_batch(task.batch_size, world, task.micro_batch, 2 if mixing else 1)
        except BatchSplitError as e:
            need = "an even multiple" if mixing else "a multiple"
            yield (f"evaluate.tasks.{f.name}.batch_size", f"{need} of {ranks}: {e}")


def _world_words(launch: LaunchConfig) -> str:
    """``the 24 ranks (launch.nodes 3 x launch.ranks 8)``: the world size and where it is set."""
    return (
        f"the {launch.world_size} ranks (launch.nodes {launch.nodes} x launch.ranks {launch.ranks})"
    )


def run_schema(raw: Any) -> RunConfig:
    """The defaults a run YAML is validated against, typed by its ``modality``; the stages are
    wired together by interpolation."""
    name = modality_of(raw)
    m = modality_named(name)
    reader = corpus_reader(name)
    _refuse_moved_keys(raw, {**MOVED_KEYS, **m.moved_keys})
    wants_demo = raw is not None and raw.get("demo_data") is not None
    eval_train, eval_val = m.eval_splits
    return RunConfig(
        modality=name,
        demo_data=reader.demo_config() if wants_demo else None,
        prep=reader.config(source="???", out="${run_dir}/shards", seed="${seed}"),
        pretrain=PretrainConfig(
            modality="${modality}",
            input=m.input_config(),
            mask=default_mask(m),
            train_shards="${prep.out}/train",
            out_dir="${run_dir}/pretrain",
            seed="${seed}",
            monitor=MonitorConfig(
                train_shards="${evaluate.train_shards}", val_shards="${evaluate.val_shards}"
            ),
        ),
        evaluate=EvalConfig(
            modality="${modality}",
            tasks=m.tasks_config(),
            export_dir="${pretrain.out_dir}/export",
            train_shards="${prep.out}/" + eval_train,
            val_shards="${prep.out}/" + eval_val,
            out_dir="${run_dir}/evaluate",
            seed="${seed}",
        ),
    )


def _refuse_moved_keys(raw: Any, moved: dict[str, str]) -> None:
    """A run YAML that still uses a key from an older layout is told where it went, rather
    than "unknown key"."""
    problems = []
    for old, new in moved.items():
        parent, _, leaf = old.rpartition(".")
        node = raw
        for part in parent.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if hasattr(node, "get") and leaf in node:
            problems.append((old, f"moved to {new}"))
    if problems:
        raise ConfigError(problems)


def load_run_config(
    paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()
) -> RunConfig:
    """Load and validate a run YAML (or several, merged in order); raises ``ConfigError``
    naming every bad key and where it was set."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    return load_config(run_schema, paths, overrides)
