"""Typed configs of the training entry points, with their value checks.

The pipeline embeds these dataclasses in its run config; ``python -m training.pretrain`` loads a
``PretrainConfig`` YAML directly. Either way they are validated once, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from training.batching import BatchSplit, split_batch
from training.modalities import DEFAULT as DEFAULT_MODALITY
from training.modalities import modality as modality_named
from training.modalities import names as modality_names
from training.typed_config import ConfigError

# name: (embed_dim, depth, num_heads). nano is for CPU tests and the quickstart;
# tiny/small/base/large/huge are the ViT-Ti/S/B/L/H encoders of the MAE and DeiT papers (how a
# sample becomes tokens, patch size included, is the modality's: ``pretrain.input``).
PRESETS: dict[str, tuple[int, int, int]] = {
    "nano": (96, 4, 3),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

MAX_MASK_RATIO = 0.98
EVAL_METRICS = "metrics.json"  # what evaluation writes to its out_dir
PRECISIONS = ("fp32", "bf16")


@dataclass
class ModelConfig:
    """Transformer encoder + light MAE decoder. Unset encoder sizes come from ``preset``."""

    POSITIVE: ClassVar = (
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "decoder_embed_dim",
        "decoder_depth",
        "decoder_num_heads",
    )

    # nano (CPU tests/demo), tiny, small, base, large, huge (ViT-Ti/S/B/L/H)
    preset: str = "base"
    embed_dim: int | None = None  # None: the preset's (set any of these three to override it)
    depth: int | None = None  # None: the preset's
    num_heads: int | None = None  # None: the preset's
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512  # MAE's decoder: 8 blocks x 512, 16 heads
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    # per-patch normalised pixel targets
    norm_pix_loss: bool = True
    pool: str = "mean"  # features for probes: mean of patch tokens, or the cls token
    # "self": MAE's decoder (self-attention over visible + mask tokens); "cross": CrossMAE's
    # (mask tokens cross-attend to the visible ones only). Both predict masked patches only.
    decoder_type: str = "self"
    # reconstruct only this random share of the masked patches while training (the loss covers
    # that share); evaluation and the report reconstruct all
    decoder_predict_fraction: float = 1.0
    attention: str = "auto"  # auto: matmul + softmax for bf16 on CPU, else fused SDPA; sdpa; matmul
    # false: no cls token, the tokens attend to each other only (VideoMAE's encoder; to start
    # from its weights with pretrain.init)
    cls_token: bool = True
    # false: no final LayerNorm (VideoMAE's use_mean_pooling: its classifier norms the mean)
    final_norm: bool = True
    # The position tables are part of the weights (checkpoints and exports hold them), not
    # recomputed: set by pretrain.init, whose published tables (their own sin-cos layout,
    # interpolated to this grid) are what the loaded weights were trained with.
    stored_positions: bool = False

    def resolved(self) -> ModelConfig:
        """A copy with every preset-derived size filled in."""
        dim, depth, heads = PRESETS[self.preset]
        return dataclasses.replace(
            self,
            embed_dim=self.embed_dim or dim,
            depth=self.depth or depth,
            num_heads=self.num_heads or heads,
        )

    def problems(self):
        if self.preset not in PRESETS:
            yield ("preset", f"one of {', '.join(PRESETS)}, got {self.preset!r}")
            return
        r = self.resolved()
        if r.embed_dim % r.num_heads:
            yield ("embed_dim", f"divisible by num_heads {r.num_heads}, got {r.embed_dim}")
        if self.decoder_type not in ("self", "cross"):
            yield ("decoder_type", f"'self' or 'cross', got {self.decoder_type!r}")
        if not 0.0 < self.decoder_predict_fraction <= 1.0:
            yield ("decoder_predict_fraction", f"in (0, 1], got {self.decoder_predict_fraction}")
        if self.attention not in ("auto", "sdpa", "matmul"):
            yield ("attention", f"'auto', 'sdpa' or 'matmul', got {self.attention!r}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            yield ("decoder_embed_dim", f"divisible by decoder_num_heads {self.decoder_num_heads}")
        if self.pool not in ("mean", "cls"):
            yield ("pool", f"'mean' or 'cls', got {self.pool!r}")
        if self.pool == "cls" and not self.cls_token:
            yield ("pool", "'mean' without a cls token (cls_token: false)")


@dataclass
class MaskConfig:
    """Per-sample masks, reproducible from (seed, step, sample key); ``kind`` is one the
    modality allows (``training.objectives.mae.masking``): random (MAE's), block (BEiT's), noise_lowpass /
    noise_highpass / noise_bandpass (ColorMAE's filtered noise), hpm (hard patches mining: the
    model's loss head picks what to hide), tube (VideoMAE's), time_frequency (AudioMAE's)."""

    # one the modality allows. Image: random (MAE's), block (BEiT's rectangles, at least 8% of the
    # grid each, aspect 0.3-3.3), noise_lowpass / noise_highpass / noise_bandpass (ColorMAE's
    # filtered-noise patterns: blobs / evenly spread / blobs of about 4 tokens' period), hpm (hard
    # patches mining: a loss head on the decoder learns to rank tokens by reconstruction loss, and
    # the hardest it predicts are hidden first); audio: also time_frequency; video: tube, random.
    # Every kind hides exactly the same count and is reproducible from (seed, step, sample key); hpm
    # also from the weights, which the checkpoint holds
    kind: str = "random"
    # 0–0.98, per sample
    ratio: float = 0.75
    # Masked views of each decoded sample in a step (data2vec 2.0's multi-mask): the encoder
    # and decoder run on per_sample x batch_size rows; loading and decoding are shared.
    per_sample: int = 1
    # hpm: the share of hidden tokens chosen by predicted loss at the end of training (rising
    # linearly from 0; HPM's 0.5), the rest hidden at random.
    hard_share: float = 0.5

    def problems(self):
        if self.per_sample < 1:
            yield ("per_sample", f"an int >= 1, got {self.per_sample}")
        if not 0.0 <= self.hard_share <= 1.0:
            yield ("hard_share", f"a float in [0, 1], got {self.hard_share}")
        if not 0.0 <= self.ratio <= MAX_MASK_RATIO:
            yield (
                "ratio",
                f"a float in [0, {MAX_MASK_RATIO}] (some patches must stay visible), got {self.ratio}",
            )


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, as in MAE.

    ``lr`` unset means ``base_lr * effective_batch / 256``. Lengths are in optimizer steps or
    epochs of the train split (exactly one of each pair).
    """

    # peak lr; unset means base_lr × effective batch / 256
    lr: float | None = None
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05  # AdamW's; none on biases, norms, tokens
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # linear warmup (steps or epochs of the train split, at most one), then cosine
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    grad_clip: float = 1.0  # 0 turns clipping off

    def problems(self):
        if self.lr is not None and self.lr <= 0:
            yield ("lr", f"a float > 0 or null, got {self.lr}")
        if self.base_lr <= 0:
            yield ("base_lr", f"a float > 0, got {self.base_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            yield ("betas", f"two floats in [0, 1), got {self.betas}")
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            yield ("warmup_steps", "set warmup_steps or warmup_epochs, not both")


@dataclass
class LoaderConfig:
    """How shards are streamed; what a sample decodes to is the modality's (``pretrain.input``)."""

    POSITIVE: ClassVar = ("prefetch_factor",)

    # DataLoader processes per rank (images: about 1,600-2,000 per second each at 224 px from 256 px
    # shards, benchmarks/image_loader)
    workers: int = 2
    # samples; the buffer restarts each epoch, so a resume skips finished epochs by arithmetic
    shuffle_buffer: int = 1000
    prefetch_factor: int = 4  # batches each worker keeps ready
    # A shard's size is checked at every open; its sha256 when prep writes it and by `maskmill
    # verify`. true: also the first time each worker opens it. That reads the whole shard, so a
    # rank would read every byte of every shard it touches rather than its share of them.
    verify_sha256: bool = False
    on_bad_shard: str = "error"  # error: stop naming the shard | skip: warn, count, go on

    def problems(self):
        if self.on_bad_shard not in ("error", "skip"):
            yield ("on_bad_shard", f"'error' or 'skip', got {self.on_bad_shard!r}")


@dataclass
class RollbackConfig:
    """What a non-finite or spiking step loss does (``training.rollback``): roll back to the last
    complete checkpoint and skip that step's global batches, at most ``tries`` times in a run."""

    # rollbacks a run may make; past them it stops (exit 3) naming the steps and samples; 0: stop
    # at the first non-finite loss
    tries: int = 3
    # > 0: a step loss above this many times the median of the last `window` steps is a spike and
    # is rolled back too; 0: off
    spike_factor: float = 0.0
    window: int = 100
    # global batches (their index in the run's stream) to leave out from the start; those the
    # run's own rollbacks left out are in OUT/rollbacks.json
    skip: list[int] = field(default_factory=list)


@dataclass
class MonitorConfig:
    """A k-NN score on fixed labelled samples every ``every`` steps of pretraining
    (``training.monitor``): the representation's quality as a curve, not only at the end."""

    every: int = 0  # steps between scores (and one before the first step); 0: off
    samples: int = 1000  # the first this many of each split: the bank and the queries
    k: int = 20
    temperature: float = 0.07
    # labelled splits: in a run, the evaluation's (evaluate.train_shards, evaluate.val_shards)
    train_shards: str = ""
    val_shards: str = ""

    def problems(self):
        if self.every and not (self.train_shards and self.val_shards):
            yield ("train_shards", "the bank and query splits, with every > 0")


@dataclass
class DataSource:
    """One prepared split of a pretraining mixture (``pretrain.data``), with its weight, or its
    ``repeat``: how many times its samples are seen per pass over the mixture (a small corpus
    upsampled); a mixture uses one kind or the other (training.mixture)."""

    shards: str = "???"
    weight: float | None = None
    repeat: float | None = None


@dataclass
class PretrainConfig:
    """One masked-pretraining job: ``python -m training.pretrain CONFIG.yaml [key=value ...]``."""

    modality: str = DEFAULT_MODALITY
    train_shards: str = "???"
    # Several prepared splits mixed into one stream by weight (training.mixture); empty: the
    # stream is train_shards alone. The first source binds the input (vocabulary, statistics).
    data: list[DataSource] = field(default_factory=list)
    out_dir: str = "???"
    seed: int = 0
    input: Any = None  # the modality's input config (see ``pretrain_schema``)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    # The samples of one optimizer step, all ranks together (training.batching): the recipe's
    # batch, valid at any world size it divides. Set, batch_size is the most rows a rank puts
    # through one forward and the micro steps follow from the world size (leave grad_accum 1).
    # None: batch_size x grad_accum x ranks.
    global_batch: int | None = None
    batch_size: int = 64  # per rank, per micro step (the most, with global_batch)
    # micro steps per optimizer step
    grad_accum: int = 1
    # the run's length: optimizer steps or train-split epochs (exactly one)
    steps: int | None = None
    epochs: float | None = None
    # bf16 or fp32 (CPU and CUDA)
    precision: str = "bf16"
    zero_stage: int | None = None  # None: by model size (training.ds_config): 2, or 3 if huge
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # A rank whose heartbeat stays still this long ends the job, naming it (training.watchdog);
    # 0 turns the watch off. Above the longest step or checkpoint save.
    stall_timeout_s: float = 600.0
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    # Keep only each transformer block's input for the backward pass and recompute the block:
    # bigger models and batches on the same GPUs for ~1/3 more compute (training.transformer)
    activation_checkpointing: bool = False
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # Start from published weights (training/objectives/mae/published.py): HF ViTMAE / ViT (a saved folder
    # or its model.safetensors), the MAE repository's checkpoint (.pth), or our export's
    # mae.safetensors; objectives that read one (MAE). A checkpoint of this run takes precedence.
    # With steps: 0 the weights are exported as loaded: the evaluation stages then fine-tune,
    # probe and k-NN the published model against random init.
    init: str = ""
    # prefixes of our tensors the file may lack, started from scratch (e.g. [decoder.] for an
    # encoder-only file); any other missing tensor refuses the load
    init_accept: list[str] = field(default_factory=list)
    log_every: int = 10
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated config
    # torch.compile the model (inductor; one graph per mask ratio): +6% per ViT-B step on CPU after
    # a ~75 s compile. ZeRO 0-2 only: ZeRO-3's parameter hooks keep the compiler out.
    compile: bool = False
    # Also write the encoder for other tools beside the export: hf (transformers ViTModel) and/or
    # timm (VisionTransformer); image and audio only (training.export_interop). `maskmill export`
    # writes them for a finished run.
    export_formats: list[str] = field(default_factory=list)

    def sources(self) -> list[DataSource]:
        """The splits the pretraining stream draws from: ``data``, or ``train_shards`` alone."""
        return list(self.data) or [DataSource(self.train_shards, weight=1.0)]

    def problems(self):
        yield from _mixture_problems(self.data)
        allowed = modality_named(self.modality).mask_kinds
        if self.mask.kind not in allowed:
            yield (
                "mask.kind",
                f"one of {', '.join(allowed)} for {self.modality}, got {self.mask.kind!r}",
            )
        if (
            self.mask.per_sample > 1
            and not modality_named(self.modality).objective.allows_per_sample
        ):
            yield ("mask.per_sample", "1 for an MLM (one masked copy of each sequence)")
        if (self.steps is None) == (self.epochs is None):
            yield ("steps", "set exactly one of steps or epochs")
        if self.steps is not None and self.steps < (0 if self.init else 1):
            yield ("steps", f"an int >= 1 (0 with init: the weights exported as loaded, for the "
                            f"evaluation stages to fine-tune and probe), got {self.steps}")  # fmt: skip
        if self.epochs is not None and self.epochs <= 0:
            yield ("epochs", f"a float > 0, got {self.epochs}")
        if self.precision not in PRECISIONS:
            yield ("precision", f"one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            yield ("zero_stage", f"0, 1, 2, 3 or null (by model size), got {self.zero_stage}")
        if self.compile and self.zero_stage == 3:
            yield (
                "compile",
                "false with zero_stage 3 (its parameter hooks keep torch.compile out)",
            )
        if self.device not in ("auto", "cpu", "cuda"):
            yield ("device", f"auto, cpu or cuda, got {self.device!r}")
        yield from _export_format_problems(self.export_formats, self.modality, self.model)
        for name in (
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) < 1:
                yield (name, f"an int >= 1, got {getattr(self, name)}")
        if self.global_batch is not None and self.global_batch < 1:
            yield ("global_batch", f"an int >= 1 or null, got {self.global_batch}")
        if self.init and modality_named(self.modality).objective.load_published is None:
            yield ("init", f"{self.modality}'s objective reads no published checkpoint")
        if self.global_batch is not None and self.grad_accum != 1:
            yield ("grad_accum", "1 with global_batch (the micro steps follow from the world size)")


def pretrain_split(cfg: PretrainConfig, world_size: int) -> BatchSplit:
    """How ``cfg``'s global batch splits over ``world_size`` ranks; raises ``BatchSplitError``."""
    if cfg.global_batch is None:
        per_rank = cfg.batch_size * cfg.grad_accum
        return BatchSplit(
            per_rank * world_size, world_size, per_rank, cfg.batch_size, cfg.grad_accum
        )
    return split_batch(cfg.global_batch, world_size, cfg.batch_size)


def for_world(cfg: PretrainConfig, world_size: int) -> PretrainConfig:
    """``cfg`` with the per-rank ``batch_size`` and ``grad_accum`` of ``world_size`` ranks."""
    split = pretrain_split(cfg, world_size)
    return dataclasses.replace(
        cfg, global_batch=None, batch_size=split.micro, grad_accum=split.accum
    )


def modality_of(raw: Any) -> str:
    """The ``modality`` a raw (merged, unvalidated) config names; the first pass of loading."""
    name = raw.get("modality", DEFAULT_MODALITY) if raw is not None else DEFAULT_MODALITY
    if name not in modality_names():
        raise ConfigError([("modality", f"one of {', '.join(modality_names())}, got {name!r}")])
    return name


def pretrain_schema(raw: Any) -> PretrainConfig:
    """The defaults a ``PretrainConfig`` YAML is validated against: typed by its modality."""
    name = modality_of(raw)
    m = modality_named(name)
    return PretrainConfig(modality=name, input=m.input_config(), mask=default_mask(m))


def default_mask(m) -> MaskConfig:
    """The modality's default masking: its first mask kind at its ratio."""
    return MaskConfig(kind=m.mask_kinds[0], ratio=m.mask_ratio)


@dataclass
class EvalConfig:
    """``evaluate`` section: which encoder, which splits, which tasks (typed by the modality),
    and how the ``finetune`` and ``probe`` stages run (their ranks are ``launch``'s).

    ZeRO stage for fine-tuning: 2 by default. A fine-tuned ViT-B's whole state is 1.4 GiB and
    ViT-H's 10 GiB, so parameters need not be partitioned; stage 2 partitions gradients and
    optimizer state (reduce-scatter instead of all-reduce, the same traffic) and keeps every
    forward local. Stage 3 is refused: it gathers parameters in every forward, so ranks would
    have to run equally many val forwards, and a split is scored exactly once instead. The
    linear probe's head runs without ZeRO (LARS scales each weight matrix by its own norm, which
    a flattened partition does not have).
    """

    POSITIVE: ClassVar = ("batch_size", "checkpoint_every", "keep_checkpoints")

    modality: str = DEFAULT_MODALITY
    export_dir: str = "???"  # the pretrained export to evaluate
    train_shards: str = "???"  # the prepared split the tasks train on
    val_shards: str = "???"  # the prepared split they are scored on
    out_dir: str = "???"  # the stages write out_dir/finetune/ and out_dir/probe/
    seed: int = 0
    batch_size: int = 256  # per rank, for feature extraction and scoring passes
    baseline: bool = True  # also evaluate a randomly initialised encoder
    tasks: Any = None  # the modality's tasks config (see ``eval_schema``)
    zero_stage: int = 2  # fine-tuning's; 0, 1 or 2
    precision: str = "bf16"  # bf16 | fp32, of the tasks that train
    checkpoint_every: int = 200  # steps; also at the end of every epoch scored and on USR2
    keep_checkpoints: int = 1
    device: str = "auto"  # auto | cpu | cuda
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(workers=1))
    # A rank of a training task (fine-tune, CTC, probe) whose heartbeat stays still this long
    # ends the job, naming it (training.watchdog); 0 turns the watch off. Above the longest
    # step, scoring of the val split or checkpoint save.
    stall_timeout_s: float = 600.0

    def problems(self):
        if self.zero_stage not in (0, 1, 2):
            yield (
                "zero_stage",
                f"0, 1 or 2 (3 would make every forward a collective), got {self.zero_stage}",
            )
        if self.precision not in PRECISIONS:
            yield ("precision", f"one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            yield ("device", f"auto, cpu or cuda, got {self.device!r}")


def eval_schema(raw: Any) -> EvalConfig:
    """The defaults an ``EvalConfig`` YAML is validated against: typed by its modality."""
    name = modality_of(raw)
    return EvalConfig(modality=name, tasks=modality_named(name).tasks_config())


def _mixture_problems(data: list[DataSource]):
    """Each source has a weight or a repeat (one kind for the whole mixture), above zero."""
    for i, source in enumerate(data):
        kinds = [k for k in ("weight", "repeat") if getattr(source, k) is not None]
        if len(kinds) != 1:
            yield (f"data[{i}]", "a split with exactly one of weight or repeat")
        elif getattr(source, kinds[0]) <= 0:
            yield (f"data[{i}].{kinds[0]}", f"a number > 0, got {getattr(source, kinds[0])}")
    if len({s.weight is None for s in data}) > 1:
        yield ("data", "weights for every source, or repeats for every source, not both")


def _export_format_problems(formats: list[str], modality: str, model: ModelConfig):
    from training.export_format import FORMATS, interop_problem

    for fmt in formats:
        if fmt not in FORMATS:
            yield ("export_formats", f"a list from {', '.join(FORMATS)}, got {fmt!r}")
    if formats and interop_problem(modality, model):
        yield ("export_formats", f"[] for {modality}: {interop_problem(modality, model)}")
