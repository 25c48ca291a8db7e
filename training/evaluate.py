"""Evaluate an exported encoder, one stage at a time, on every rank of the launcher:
``python -m training.evaluate {finetune,probe} CONFIG.yaml [key=value ...]``.

Runs the downstream tasks of the encoder's modality (``evaluate.tasks``) that belong to the
stage: ``finetune`` the tasks that train the encoder (classification fine-tuning; audio's CTC),
``probe`` those that read frozen features (linear probe, k-NN; text's masked-token scores). Each
runs on the pretrained encoder and on a randomly initialised encoder of the same shape, so every
report shows what pretraining bought. A task that trains is a resumable job in
``OUT_DIR/<task>/<encoder>/`` (``training.tasks.trainer``); a rerun skips what finished.

Writes ``OUT_DIR/metrics.json``: per task and encoder the metrics, and under ``tasks`` each
task's title and, per metric, whether higher or lower is better. Exit codes:
``training.rank.EXIT_CODES`` (``--help`` lists them).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from data_prep.shard_format import (
    read_manifest,
)
from training.config import EVAL_METRICS as METRICS
from training.config import EvalConfig, eval_schema
from training.distributed import init_distributed
from training.export import load_encoder, load_model
from training.export_format import ExportInfo, read_export
from training.modalities import Modality
from training.modalities import modality as modality_named
from training.objectives import objective
from training.objectives.mae.model import ViTEncoder
from training.rank import (
    BAD_CONFIG,
    config_from_argv,
    install_stop_handler,
    rank_argv,
    run_rank,
    setup_logging,
)
from training.tasks.config import EVAL_STAGES, tasks_of_stage
from training.tasks.downstream import Downstream, num_classes_of
from training.tasks.trainer import TaskRun
from training.transformer import init_weights
from training.typed_config import ConfigError

log = logging.getLogger("training.evaluate")


def run(cfg: EvalConfig, stage: str) -> dict:
    torch.manual_seed(cfg.seed)
    info = init_distributed(cfg.device)
    export = read_export(cfg.export_dir)
    if export.modality != cfg.modality:
        raise ConfigError(
            [
                (
                    "modality",
                    f"{export.modality}, the modality of {cfg.export_dir}; got {cfg.modality}",
                )
            ]
        )
    modality = modality_named(cfg.modality)  # resolved once, handed down
    data = _downstream(cfg, modality, export, info)
    encoders = _encoders(cfg, modality, export, data)
    names = tasks_of_stage(cfg.tasks, stage)
    tasks = [t for t in modality.ops.tasks(cfg.tasks) if t.enabled and t.name in names]
    out = Path(cfg.out_dir)
    results: dict = {
        "encoder": {"export_dir": str(cfg.export_dir), **export.info},
        "data": {
            "train_samples": sum(r.samples for r in read_manifest(cfg.train_shards)),
            "val_samples": sum(r.samples for r in read_manifest(cfg.val_shards)),
            "classes": data.num_classes,
        },
        "tasks": {t.name: {"title": t.title, "better": dict(t.directions)} for t in tasks},
    }
    for name, make in encoders.items():
        encoder = make().to(info.device)
        for task in tasks:
            scores = task.run(encoder, data, TaskRun(info, cfg, out / task.name / name, export))
            results.setdefault(task.name, {})[name] = scores
            if info.is_main:
                log.info("%s, %s: %s", task.title, name, scores)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS).write_text(json.dumps(results, indent=2) + "\n")
        write_tensorboard(results, out / "tensorboard", step=int(export.info.get("step", 0)))
    return results


def _downstream(cfg: EvalConfig, modality: Modality, export: ExportInfo, info) -> Downstream:
    """The data side of the stage on this rank: splits, views, class count, device."""
    views, group_of = modality.eval_views(export.input, cfg.tasks)
    return Downstream(
        modality=modality,
        input=export.input,
        train_shards=cfg.train_shards,
        val_shards=cfg.val_shards,
        num_classes=num_classes_of(cfg.train_shards),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        views=views,
        group_of=group_of,
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
        loader=cfg.loader,
        precision=cfg.precision,
    )


def write_tensorboard(results: dict, tb_dir: Path, step: int) -> None:
    """Each score as ``eval/<task>/<metric>`` with one curve per encoder (pretrained, random
    init), at the pretraining step evaluated, beside the pretraining curves."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as tb:
        for task in results["tasks"]:
            for encoder, scores in results.get(task, {}).items():
                for metric, value in scores.items():
                    tb.add_scalars(f"eval/{task}/{metric}", {encoder: value}, step)


def _encoders(cfg: EvalConfig, modality: Modality, export: ExportInfo, data: Downstream) -> dict:
    """Name -> a function that builds the encoder to score: the pretrained one and, with
    ``baseline``, a random-init one of the same shape."""
    if not modality.objective.downstream_needs_head:  # the tasks read the encoder alone
        encoders = {"pretrained": lambda: load_encoder(cfg.export_dir)}
        if cfg.baseline:
            encoders["random_init"] = lambda: random_encoder(export, cfg.seed)
        return encoders
    # some tasks need the head too: the whole model is kept beside its encoder
    encoders = {"pretrained": lambda: data.register(load_model(cfg.export_dir))}
    if cfg.baseline:
        encoders["random_init"] = lambda: data.register(random_model(export, cfg.seed))
    return encoders


def random_encoder(export: ExportInfo, seed: int) -> ViTEncoder:
    torch.manual_seed(seed)
    encoder = ViTEncoder(export.model, export.geometry)
    init_weights(encoder)
    return encoder


def random_model(export: ExportInfo, seed: int) -> torch.nn.Module:
    """The whole pretraining model (encoder and head), randomly initialised."""
    torch.manual_seed(seed)
    return objective(export.objective).build_model(export.model, export.geometry, None)


def main(argv: list[str] | None = None) -> int:
    install_stop_handler()  # first: a USR2 during start-up must not kill the rank
    setup_logging()
    argv = rank_argv(argv)
    stage = argv[0] if argv and argv[0] in EVAL_STAGES else None
    if stage is None and argv and argv[0] not in ("-h", "--help"):
        sys.stderr.write(
            f"usage: python -m training.evaluate {{{','.join(EVAL_STAGES)}}} CONFIG.yaml\n"
        )
        return BAD_CONFIG
    cfg = config_from_argv(eval_schema, argv[1:] if stage else argv, __doc__)
    return run_rank(lambda: run(cfg, stage))


if __name__ == "__main__":
    sys.exit(main())
