"""Masked pretraining of any modality under DeepSpeed: ``python -m training.pretrain CONFIG.yaml [k=v]``.

Run it under any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR (``deepspeed``, ``torchrun``,
``srun``), or plainly for one rank. It resumes from the newest complete checkpoint in
``OUT_DIR/checkpoints``, writes ``metrics.jsonl`` and TensorBoard logs, and at the end exports the
consolidated model to ``OUT_DIR/export`` (``encoder.safetensors``, ``mae.safetensors``,
``model.json``).

Preemption: on SIGUSR2 (what the Slurm scripts ask for before the time limit) every rank finishes
the step it is in, all ranks save a checkpoint at the same step, and the process exits with
status 75; a rerun resumes from that checkpoint. Exit status: 0 done, 2 bad config, 3 non-finite
loss, 75 preempted (checkpoint saved).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from cluster.local import PREEMPTED_EXIT, remove_shm_segments
from data_prep.shard_format import read_manifest
from training import checkpoint
from training.config import PretrainConfig, pretrain_schema
from training.distributed import DistInfo, init_distributed
from training.ds_config import deepspeed_config
from training.entry import config_from_argv
from training.export import export_from_checkpoint
from training.export_format import ExportInfo
from training.loader import train_loader, train_spec_for
from training.mae import MaskedAutoencoder
from training.masking import make_masks
from training.metrics import MetricsLog
from training.modalities import modality as modality_named
from training.schedule import warmup_cosine
from training.transformer import param_groups
from training.typed_config import to_yaml

log = logging.getLogger("training.pretrain")

EXPORT_DIR = "export"
CKPT_DIR = "checkpoints"
DONE = "_DONE"
MAE_OBJECTIVE = "mae"

_preempt_requested = False


def _request_preemption(signum, frame) -> None:
    global _preempt_requested
    _preempt_requested = True


class NonFiniteLossError(RuntimeError):
    pass


class Preempted(RuntimeError):
    """Stopped on SIGUSR2 after saving a checkpoint at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint saved at step {step}; rerun to resume")
        self.step = step


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
    info = init_distributed(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_dir = out / CKPT_DIR
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain.yaml").write_text(to_yaml(cfg))
    records = read_manifest(cfg.train_shards)
    plan = make_plan(cfg, info.world_size, sum(r.samples for r in records))
    modality = modality_named(cfg.modality)
    geometry = modality.geometry(cfg.input)
    torch.manual_seed(cfg.seed)
    universal = checkpoint.needs_universal(ckpt_dir, info.world_size)
    if universal:
        if info.is_main:
            checkpoint.make_universal(ckpt_dir)
        dist.barrier()
    engine = _build_engine(cfg, plan, info, geometry, load_universal=universal)
    start = checkpoint.resume(engine, ckpt_dir, universal=universal)
    if info.is_main:
        log.info(
            "pretrain %s: %d ranks, %d steps (from %d), effective batch %d, peak lr %.3g, "
            "%d tokens per sample, mask %s %.2f, %s",
            cfg.modality,
            info.world_size,
            plan.total_steps,
            start,
            plan.effective_batch,
            plan.peak_lr,
            geometry.num_tokens,
            cfg.mask.kind,
            cfg.mask.ratio,
            cfg.precision,
        )
    if start < plan.total_steps:
        _train(cfg, plan, info, engine, start, ckpt_dir)
    _finish(cfg, plan, info, engine, ckpt_dir)
    return out / EXPORT_DIR


def _finish(cfg: PretrainConfig, plan: Plan, info: DistInfo, engine, ckpt_dir: Path) -> None:
    """The final checkpoint (if the last step saved none) and the export, by rank 0."""
    out = Path(cfg.out_dir)
    tag = checkpoint.tag_for(plan.total_steps)
    if tag not in checkpoint.complete_tags(ckpt_dir):
        checkpoint.save(engine, ckpt_dir, plan.total_steps, cfg.keep_checkpoints, info.is_main)
    if info.is_main:
        facts = {
            "step": plan.total_steps,
            "mask_kind": cfg.mask.kind,
            "mask_ratio": cfg.mask.ratio,
            "train_samples": plan.train_samples,
        }
        export = ExportInfo(cfg.modality, MAE_OBJECTIVE, cfg.input, cfg.model, facts)
        export_from_checkpoint(ckpt_dir, tag, out / EXPORT_DIR, export, cfg.zero_stage)
        (out / DONE).write_text(f"{plan.total_steps}\n")
        log.info("exported encoder to %s", out / EXPORT_DIR)
    dist.barrier()


def _build_engine(
    cfg: PretrainConfig, plan: Plan, info: DistInfo, geometry, load_universal: bool = False
):
    import deepspeed

    model = MaskedAutoencoder(cfg.model, geometry)
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
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, info.world_size, on_cuda, load_universal),
    )
    return engine


def _train(
    cfg: PretrainConfig, plan: Plan, info: DistInfo, engine, start: int, ckpt_dir: Path
) -> None:
    spec = train_spec_for(
        cfg.train_shards,
        cfg.modality,
        cfg.input,
        cfg.loader,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        skip_batches=start * cfg.grad_accum,
    )
    batches = train_loader(spec, pin_memory=info.device.type == "cuda")
    step_fn = _Step(cfg, info, engine)
    metrics = _Progress(cfg, plan, info, engine, start)
    try:
        for step in range(start, plan.total_steps):
            loss_sum = torch.zeros(3)  # loss, non-finite flag, preemption flag
            for micro in range(cfg.grad_accum):
                loss_sum[0] += step_fn(next(batches), step * cfg.grad_accum + micro)
            _agree(loss_sum, step, ckpt_dir)
            done = step + 1
            metrics.step_done(done, loss_sum[0].item() / (cfg.grad_accum * info.world_size))
            preempted = loss_sum[2] > 0 and done < plan.total_steps
            if (done % cfg.checkpoint_every == 0 or preempted) and done < plan.total_steps:
                checkpoint.save(engine, ckpt_dir, done, cfg.keep_checkpoints, info.is_main)
            if preempted:
                raise Preempted(done)
    finally:
        metrics.close()


class _Step:
    """One micro step: the modality turns the batch into tokens, masks are drawn from (seed,
    micro step, sample key), the engine runs forward and backward; returns the loss."""

    def __init__(self, cfg: PretrainConfig, info: DistInfo, engine):
        self.cfg, self.device, self.engine = cfg, info.device, engine
        self.modality = modality_named(cfg.modality)
        self.geometry = self.modality.geometry(cfg.input)
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    def __call__(self, batch, micro_step: int) -> torch.Tensor:
        x, _, keys = batch
        c = self.cfg
        mask = make_masks(c.mask.kind, c.seed, micro_step, keys, self.geometry, c.mask.ratio)
        tokens = self.modality.ops.tokenize(c.input, x.to(self.device, non_blocking=True))
        loss, _ = self.engine(tokens.to(self.dtype), mask.to(self.device))
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach().float().cpu()


def _agree(loss_sum: torch.Tensor, step: int, ckpt_dir: Path) -> None:
    """One collective decides for every rank: ranks stop together, at the same step, on a
    non-finite loss or once any of them has been asked to stop (signals arrive unevenly)."""
    loss_sum[1] = 0.0 if math.isfinite(loss_sum[0].item()) else 1.0
    loss_sum[2] = 1.0 if _preempt_requested else 0.0
    dist.all_reduce(loss_sum)
    if loss_sum[1] > 0:
        raise NonFiniteLossError(
            f"loss became non-finite at step {step + 1} on {int(loss_sum[1])} rank(s); "
            f"lower optim.lr / optim.base_lr, raise optim.warmup_steps, or use precision=fp32. "
            f"The last complete checkpoint is kept in {ckpt_dir}."
        )


class _Progress:
    """The progress bar on every rank's console (shown by rank 0) and ``metrics.jsonl``: loss,
    lr and throughput in samples/s of the whole world (the modality names the unit)."""

    def __init__(self, cfg: PretrainConfig, plan: Plan, info: DistInfo, engine, start: int):
        self.cfg, self.plan, self.info, self.engine = cfg, plan, info, engine
        self.log = MetricsLog(Path(cfg.out_dir), start) if info.is_main else None
        self.unit = modality_named(cfg.modality).unit
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

    def step_done(self, done: int, loss: float) -> None:
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
            "time": time.time(),
        }
        self.log.write(record)
        per_s = f"{record['samples_per_s']:.0f}"
        self.bar.set_postfix({"loss": f"{loss:.4f}", f"{self.unit}/s": per_s})
        self.window_start, self.window_steps = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()


def main(argv: list[str] | None = None) -> int:
    # Installed first: a warning that lands during start-up must not kill the rank.
    signal.signal(signal.SIGUSR2, _request_preemption)
    cfg = config_from_argv(pretrain_schema, argv, __doc__)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # DeepSpeed calls collectives torch has renamed; one warning per call floods the log.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    try:
        run(cfg)
    except NonFiniteLossError as err:
        log.error("%s", err)
        return 3
    except Preempted as err:
        log.warning("%s", err)
        return PREEMPTED_EXIT
    finally:
        # Shut the process group down before the interpreter does: left to exit-time destructors,
        # its background threads sometimes abort the process ("terminate called without an
        # active exception") after the work is done.
        if dist.is_initialized():
            dist.destroy_process_group()
        remove_shm_segments(os.environ.get("MASTER_PORT"), os.environ.get("RANK", "0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
