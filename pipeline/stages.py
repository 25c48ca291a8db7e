"""The stages of a run, in order: demo_data -> prep -> pretrain -> finetune -> probe -> report.

Each stage names the config it depends on (execution-only knobs such as CPU counts or logging
intervals are left out, so changing them does not redo work), the identity of its inputs, where
it writes, and how it runs. Training stages (pretrain, finetune, probe) run as per-rank processes
under the launcher (``cluster.local``); the rest run in this process. ``finetune`` runs the
modality's tasks that train the encoder, ``probe`` those that read its frozen features
(each task config's ``STAGE``); each writes ``evaluate.out_dir/<stage>/metrics.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cluster.local import (
    PREEMPTED_EXIT,
    deepspeed_command,
    free_port,
    python_command,
    remove_orphan_shm_segments,
    remove_shm_segments,
    run_logged,
    srun_command,
)
from data_prep.corpus import corpus_reader
from data_prep.job import run_prep, summary_line
from data_prep.prep_record import without_new_defaults
from data_prep.shard_format import (
    MANIFEST,
    bad_shard_error,
    file_sha256,
    prepared_splits,
    resized_shards,
    split_record,
)
from data_prep.store import absolute, is_url, location
from pipeline.schema import RunConfig
from pipeline.state import STATE_DIR, listing_signature, tree_signature
from training.config import EVAL_METRICS, pretrain_split
from training.export_format import ENCODER, MAE, MODEL_JSON
from training.metrics import METRICS as TRAIN_METRICS
from training.tasks.config import EVAL_STAGES, tasks_of_stage
from training.typed_config import ConfigError, to_yaml

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    pass


class StagePreempted(StageFailed):
    """A training stage stopped on request after saving a checkpoint; rerunning resumes it."""


@dataclass(frozen=True)
class Stage:
    name: str
    describe: str
    section: Callable[[RunConfig], Any]  # the config this stage's result depends on
    inputs: Callable[[RunConfig], str]  # identity of what it reads; raises if not there yet
    output: Callable[[RunConfig], Path]
    execute: Callable[[RunConfig], None]
    enabled: Callable[[RunConfig], bool] = lambda cfg: True
    # What only the machine that runs the stage can tell (a GPU); raises ConfigError. Checked
    # for every stage still to run before the first one starts.
    preflight: Callable[[RunConfig], None] = lambda cfg: None
    # What is wrong with a finished stage's output now (one stat per file), or None: a damaged
    # output is redone in place, and `maskmill status` shows it.
    damage: Callable[[RunConfig], str | None] = lambda cfg: None
    # Rerun (forced or repairing) in place rather than from an empty output: the stage checks
    # what it finds and rewrites only what is wrong; forced, ``execute`` gets check_hashes=True
    # (prep checks every shard's sha256 then, its sizes on any other rerun).
    redo_in_place: bool = False
    # The earlier stages whose outputs it reads: a submitted job waits for their jobs only (the
    # probe needs the pretrained encoder, not the fine-tune).
    needs: tuple[str, ...] = ()
    # ``inputs`` as an older maskmill computed it, or None: a stage it finished with today's
    # config stays done (pipeline.runner.recorded_state), at that one extra cost, once.
    older_inputs: Callable[[RunConfig], str] | None = None


def _demo_data(cfg: RunConfig) -> None:
    corpus_reader(cfg.modality).write_demo(cfg.demo_data)


def _prep(cfg: RunConfig, check_hashes: bool = False) -> None:
    reader = corpus_reader(cfg.modality)
    for split, stats in run_prep(reader, cfg.prep, check_hashes=check_hashes).items():
        log.info(summary_line(split, stats))


def _prep_damage(cfg: RunConfig) -> str | None:
    """Shards of the finished prep that are missing or changed size (sha256: `maskmill verify`)."""
    damaged = [
        f"{split.name}/{path.name}"
        for split in prepared_splits(cfg.prep.out)
        for path, _ in resized_shards(split)
    ]
    if not damaged:
        return None
    return (
        f"{len(damaged)} shard(s) missing or truncated: "
        + ", ".join(damaged[:3])
        + (", ..." if len(damaged) > 3 else "")
    )


def _intact_shards(*split_dirs: str) -> None:
    """Before ranks start: every shard the stage reads is there at its manifest size (one clear
    failure here, rather than one traceback per rank and loader worker)."""
    for split in split_dirs:
        for path, problem in resized_shards(split)[:1]:
            raise bad_shard_error(path, problem)


def _pretrain(cfg: RunConfig) -> None:
    _intact_shards(*(source.shards for source in cfg.pretrain.sources()))
    config_path = Path(cfg.run_dir) / STATE_DIR / "pretrain.yaml"
    config_path.write_text(to_yaml(cfg.pretrain))
    _launch("pretrain", "training.pretrain", [str(config_path)], cfg)


def _launch(stage: str, module: str, args: list[str], cfg: RunConfig) -> None:
    """Run ``python -m module args`` on every rank of ``launch`` under its launcher."""
    orphans = remove_orphan_shm_segments()  # of ranks killed in earlier runs, any port
    if orphans:
        log.info("removed %d /dev/shm segments left by killed ranks of earlier runs", orphans)
    port = None
    if cfg.launch.launcher == "deepspeed":
        port = cfg.launch.master_port or free_port()
        cmd = deepspeed_command(module, args, cfg.launch.ranks, port)
    elif cfg.launch.launcher == "srun":
        port = os.environ.get("MASTER_PORT")  # set by the sbatch script; cleans this node only
        cmd = srun_command(module, args)
    else:
        cmd = python_command(module, args)
    try:
        _run_child(stage, cmd, cfg)
    finally:  # the ranks unlink their own; this catches those of ranks that were killed
        remove_shm_segments(port)


def _preflight(section: str):
    def check(cfg: RunConfig) -> None:
        device = getattr(cfg, section).device
        if device != "cuda":
            _cpu_preflight(cfg, device, section)
            return
        from training.distributed import DeviceUnavailable, wants_cuda

        try:
            wants_cuda(device)
        except DeviceUnavailable as err:
            raise ConfigError([(f"{section}.device", str(err))]) from None

    return check


def _cpu_preflight(cfg: RunConfig, device: str, section: str) -> None:
    """A CPU run (``device: cpu``, or ``auto`` without a GPU) needs a compiler for DeepSpeed's op."""
    from cluster.local import compiler_problem

    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return
    problem = compiler_problem()
    if problem:
        raise StageFailed(f"{section} cannot start: {problem}")


def eval_out(cfg: RunConfig, stage: str) -> Path:
    """Where the ``finetune`` or ``probe`` stage writes."""
    return Path(cfg.evaluate.out_dir) / stage


def _eval_stage(stage: str):
    def execute(cfg: RunConfig) -> None:
        _intact_shards(cfg.evaluate.train_shards, cfg.evaluate.val_shards)
        config_path = Path(cfg.run_dir) / STATE_DIR / f"{stage}.yaml"
        section = dataclasses.replace(cfg.evaluate, out_dir=str(eval_out(cfg, stage)))
        config_path.write_text(to_yaml(section))
        _launch(stage, "training.evaluate", [stage, str(config_path)], cfg)

    return execute


def _eval_tasks(cfg: RunConfig, stage: str) -> list[str]:
    """The enabled tasks of ``stage`` (names = keys of ``evaluate.tasks``)."""
    tasks = cfg.evaluate.tasks
    return [name for name in tasks_of_stage(tasks, stage) if getattr(tasks, name).enabled]


# absent from older records at these values
TASK_NEW_DEFAULTS = {"mask_time": 0.0, "mask_freq": 0.0, "freeze_epochs": 0, "label_fraction": 1.0}


def _eval_section(stage: str):
    """What a ``finetune`` / ``probe`` result depends on: the section without the other stage's
    tasks, and without how it runs (batch size of scoring passes, micro steps, checkpoints,
    device, loader; nor the world size: a task trains the same on any number of ranks)."""

    def section(cfg: RunConfig):
        tree = OmegaConf.to_container(OmegaConf.structured(cfg.evaluate))
        for key in ("batch_size", "checkpoint_every", "keep_checkpoints", "device", "loader"):
            del tree[key]
        del tree["stall_timeout_s"]  # when a stalled job gives up (absent from older records)
        names = tasks_of_stage(cfg.evaluate.tasks, stage)
        tree["tasks"] = {k: v for k, v in tree["tasks"].items() if k in names}
        for task in tree["tasks"].values():  # absent from older records: old runs stay done
            task.pop("micro_batch", None)
            task.pop("activation_checkpointing", None)  # memory against time, same result
            for key, default in TASK_NEW_DEFAULTS.items():
                if task.get(key, default) == default:
                    task.pop(key, None)
        return tree

    return section


def _eval_inputs(cfg: RunConfig) -> str:
    return "|".join(
        _digest(p)
        for p in (
            Path(cfg.evaluate.export_dir) / ENCODER,
            Path(cfg.evaluate.export_dir) / MODEL_JSON,
            split_record(cfg.evaluate.train_shards, MANIFEST),
            split_record(cfg.evaluate.val_shards, MANIFEST),
        )
    )


def _report_inputs(cfg: RunConfig) -> str:
    metrics = [eval_out(cfg, s) / EVAL_METRICS for s in EVAL_STAGES if _eval_tasks(cfg, s)]
    return "|".join(
        _digest(p)
        for p in (
            *metrics,
            Path(cfg.pretrain.out_dir) / TRAIN_METRICS,
            Path(cfg.evaluate.export_dir) / MAE,
        )
    )


def _report(cfg: RunConfig) -> None:
    from pipeline.report import write_report  # matplotlib: loaded only when a report is due

    path = write_report(cfg)
    log.info("report: %s", path)


def _run_child(stage: str, cmd: list[str], cfg: RunConfig) -> None:
    log_path = Path(cfg.run_dir) / "logs" / f"{stage}.log"
    code = run_logged(cmd, log_path)
    if code == PREEMPTED_EXIT:
        raise StagePreempted(f"{stage} was preempted after saving a checkpoint; rerun to resume")
    if code != 0:
        reason = last_error(log_path)
        raise StageFailed(
            f"{stage} exited with status {code}"
            + (f": {reason}" if reason else "")
            + f"; see {log_path}"
        )


def last_error(log_path: Path) -> str | None:
    """The message of the last ERROR line a stage logged (what it said it died of), if any."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-200:]):
        _, found, message = line.partition(" ERROR ")
        if found:
            return message.partition(": ")[2] or message
    return None


def _prep_section(cfg: RunConfig):
    # Paths absolute: a Ray job reads the same folders by absolute path (its working directory
    # is elsewhere), and must not look like a different stage to a later local run.
    sources = corpus_reader(cfg.modality).sources(cfg.prep)
    section = dataclasses.replace(
        cfg.prep,
        num_cpus=None,
        ray_address=None,
        **{k: absolute(v) for k, v in sources.items()},
        out=absolute(cfg.prep.out),
    )
    tree = OmegaConf.to_container(OmegaConf.structured(section))
    tree.pop("max_failed_share", None)  # what a prep tolerates (absent from older records)
    tree.pop("task_memory_mb", None)  # how Ray schedules it, not what it writes
    return without_new_defaults(tree)  # a run finished before those keys stays finished


def _prep_inputs(cfg: RunConfig, signature=listing_signature) -> str:
    """The listings of every raw folder the prep reads ("missing" for one not there yet)."""
    sources = corpus_reader(cfg.modality).sources(cfg.prep)
    return "|".join(_source_signature(path, signature) for path in sources.values())


def _prep_inputs_before_listings(cfg: RunConfig) -> str:
    """What :func:`_prep_inputs` was before it read listings only (a stat per file)."""
    return _prep_inputs(cfg, tree_signature)


def _source_signature(path: str, signature=listing_signature) -> str:
    """A raw source's identity: a folder's listing (``listing_signature``); every object's
    relative key, size and ETag under a store prefix (a listing gives them); "missing" when
    absent."""
    if not is_url(path):
        return signature(Path(path)) if Path(path).is_dir() else "missing"
    root = location(path)
    if not root.is_dir():
        return "missing"
    fs, prefix = root.fs, root.path.rstrip("/") + "/"
    listing = sorted(fs.find(prefix, detail=True).items())
    rows = [f"{k.removeprefix(prefix)}\0{v.get('size')}\0{v.get('ETag', '')}" for k, v in listing]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


DEMO_NEW_DEFAULTS = {
    "selection_split": False,
    "scene": "object",
}  # absent from older records at these values


def _demo_data_section(cfg: RunConfig):
    if not cfg.demo_data:
        return cfg.demo_data
    tree = dataclasses.asdict(
        dataclasses.replace(cfg.demo_data, out=os.path.abspath(cfg.demo_data.out))
    )
    return {k: v for k, v in tree.items() if DEMO_NEW_DEFAULTS.get(k, object()) != v}


MODEL_NEW_DEFAULTS = {"cls_token": True, "final_norm": True, "stored_positions": False}


def _pretrain_section(cfg: RunConfig):
    # The global batch decides the result, not how it is split: 2 nodes x 8 ranks x 64 and
    # 4 x 8 x 32 are the same run, and a checkpoint of one resumes as the other. Nor does the
    # ZeRO stage (how optimizer state is partitioned) or the device; the stage is hashed as 3,
    # the old default, so recorded runs stay done (an unset stage resumes as the checkpoint was
    # written, training.checkpoint.stage_to_resume).
    p = cfg.pretrain
    quiet = dataclasses.replace(
        p,
        log_every=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        global_batch=None,
        batch_size=1,
        grad_accum=1,
        zero_stage=3,
        device="auto",
    )
    tree = OmegaConf.to_container(OmegaConf.structured(quiet))
    del tree["compile"]  # how the step runs, not what it computes (absent from older records)
    del tree["stall_timeout_s"]  # when a stalled job gives up, not what it trains
    del tree["export_formats"]  # extra copies of the result (`maskmill export` writes them later)
    for key in ("verify_sha256", "on_bad_shard"):  # how shards are checked, not what trains
        del tree["loader"][key]
    del tree["global_batch"]  # hashed below, as it was before the key existed
    del tree["activation_checkpointing"]  # memory against time, the same losses
    del tree["monitor"]  # watches the run, changes nothing in it
    if not tree["data"]:  # absent from older records: one split's stream stays as it was
        del tree["data"]
    if not tree["init"]:  # absent from older records: a run from scratch stays as it was
        del tree["init"], tree["init_accept"]
    for key, default in MODEL_NEW_DEFAULTS.items():  # absent from older records at these values
        if tree["model"][key] == default:
            del tree["model"][key]
    if tree["rollback"]["skip"]:  # batches left out change what trains; the rest only what a
        tree["rollback"] = {"skip": tree["rollback"]["skip"]}  # bad step does, absent before
    else:
        del tree["rollback"]
    return {"pretrain": tree, "global_batch": pretrain_split(p, cfg.launch.world_size).global_batch}


def _digest(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist yet")
    return file_sha256(path)


def _pretrain_inputs(cfg: RunConfig) -> str:
    """The train split's manifest digest; a mixture's, each source's in order."""
    digests = [_digest(split_record(s.shards, MANIFEST)) for s in cfg.pretrain.sources()]
    return digests[0] if len(digests) == 1 else ",".join(digests)


def _evaluation(stage: str, describe: str) -> Stage:
    """The ``finetune`` or ``probe`` stage: the section's tasks of that stage, on every rank."""
    return Stage(
        stage,
        describe,
        section=_eval_section(stage),
        inputs=_eval_inputs,
        output=lambda cfg: eval_out(cfg, stage),
        execute=_eval_stage(stage),
        enabled=lambda cfg: bool(_eval_tasks(cfg, stage)),
        preflight=_preflight("evaluate"),
        needs=("pretrain",),  # and prep's splits, which pretrain already waited for
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "demo_data",
        "generate the demo corpus",
        section=_demo_data_section,
        inputs=lambda cfg: "",
        output=lambda cfg: Path(cfg.demo_data.out),
        execute=_demo_data,
        enabled=lambda cfg: cfg.demo_data is not None,
    ),
    Stage(
        "prep",
        "shard the corpus into WebDataset tars (Ray)",
        section=_prep_section,
        inputs=_prep_inputs,
        older_inputs=_prep_inputs_before_listings,
        output=lambda cfg: location(cfg.prep.out),
        execute=_prep,
        damage=_prep_damage,
        redo_in_place=True,
        needs=("demo_data",),
    ),
    Stage(
        "pretrain",
        "masked pretraining (DeepSpeed)",
        section=_pretrain_section,
        inputs=_pretrain_inputs,
        output=lambda cfg: Path(cfg.pretrain.out_dir),
        execute=_pretrain,
        preflight=_preflight("pretrain"),
        needs=("prep",),
    ),
    _evaluation("finetune", "fine-tuning tasks, pretrained vs random init (DeepSpeed)"),
    _evaluation("probe", "linear probe and k-NN on frozen features, pretrained vs random init"),
    Stage(
        "report",
        "report.html with curves, reconstructions, metrics",
        section=lambda cfg: {"report": cfg.report, "val": cfg.evaluate.val_shards},
        inputs=_report_inputs,
        output=lambda cfg: Path(cfg.run_dir) / "report",
        execute=_report,
        needs=("pretrain", "finetune", "probe"),
    ),
)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]
