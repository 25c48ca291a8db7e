"""The run YAML: one typed config for an end-to-end run, validated before any work starts.

Sections reuse the typed configs of the stages (``data_prep`` and ``training``); defaults wire the
stages together through interpolation (``pretrain.train_shards: ${prep.out}/train``), so a minimal
YAML names a source and a model and gets a complete run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.demo_corpus import DemoCorpusConfig
from data_prep.image_prep import ImagePrepConfig
from training.config import PretrainConfig
from training.evaluate import EvalConfig
from training.typed_config import load_config


@dataclass
class LaunchConfig:
    """How training stages start on this machine."""

    ranks: int = 2  # processes started by the deepspeed launcher (GPUs on a GPU machine)
    launcher: str = "deepspeed"  # deepspeed | python (one rank, no launcher)
    master_port: int | None = None  # None: pick a free port

    def problems(self):
        if self.ranks < 1:
            yield ("ranks", f"an int >= 1, got {self.ranks}")
        if self.launcher not in ("deepspeed", "python"):
            yield ("launcher", f"'deepspeed' or 'python', got {self.launcher!r}")
        if self.launcher == "python" and self.ranks != 1:
            yield ("ranks", "launcher 'python' starts one rank; use 'deepspeed' for more")


@dataclass
class ReportConfig:
    reconstructions: int = 8  # val images in the original | masked | reconstruction grid


@dataclass
class RunConfig:
    name: str = "???"
    run_dir: str = "runs/${name}"
    seed: int = 0
    demo_data: DemoCorpusConfig | None = None  # generate the demo corpus as a first stage
    prep: ImagePrepConfig = field(
        default_factory=lambda: ImagePrepConfig(
            source="???", out="${run_dir}/shards", seed="${seed}"
        )
    )
    pretrain: PretrainConfig = field(
        default_factory=lambda: PretrainConfig(
            train_shards="${prep.out}/train", out_dir="${run_dir}/pretrain", seed="${seed}"
        )
    )
    evaluate: EvalConfig = field(
        default_factory=lambda: EvalConfig(
            export_dir="${pretrain.out_dir}/export",
            train_shards="${prep.out}/train",
            val_shards="${prep.out}/val",
            out_dir="${run_dir}/evaluate",
            seed="${seed}",
        )
    )
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def problems(self):
        if "train" not in self.prep.splits or "val" not in self.prep.splits:
            yield (
                "prep.splits",
                "both 'train' and 'val' (pretraining reads train, evaluation val)",
            )


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load and validate a run YAML; raises ``ConfigError`` naming every bad key."""
    return load_config(RunConfig, [path], overrides)
