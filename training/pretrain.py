"""Masked pretraining of any modality under DeepSpeed: ``python -m training.pretrain CONFIG.yaml [k=v]``.

Run it under any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR (``deepspeed``, ``torchrun``,
``srun``), or plainly for one rank. It resumes from the newest complete checkpoint in
``OUT_DIR/checkpoints``, writes ``metrics.jsonl`` and TensorBoard logs, and at the end exports the
consolidated model to ``OUT_DIR/export`` (``encoder.safetensors``, ``mae.safetensors``,
``model.json``).

Preemption: on SIGUSR2 (what the Slurm scripts ask for before the time limit) every rank finishes
the step it is in, all ranks save a checkpoint at the same step, and the process exits with
status 75; a rerun resumes from that checkpoint. Exit codes: ``training.rank.EXIT_CODES``
(``--help`` lists them).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from training import checkpoint
from training.batching import BatchSplitError
from training.config import PretrainConfig, for_world, pretrain_schema
from training.distributed import (
    DistInfo,
    StepAgreement,
    Verdict,
    every_ranks_keys,
    init_distributed,
    launch_env,
    leave_process_group,
)
from training.ds_config import deepspeed_config, resolved_zero_stage
from training.export import export_from_checkpoint
from training.export_format import ExportInfo
from training.export_interop import write_interop
from training.loader import SkipCounts, mixed_train_spec, train_loader, weighted
from training.metrics import MetricsLog
from training.mixture import MixPlan
from training.modalities import Modality
from training.modalities import modality as modality_named
from training.monitor import Monitor
from training.rank import (
    BadConfig,
    NonFiniteLoss,
    Preempted,
    config_from_argv,
    install_stop_handler,
    rank_argv,
    run_rank,
    setup_logging,
    stop_requested,
)
from training.rollback import Rollbacks, bad_step_reason, stream_index
from training.schedule import warmup_cosine
from training.sources import epoch_samples, source_problems
from training.tasks.downstream import num_classes_of
from training.transformer import checkpoint_blocks, param_groups
from training.typed_config import to_yaml
from training.watchdog import Watchdog

log = logging.getLogger("training.pretrain")

EXPORT_DIR = "export"
CKPT_DIR = "checkpoints"
DONE = "_DONE"


@dataclass(frozen=True)
class Plan:
    """Lengths and rates resolved against the train split's size."""

    total_steps: int
    warmup_steps: int
    peak_lr: float
    effective_batch: int
    train_samples: int


def make_plan(cfg: PretrainConfig, world_size: int, train_samples: int) -> Plan:
    effective = cfg.batch_size * cfg.grad_accum * world_size
    steps_per_epoch = max(1, train_samples // effective)
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * steps_per_epoch))
    o = cfg.optim
    if o.warmup_steps is not None:
        warmup = o.warmup_steps
    elif o.warmup_epochs is not None:
        warmup = round(o.warmup_epochs * steps_per_epoch)
    else:
        warmup = 0
    peak = o.lr if o.lr is not None else o.base_lr * effective / 256
    return Plan(total, min(warmup, total), peak, effective, train_samples)


def run(cfg: PretrainConfig) -> Path:
    """Train (or resume) to ``total_steps`` and export; returns the export directory."""
    ckpt_dir = Path(cfg.out_dir) / CKPT_DIR
    modality = modality_named(cfg.modality)
    problems = source_problems(cfg.sources(), modality)
    if problems:
        raise BadConfig("; ".join(f"{key}: {what}" for key, what in problems))
    cfg = dataclasses.replace(cfg, input=modality.bind_input(cfg.input, cfg.sources()[0].shards))
    if cfg.init:  # the published position tables travel with the weights (ModelConfig)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, stored_positions=True))
    rank, world_size = launch_env()
    try:
        cfg = for_world(cfg, world_size)
    except BatchSplitError as e:
        raise BadConfig(f"global_batch: {e}") from None
    # Before the process group exists: one rank's conversion must not run against the others'
    # collective timeout (it grows with the model and the number of saved ranks).
    stage = zero_stage_of(cfg)
    universal = checkpoint.prepare_universal(ckpt_dir, world_size, rank)
    info = init_distributed(cfg.device)
    out = Path(cfg.out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain.yaml").write_text(to_yaml(cfg))
    plan = make_plan(cfg, info.world_size, epoch_samples(cfg.sources()))
    geometry = modality.geometry(cfg.input)
    torch.manual_seed(cfg.seed)
    engine = _build_engine(cfg, modality, plan, info, stage, load_universal=universal)
    start = checkpoint.resume(engine, ckpt_dir, universal=universal)
    if info.is_main:
        log.info(
            "pretrain %s: %d ranks on %s, %d steps (from %d), effective batch %d, peak lr %.3g, "
            "%d tokens per sample, mask %s %.2f, %s, ZeRO-%d",
            cfg.modality,
            info.world_size,
            info.device.type,
            plan.total_steps,
            start,
            plan.effective_batch,
            plan.peak_lr,
            geometry.num_tokens,
            cfg.mask.kind,
            cfg.mask.ratio,
            cfg.precision,
            stage,
        )
    if start < plan.total_steps:
        _train(cfg, modality, plan, info, engine, start, ckpt_dir)
    _finish(cfg, modality, plan, info, engine, ckpt_dir, stage)
    return out / EXPORT_DIR


def zero_stage_of(cfg: PretrainConfig) -> int:
    """The ZeRO stage the run in ``cfg.out_dir`` runs (or ran) under: the one asked for, else
    its checkpoint's, else by model size."""
    ckpt_dir = Path(cfg.out_dir) / CKPT_DIR
    return checkpoint.stage_to_resume(ckpt_dir, cfg.zero_stage, resolved_zero_stage(cfg))


def _finish(
    cfg: PretrainConfig,
    modality: Modality,
    plan: Plan,
    info: DistInfo,
    engine,
    ckpt_dir: Path,
    zero_stage: int,
) -> None:
    """The final checkpoint (if the last step saved none), then the export by rank 0 alone.

    Every rank leaves the process group first: the export reads every rank's partition from
    disk, which for a large model from many ranks can outlast a collective's timeout, and no
    other rank has anything left to do."""
    out = Path(cfg.out_dir)
    tag = checkpoint.tag_for(plan.total_steps)
    if tag not in checkpoint.complete_tags(ckpt_dir):
        checkpoint.save(engine, ckpt_dir, plan.total_steps, cfg.keep_checkpoints, info.is_main)
    leave_process_group()
    if info.is_main:
        facts = {
            "step": plan.total_steps,
            "mask_kind": cfg.mask.kind,
            "mask_ratio": cfg.mask.ratio,
            "train_samples": plan.train_samples,
        }
        objective = modality.objective.name
        export = ExportInfo(modality.name, objective, cfg.input, cfg.model, facts)
        export_from_checkpoint(ckpt_dir, tag, out / EXPORT_DIR, export, zero_stage)
        for fmt in cfg.export_formats:
            write_interop(out / EXPORT_DIR, fmt, out / EXPORT_DIR / fmt)
        (out / DONE).write_text(f"{plan.total_steps}\n")
        log.info("exported encoder to %s", out / EXPORT_DIR)


def _build_engine(
    cfg: PretrainConfig,
    modality: Modality,
    plan: Plan,
    info: DistInfo,
    zero_stage: int,
    load_universal: bool = False,
):
    import deepspeed

    geometry = modality.geometry(cfg.input)
    model = modality.objective.build_model(cfg.model, geometry, cfg.mask.kind)
    if cfg.init:
        _load_init(cfg, modality, model, info)
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    on_cuda = info.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay),
        lr=plan.peak_lr,
        betas=tuple(cfg.optim.betas),
        fused=True,  # one kernel over each flat ZeRO partition, on CUDA and on CPU alike
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, plan.total_steps, plan.warmup_steps, 1.0, cfg.optim.min_lr / plan.peak_lr
        ),
    )
    engine, _, _, _ = deepspeed.initialize(
        # The device DeepSpeed puts the model on: ours, not LOCAL_RANK (wrong when Slurm shows
        # each task only its own GPU).
        args=SimpleNamespace(device_rank=info.device.index if on_cuda else -1),
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(
            cfg,
            info.world_size,
            on_cuda,
            zero_stage,
            parameters=sum(p.numel() for p in model.parameters()),
            load_universal=load_universal,
        ),
    )
    if cfg.compile and zero_stage < 3:
        engine.compile(compile_kwargs={"dynamic": False})
    elif cfg.compile:
        log.warning("compile ignored: the model's size chose ZeRO-3, whose hooks keep it out")
    return engine


def _load_init(cfg: PretrainConfig, modality: Modality, model, info: DistInfo) -> None:
    """The published weights of ``pretrain.init`` (a bad file: one line, exit 2)."""
    try:
        loaded = modality.objective.load_published(model, cfg.init, cfg.init_accept)
    except (ValueError, OSError) as err:  # InitError is a ValueError
        raise BadConfig(f"pretrain.init: {err}") from None
    if info.is_main:
        log.info("started from %s (%s layout): %d tensors loaded; from scratch: %s; not used: %s",
                 cfg.init, loaded.layout, len(loaded.loaded), ", ".join(loaded.missing) or "none",
                 ", ".join(loaded.unused) or "none")  # fmt: skip


def _train(
    cfg: PretrainConfig,
    modality: Modality,
    plan: Plan,
    info: DistInfo,
    engine,
    start: int,
    ckpt_dir: Path,
) -> None:
    """Train from ``start`` to the last step. A bad step (a non-finite loss, or a spike) rolls
    back to the last complete checkpoint and trains on without its batches (training.rollback)."""
    rb = cfg.rollback
    rollbacks = Rollbacks.load(Path(cfg.out_dir), rb.tries, rb.skip, rb.window)
    watchdog = Watchdog(Path(cfg.out_dir), info.rank, info.world_size, cfg.stall_timeout_s)
    monitor = _monitor(cfg, modality, info, engine)
    began = time.perf_counter()
    try:
        step = start
        while step < plan.total_steps:
            step = _train_from(cfg, modality, plan, info, engine, step, ckpt_dir, rollbacks,
                               watchdog, monitor)  # fmt: skip
    finally:
        watchdog.close()
    if monitor and info.is_main:
        took = time.perf_counter() - began
        log.info("k-NN monitor: %.1f s of the %.1f s trained (%.1f%%)", monitor.seconds, took,
                 100 * monitor.seconds / took)  # fmt: skip


def _monitor(cfg: PretrainConfig, modality: Modality, info: DistInfo, engine) -> Monitor | None:
    """The k-NN monitor of ``pretrain.monitor``, or None when off. Under ZeRO-3 each rank holds
    a slice of every weight, so the encoder cannot run outside the engine: off, said once."""
    if not cfg.monitor.every:
        return None
    if engine.zero_optimization_stage() == 3:
        log.warning("pretrain.monitor is off under ZeRO-3 (the encoder's weights are sharded)")
        return None
    return Monitor(cfg.monitor, modality, cfg.input, num_classes_of(cfg.monitor.train_shards),
                   info.rank, info.world_size, info.device, cfg.precision == "bf16")  # fmt: skip


def _train_from(
    cfg, modality, plan, info, engine, start, ckpt_dir, rollbacks, watchdog, monitor=None
) -> int:
    """Train from ``start``; returns the last step, or after a bad step the step of the
    checkpoint it rolled back to."""
    ga, skipped = cfg.grad_accum, rollbacks.skipped
    batches = _StepBatches(cfg, info, plan, stream_index(start * ga, skipped))
    step_fn = _Step(cfg, modality, info, engine)
    agreement = StepAgreement(info.device, ga, batches.skips)
    metrics = _Progress(cfg, modality, plan, info, engine, start, rollbacks.events)
    if monitor and start == 0:  # the curve's first point: the encoder before any step
        metrics.monitored(0, monitor.score(engine.module.encoder))
    try:
        for step in range(start, plan.total_steps):
            used = []
            for micro in range(ga):
                index = stream_index(step * ga + micro, skipped)
                batch, weight = batches.at(index)
                used.append((index, list(batch[2])))
                agreement.add(step_fn(batch, index, weight))
            verdict = agreement.agree(stop=stop_requested())
            factor = cfg.rollback.spike_factor
            reason = bad_step_reason(verdict.loss, verdict.non_finite_ranks, rollbacks.history,
                                     factor)  # fmt: skip
            if reason:
                return _roll_back(info, engine, ckpt_dir, rollbacks, step, reason, verdict, used)
            rollbacks.history.append(verdict.loss)
            done = step + 1
            metrics.step_done(done, verdict)
            if monitor and monitor.due(done):
                metrics.monitored(done, monitor.score(engine.module.encoder))
            watchdog.beat(done)
            preempted = verdict.stop and done < plan.total_steps
            if (done % cfg.checkpoint_every == 0 or preempted) and done < plan.total_steps:
                watchdog.beat(done, force=True)  # a save is slow, not stalled: timed from here
                checkpoint.save(engine, ckpt_dir, done, cfg.keep_checkpoints, info.is_main)
                watchdog.beat(done, force=True)
            if preempted:
                raise Preempted(f"preempted: checkpoint saved at step {done}; rerun to resume")
        return plan.total_steps
    finally:
        batches.close()
        metrics.close()


def _roll_back(info, engine, ckpt_dir, rollbacks, step, reason, verdict, used) -> int:
    """Load the last complete checkpoint after bad step ``step`` and record its batches to be
    skipped from now on; returns the step to go on from. Past the run's tries, or with no
    checkpoint yet, the run stops (exit 3) naming the step, its batches and its samples."""
    batches = [index for index, _ in used]
    samples = every_ranks_keys([k for _, keys in used for k in keys])
    said = (f"{'non-finite' if reason == 'non_finite' else 'spiking'} loss {verdict.loss:.4g} at "
            f"step {step + 1} (global batches {batches}; samples {', '.join(samples[:6])}"
            f"{', ...' if len(samples) > 6 else ''})")  # fmt: skip
    tags = checkpoint.complete_tags(ckpt_dir)
    if rollbacks.left() <= 0 or not tags:
        earlier = [e["step"] for e in rollbacks.events]
        why = "no checkpoint to roll back to yet" if not tags else (
            f"the run has rolled back {len(earlier)} times already (steps {earlier}; "
            "pretrain.rollback.tries)")  # fmt: skip
        raise NonFiniteLoss(
            f"{said}; {why}. Lower optim.lr / optim.base_lr, raise optim.warmup_steps, or use "
            f"precision=fp32. The last complete checkpoint is kept in {ckpt_dir}."
        )
    back = checkpoint.resume(engine, ckpt_dir)
    loss = verdict.loss if math.isfinite(verdict.loss) else str(verdict.loss)
    event = {"step": step + 1, "reason": reason, "loss": loss, "to_step": back,
             "batches": batches, "samples": samples}  # fmt: skip
    rollbacks.record(event, info.is_main)
    log.warning("%s: rolled back to step %d, its batches skipped from now on (%d of %d "
                "rollbacks left)", said, back, rollbacks.left(), rollbacks.tries)  # fmt: skip
    return back


class _StepBatches:
    """The rank's ``(batch, weight)`` of each stream index asked for, in rising order; batches
    between two asked for (those a rollback skips) are drawn and dropped."""

    def __init__(self, cfg: PretrainConfig, info: DistInfo, plan: Plan, first: int):
        spec = mixed_train_spec(cfg.sources(), cfg.modality, cfg.input, cfg.loader,
                              batch_size=cfg.batch_size, seed=cfg.seed, rank=info.rank,
                              world_size=info.world_size, skip_batches=first)  # fmt: skip
        total_micro = plan.total_steps * cfg.grad_accum
        prepare = functools.partial(step_inputs_of, cfg.modality, cfg.input, cfg.mask, cfg.seed,
                                    total_micro)  # fmt: skip
        self.skips = SkipCounts()
        pin = info.device.type == "cuda"
        self.loader = train_loader(dataclasses.replace(spec, prepare=prepare), pin, self.skips)
        self.batches, self.next_index = weighted(self.loader), first

    def at(self, index: int) -> tuple:
        while self.next_index < index:
            next(self.batches)
            self.next_index += 1
        self.next_index += 1
        return next(self.batches)

    def close(self) -> None:
        close = getattr(self.loader, "close", None)
        if close:
            close()


def step_inputs_of(modality_name, input_cfg, mask_cfg, seed, total_micro, batch, micro_step):
    """The objective's inputs of a micro step (the masks), made in a loader worker: drawn from
    (seed, micro step, sample key), so the worker that draws them changes nothing. MLM masks
    take ~7 ms and MAE's ~2 ms for a batch of 128 on one core (benchmarks/mlm_masks.py), time
    the training step no longer waits for."""
    m = modality_named(modality_name)
    x, _, keys = batch
    progress = (micro_step + 1) / total_micro  # HPM's hard share rises with it
    return m.objective.step_inputs(
        mask_cfg, seed, micro_step, keys, x, m.geometry(input_cfg), progress
    )


def _injected_losses(text: str) -> dict[int, float]:
    """``MASKMILL_INJECT_LOSS="7:nan,12:50"``: the loss of global batch 7 times NaN, of 12 times
    50. Fault injection for the rollback tests: what a bad batch does, on demand."""
    pairs = (item.split(":") for item in text.split(",") if item.strip())
    return {int(index): float(factor) for index, factor in pairs}


INJECTED = _injected_losses(os.environ.get("MASKMILL_INJECT_LOSS", ""))


class _Step:
    """One micro step: the modality turns the batch into tokens on the device, the engine runs
    forward and backward with the masks the loader worker drew; returns the loss, still on the
    device. Inputs reach the device without blocking the host: the DataLoader pins the batch
    and its masks."""

    def __init__(self, cfg: PretrainConfig, modality: Modality, info: DistInfo, engine):
        self.cfg, self.device, self.engine = cfg, info.device, engine
        self.modality = modality
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    def __call__(self, batch, micro_step: int, weight: float = 1.0) -> torch.Tensor:
        x, _, _, (index, inputs) = batch
        if weight and index != micro_step:  # (weight 0: the last batch again, no weight)
            raise RuntimeError(f"the loader's batch {index} arrived for micro step {micro_step}")
        m = self.modality
        inputs = inputs.to(self.device, non_blocking=True)
        loss = m.objective.loss(self.engine, m, self.cfg.input, x, inputs, self.device, self.dtype)
        loss = loss * weight if weight != 1.0 else loss
        if micro_step in INJECTED:  # fault injection (tests/training/test_rollback.py)
            loss = loss * INJECTED[micro_step]
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()


class _Progress:
    """The progress bar on every rank's console (shown by rank 0) and ``metrics.jsonl``: loss,
    lr and throughput in samples/s of the whole world (the modality names the unit)."""

    def __init__(
        self, cfg: PretrainConfig, modality: Modality, plan: Plan, info: DistInfo, engine, start,
        rollbacks: list[dict] = (),
    ):  # fmt: skip
        self.cfg, self.plan, self.info, self.engine = cfg, plan, info, engine
        self.log = MetricsLog(Path(cfg.out_dir), start) if info.is_main else None
        if self.log and rollbacks and rollbacks[-1]["to_step"] == start:  # the one just made
            self.log.note({"step": start, "rollback": rollbacks[-1]})
        self.unit, self.per_sample = modality.unit, modality.unit_per_sample(cfg.input)
        spec = mixed_train_spec(cfg.sources(), cfg.modality, cfg.input, cfg.loader, 1, cfg.seed)
        self.mixture = MixPlan(spec.quotas, cfg.seed) if spec.mixture else None
        self.names = [s.shards for s in cfg.sources()]
        self.bar = tqdm(
            total=plan.total_steps,
            initial=start,
            desc="pretrain",
            unit="step",
            disable=not info.is_main,
            dynamic_ncols=True,
        )
        self.window_start = time.perf_counter()
        self.window_steps = 0

    def step_done(self, done: int, verdict: Verdict) -> None:
        loss = verdict.loss
        self.bar.update(1)
        self.window_steps += 1
        if not self.log or (done % self.cfg.log_every and done != self.plan.total_steps):
            return
        elapsed = time.perf_counter() - self.window_start
        samples = self.window_steps * self.plan.effective_batch
        record = {
            "step": done,
            "loss": loss,
            "lr": self.engine.get_lr()[0],
            "samples_per_s": samples / elapsed,
            "units_per_s": samples * self.per_sample / elapsed,  # in the modality's unit
            "time": time.time(),
            # what the loaders skipped since this attempt started (undecodable, damaged)
            "skipped_samples": verdict.skipped_samples,
            "skipped_shards": verdict.skipped_shards,
        }
        if self.mixture:  # the share of each source in the samples drawn so far
            drawn = self.mixture.position(done * self.plan.effective_batch)
            record["mixture"] = {s: n / max(1, sum(drawn)) for s, n in zip(self.names, drawn)}
        self.log.write(record)
        per_s = f"{record['units_per_s']:.0f}"
        self.bar.set_postfix({"loss": f"{loss:.4f}", f"{self.unit}/s": per_s})
        self.window_start, self.window_steps = time.perf_counter(), 0

    def monitored(self, step: int, row: dict) -> None:
        """The k-NN monitor's score at ``step`` (TensorBoard: ``pretrain/monitor/knn_top1``)."""
        if self.log:
            self.log.write({"step": step, "monitor": row, "time": time.time()})

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()


def main(argv: list[str] | None = None) -> int:
    install_stop_handler()  # first: a USR2 during start-up must not kill the rank
    setup_logging()
    cfg = config_from_argv(pretrain_schema, rank_argv(argv), __doc__)
    return run_rank(lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
