"""One downstream task trained on one encoder as a distributed, resumable job: the machinery the
fine-tuning tasks (classification, CTC) and the linear probe share.

* **Every rank under DeepSpeed** (the stage's launcher: ``deepspeed`` locally, ``srun`` in a
  Slurm job), ZeRO stage ``evaluate.zero_stage`` (the probe's head: none, see ``EvalConfig``).
* **The same training whatever the world size.** ``batch_size`` is global; each rank takes its
  rows of one global stream (``TrainStreamSpec.rows``), and everything random belongs to a
  sample or a step, not to a rank: augmentations are seeded by the sample's place in the
  stream, mixup pairs by (seed, step, pair), drop path by (seed, step, row). Gradients are
  averaged over ranks, so 2 ranks of 32 take the step 1 rank of 64 takes.
* **Exact resume.** A checkpoint holds the step, the optimizer and schedule, and the best score
  so far; the data stream restarts at the step's place. Checkpoints are written every
  ``checkpoint_every`` steps, after every scoring, and on SIGUSR2 (all ranks at one step, exit
  75; the Slurm job requeues itself). ``metrics.jsonl`` drops what a killed attempt wrote past
  the checkpoint, so every step is logged once.
* **Scoring the val split exactly once**: each rank scores the samples whose place in the split
  is its rank modulo the world size; rank 0 gathers the per-sample outputs, puts them back in
  split order and computes the metrics (no padding, no sample twice), and tells every rank.
* **Exports**: ``best/`` after each scoring that beats the last best, ``last/`` at the end, each
  ``model.safetensors`` (encoder + head), ``encoder.safetensors`` and ``model.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from training import checkpoint
from training.batching import BatchSplit, split_batch
from training.config import EvalConfig
from training.distributed import DistInfo, StepAgreement, from_rank0
from training.export_format import ENCODER, ExportInfo, write_model_json
from training.loader import Batch, weighted
from training.metrics import MetricsLog
from training.rank import NonFiniteLoss, Preempted, stop_requested
from training.schedule import warmup_cosine
from training.tasks import HIGHER
from training.tasks.downstream import gathered_in_order
from training.watchdog import Watchdog

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
RESULT = "result.json"  # written last: the task is done on this encoder
BEST, LAST = "best", "last"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Schedule:
    """Lengths and rates of one task's training, resolved against its train split."""

    epochs: int
    batch_size: int  # global
    steps_per_epoch: int
    lr: float  # peak, before each group's lr_scale
    warmup_steps: int
    eval_every: int  # epochs
    micro_batch: int | None = None  # the most rows of one forward on a rank
    frozen_steps: int = 0  # the first steps, in which the encoder's lr is 0

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch

    def scores_at(self, done: int) -> bool:
        """Whether the val split is scored after step ``done``."""
        epoch, rest = divmod(done, self.steps_per_epoch)
        return done == self.total or (rest == 0 and epoch % self.eval_every == 0)


def schedule_for(task_cfg, samples: int) -> Schedule:
    batch = task_cfg.batch_size
    per_epoch = max(1, samples // batch)  # whole global batches (the last partial one dropped)
    return Schedule(
        epochs=task_cfg.epochs,
        batch_size=batch,
        steps_per_epoch=per_epoch,
        lr=task_cfg.base_lr * batch / 256,
        warmup_steps=task_cfg.warmup_epochs * per_epoch,
        eval_every=task_cfg.eval_every,
        micro_batch=task_cfg.micro_batch,
        frozen_steps=getattr(task_cfg, "freeze_epochs", 0) * per_epoch,
    )


def lr_factors(groups: list[dict], schedule: Schedule) -> list:
    """Each param group's lr factor by optimizer step (0-based): warmup + cosine, held at 0 for
    the encoder's groups during the first ``schedule.frozen_steps`` (only the head trains)."""

    def shape(step: int) -> float:
        return warmup_cosine(step, schedule.total, schedule.warmup_steps, 1.0, 0.0)

    def frozen(step: int) -> float:
        return 0.0 if step < schedule.frozen_steps else shape(step)

    return [frozen if schedule.frozen_steps and g.get("encoder") else shape for g in groups]


@dataclass
class TaskRun:
    """What a training task gets from the stage process: the world, the section, its folder."""

    info: DistInfo
    cfg: EvalConfig
    out: Path  # this task x encoder
    export: ExportInfo  # of the pretrained encoder (model.json of the exports)

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a global batch."""
        per_rank = batch_size // self.info.world_size
        return self.info.rank * per_rank, (self.info.rank + 1) * per_rank


class Job:
    """A task's side of training: the module the engine trains, its optimizer's parameter
    groups, this rank's batches, the loss of a batch, and the scoring of the val split.
    Subclasses fill these in (``finetune``, ``ctc``, ``probe``)."""

    module: nn.Module
    engine: Any = None  # DeepSpeed's, set by train(): training forwards go through it
    dtype: torch.dtype = torch.float32  # of the inputs, set by train()
    optimizer = "adamw"  # adamw | lars
    zero_stage: int | None = None  # None: the section's
    metric: tuple[str, str] = ("top1", HIGHER)  # what "best" is judged by
    rows_multiple: int = 1  # a micro batch's rows are a multiple of it (2: mixed in pairs)

    def param_groups(self, lr: float) -> list[dict]:
        raise NotImplementedError

    def batches(self, skip_steps: int) -> Iterator[Any]:
        """This rank's rows of each global batch from step ``skip_steps`` on (an item may be None:
        every row of it failed to decode)."""
        raise NotImplementedError

    def loss(self, batch, step: int, first_row: int) -> torch.Tensor:
        """The mean loss of ``batch``: rows ``first_row`` on of global batch ``step``."""
        raise NotImplementedError

    def val_rows(self) -> dict[str, torch.Tensor]:
        """What this rank scored of the val split (its share), as tensors of one row per
        sample: ``order`` (where the row goes back to in the split) and what ``metrics`` reads.
        Tensors, so the gather moves fixed-shape buffers, never pickles."""
        raise NotImplementedError

    def metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """The scores of every val sample's rows, gathered and in split order (rank 0 only)."""
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        """What the exports hold: by default the whole module."""
        return self.module.state_dict()

    def cast(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token values in the training precision; token ids (text) as they are."""
        return tokens.to(self.dtype) if tokens.is_floating_point() else tokens


def train(job: Job, run: TaskRun, schedule: Schedule, desc: str) -> dict[str, float]:
    """Train ``job`` to the end of its schedule (resuming what a killed or preempted attempt
    left), export the best and last models, and return the last scores (on every rank)."""
    result_path = run.out / RESULT
    if result_path.exists():
        return json.loads(result_path.read_text())["last"]
    split = split_batch(
        schedule.batch_size, run.info.world_size, schedule.micro_batch, job.rows_multiple
    )
    ckpt_dir = run.out / CKPT_DIR
    engine = _engine(job, run, schedule, split)
    state = checkpoint.resume_state(engine, ckpt_dir)
    start, best = state.get("step", 0), state.get("best")
    if run.info.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        log.info(
            "%s: %d ranks, %d steps of %d (%d micro steps of %d a rank, from %d), lr %.3g, ZeRO-%d",
            desc, run.info.world_size, schedule.total, schedule.batch_size, split.accum,
            split.micro, start, schedule.lr, engine.zero_optimization_stage(),
        )  # fmt: skip
    metrics_log = MetricsLog(run.out, start, prefix=desc) if run.info.is_main else None
    try:
        best, last = _steps(job, run, schedule, split, engine, start, best, metrics_log, desc)
    finally:
        if metrics_log:
            metrics_log.close()
    weights = master_weights(job)  # a collective: every rank
    if run.info.is_main:
        _export(job, run, LAST, schedule.total, last, weights)
        result = {"last": last, "best": best, "steps": schedule.total}
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the exports hold what is worth keeping
    return last


def _steps(job, run, schedule, split, engine, start, best, metrics_log, desc):
    """The training loop from ``start`` (< total: a finished loop wrote RESULT); returns the
    best so far and the last scores."""
    info, cfg = run.info, run.cfg
    first_row = run.rows(schedule.batch_size)[0]
    agreement = StepAgreement(info.device, split.accum)
    batches = weighted(job.batches(start))
    bar = tqdm(total=schedule.total, initial=start, desc=desc, unit="step",
               disable=not info.is_main, dynamic_ncols=True, leave=False)  # fmt: skip
    last = None
    job.module.train()
    window = time.perf_counter()
    watchdog = Watchdog(run.out, info.rank, info.world_size, cfg.stall_timeout_s)
    try:
        for step in range(start, schedule.total):
            verdict = _trained_step(job, engine, agreement, next(batches), step, split,
                                    first_row, desc)  # fmt: skip
            done = step + 1
            watchdog.beat(done)
            bar.update(1)
            if metrics_log:
                now = time.perf_counter()
                metrics_log.write({
                    "step": done, "loss": verdict.loss, "lr": engine.get_lr()[0],
                    "samples_per_s": schedule.batch_size / (now - window), "time": time.time(),
                })  # fmt: skip
                window = now
            scored = schedule.scores_at(done)
            if scored:
                watchdog.beat(done, force=True)  # scoring is slow, not stalled: timed from here
                last, best = _scored(job, run, schedule, done, best, metrics_log)
                watchdog.beat(done, force=True)
                window = time.perf_counter()
            stop = verdict.stop and done < schedule.total
            if done < schedule.total and (done % cfg.checkpoint_every == 0 or scored or stop):
                watchdog.beat(done, force=True)
                checkpoint.save(engine, run.out / CKPT_DIR, done, cfg.keep_checkpoints,
                                info.is_main, extra={"best": best})  # fmt: skip
                watchdog.beat(done, force=True)
                window = time.perf_counter()
            if stop:
                raise Preempted(f"preempted: {run.out} saved at step {done}; rerun to resume")
    finally:
        bar.close()
        watchdog.close()
    return best, last


def _trained_step(job, engine, agreement, weighted_batch, step, split, first_row, desc):
    """One optimizer step over the rank's micro batches; the step's verdict, agreed by every
    rank in the one all-reduce."""
    batch, weight = weighted_batch
    for m, micro in enumerate(micro_batches(batch, split.accum)):
        loss = job.loss(micro, step, first_row + m * split.micro) * weight
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer after the last micro step
        agreement.add(loss.detach())
    verdict = agreement.agree(stop=stop_requested())
    if verdict.non_finite_ranks:
        raise NonFiniteLoss(f"{desc}: loss became non-finite at step {step + 1}")
    return verdict


def _scored(job, run, schedule, done, best, metrics_log):
    """Score the val split after step ``done``, log it, and export the model when it beats
    ``best``; returns the scores and the best so far."""
    last, counted = score(job, run)
    improved = best is None or _better(job.metric, last, best["scores"])  # alike on every rank
    weights = master_weights(job) if improved else None  # a collective: every rank
    if improved:
        best = {"step": done, "scores": last}
    if run.info.is_main:
        metrics_log.write({"step": done, "epoch": done / schedule.steps_per_epoch,
                           "val": last, "val_samples": counted})  # fmt: skip
        if improved:
            _export(job, run, BEST, done, last, weights)
    return last, best


def master_weights(job: Job) -> dict[str, torch.Tensor]:
    """What the exports hold, each parameter as DeepSpeed's fp32 master copy where it keeps one
    (bf16 training: the module holds the bf16 copy, which loses the low bits of every weight),
    gathered from the ranks' ZeRO partitions. A collective: called on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for param in job.module.parameters():
        full = safe_get_full_fp32_param(param) if job.engine is not None else None
        if full is not None:
            masters[param.data_ptr()] = full
    return {k: masters.get(v.data_ptr(), v) for k, v in job.weights().items()}


def score(job: Job, run: TaskRun) -> tuple[dict[str, float], int]:
    """The val split scored once across ranks (see the module docstring), and how many samples
    were scored; on every rank."""
    job.module.eval()
    with torch.no_grad():
        mine = job.val_rows()
    job.module.train()
    gathered = gathered_in_order(mine)
    scores = job.metrics(gathered) if run.info.is_main else None
    return from_rank0(scores), len(gathered["order"])


def _better(metric: tuple[str, str], new: dict, old: dict) -> bool:
    name, direction = metric
    return new[name] > old[name] if direction == HIGHER else new[name] < old[name]


def micro_batches(batch: Batch, accum: int) -> list[Batch]:
    """A rank's rows cut into ``accum`` equal micro batches, in order."""
    if accum == 1:
        return [batch]
    x, labels, keys = batch
    size = len(x) // accum
    cuts = [slice(m * size, (m + 1) * size) for m in range(accum)]
    return [(x[c], labels[c], None if keys is None else keys[c]) for c in cuts]


def _engine(job: Job, run: TaskRun, schedule: Schedule, split: BatchSplit):
    import deepspeed

    from training.lars import LARS

    cfg, info = run.cfg, run.info
    groups = job.param_groups(schedule.lr)
    if job.optimizer == "lars":
        optimizer = LARS(groups, lr=schedule.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(groups, schedule))
    stage = cfg.zero_stage if job.zero_stage is None else job.zero_stage
    on_cuda = info.device.type == "cuda"
    bf16 = cfg.precision == "bf16" and job.optimizer != "lars"
    engine, _, _, _ = deepspeed.initialize(
        args=SimpleNamespace(device_rank=info.device.index if on_cuda else -1),
        model=job.module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config={
            "train_micro_batch_size_per_gpu": split.micro,
            "gradient_accumulation_steps": split.accum,
            "train_batch_size": split.global_batch,
            "zero_optimization": {"stage": stage, "overlap_comm": on_cuda},
            "bf16": {"enabled": bf16, "check_grad_overflow": False},  # see ds_config
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        },
    )
    job.dtype = torch.bfloat16 if bf16 else torch.float32
    job.engine = engine  # what a training forward goes through
    return engine


def _export(
    job: Job, run: TaskRun, name: str, step: int, scores: dict, weights: dict[str, torch.Tensor]
) -> None:
    """``OUT/<name>/``: ``weights`` (:func:`master_weights`, fp32), the encoder's alone, and
    model.json with the task, the step and the scores (rank 0; written beside and renamed, so a
    kill leaves the previous export whole)."""
    out = run.out / name
    tmp = run.out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
    save_file(state, str(tmp / WEIGHTS))
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if encoder:
        save_file(encoder, str(tmp / ENCODER))
    facts = {**run.export.info, "task": run.out.parent.name, "task_step": step, "scores": scores}
    write_model_json(tmp, ExportInfo(run.export.modality, run.export.objective,
                                     run.export.input, run.export.model, facts))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
