"""The audio data path: prep throughput in hours of audio per core-hour, the training loader's
seconds of audio per second per core, and what the quickstart's step consumes, at mask ratios
0.8 and 0.0.

    python -m benchmarks.audio_data [--speakers 8] [--cpus 1] [--batches 20] [--rounds 4]
        [--step-preset nano] [--step-frames 256] [--out results/audio_data]

1. **Prep**: the espeak-ng demo corpus (LibriLight chapters + digit strings, the quickstart's
   sizes) is prepared by the real Ray job with ``--cpus`` workers: decode, resample to 16 kHz
   (polyphase windowed sinc) where needed, cut by voice activity, encode FLAC, write shards.
   Hours of audio written / (the splits' wall time x cpus); the Ray start and the fit-time
   feature statistics are reported apart.
2. **Loader**: the real training loader (``train_loader``, no worker processes: one core) over
   the train split with the quickstart's input (256 frames): FLAC decode, random window,
   log-mel, normalisation, collation. Seconds of audio per second.
3. **Step**: the quickstart's model (ViT-nano, decoder 2x96, 16x16 patches over 256 frames x
   128 mels: 128 tokens), batch 64, bf16 with fp32 master weights, at ratio 0.8 and 0.0
   interleaved; seconds of audio a step consumes per second, and the loader cores one rank
   needs to keep up. ``--step-preset base --step-frames 1024 --step-batch 4`` times AudioMAE's
   ViT-B/16 on 10 s clips (512 patches, decoder 8 x 512) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

from benchmarks.common import interleaved, machine, matmul_peak, median, write_results
from benchmarks.pretrain_vs_hf import MasterWeights
from data_prep.audio.demo import SpeechDemoConfig, write_speech_demo
from data_prep.audio.reader import AudioPrepConfig, prep_audio
from data_prep.shard_format import shard_urls
from training.config import LoaderConfig, ModelConfig
from training.loader import train_loader, train_spec_for
from training.modalities.audio.bundle import AudioInputConfig, bind_input, clip_seconds, geometry
from training.modalities.audio.ops import tokenize
from training.objectives.mae.masking import masks_for_batch
from training.objectives.mae.model import MaskedAutoencoder


def audio_hours(split_dirs: list[Path]) -> float:
    seconds = 0.0
    for split in split_dirs:
        for sample in wds.WebDataset(shard_urls(split), shardshuffle=False):
            seconds += json.loads(sample["json"])["seconds"]
    return seconds / 3600


def prep_rate(root: Path, demo: SpeechDemoConfig, cpus: int) -> dict:
    raw = write_speech_demo(demo)
    cfg = AudioPrepConfig(
        source=str(raw / "librilight"),
        labelled_train=str(raw / "digits" / "train"),
        labelled_val=str(raw / "digits" / "val"),
        out=str(root / "shards"),
        val_speakers=0.25,
        segment_seconds=6,
        samples_per_shard=100,
        num_cpus=cpus,
    )
    start = time.perf_counter()
    stats = prep_audio(cfg)
    wall = time.perf_counter() - start
    split_seconds = sum(s["seconds"] for s in stats.values())
    hours = audio_hours([root / "shards" / s for s in stats])
    return {
        "audio_hours": hours,
        "cpus": cpus,
        "splits_s": split_seconds,
        "wall_s": wall,
        "hours_per_core_hour": hours / (split_seconds / 3600 * cpus),
        "hours_per_core_hour_with_startup": hours / (wall / 3600 * cpus),
    }


def loader_rate(train: Path, seen: AudioInputConfig, batch: int, batches: int) -> float:
    spec = train_spec_for(str(train), "audio", seen, LoaderConfig(workers=0), batch, seed=0)
    it = train_loader(spec)
    next(it)  # open the first shard
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch * clip_seconds(seen) / (time.perf_counter() - start)


def audio_step(seen: AudioInputConfig, batch: int, preset: str):
    """``step(i, ratio)``: one bf16 training step of the quickstart's model (``nano``: decoder
    2 x 96) or of a preset with AudioMAE's decoder (8 x 512)."""
    torch.manual_seed(0)
    g = geometry(seen)
    if preset == "nano":
        cfg = ModelConfig(preset="nano", decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
    else:
        cfg = ModelConfig(preset=preset)
    model = MaskedAutoencoder(cfg, g).train().to(torch.bfloat16)
    opt = MasterWeights(model, 1e-4)
    clips = torch.randn(batch, seen.frames, 128)
    keys = [f"clip{i}" for i in range(batch)]

    def step(i: int, ratio: float) -> None:
        mask = masks_for_batch(0, i, keys, g.num_tokens, ratio)
        opt.step(model(tokenize(seen, clips).to(torch.bfloat16), mask))

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=16, help="per chapter (3 chapters)")
    parser.add_argument("--digit-strings", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=1, help="Ray workers for the prep")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--step-preset", default="nano", help="the model of the timed step")
    parser.add_argument("--step-frames", type=int, default=256, help="its clip (1024: 10 s)")
    parser.add_argument("--step-batch", type=int, default=None, help="default: --batch")
    parser.add_argument("--out", default="results/audio_data")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        demo = SpeechDemoConfig(out=f"{tmp}/raw", speakers=args.speakers, chapters_per_speaker=3,
                                sentences_per_chapter=args.sentences,
                                digit_strings=args.digit_strings)  # fmt: skip
        prep = prep_rate(Path(tmp), demo, args.cpus)
        train = Path(tmp) / "shards" / "train"
        seen = bind_input(AudioInputConfig(frames=256), str(train))
        loader = loader_rate(train, seen, args.batch, args.batches)
    timed = dataclasses.replace(seen, frames=args.step_frames)
    batch = args.step_batch or args.batch
    step = audio_step(timed, batch, args.step_preset)
    times = interleaved({r: functools.partial(step, ratio=float(r)) for r in ("0.8", "0.0")},
                        args.rounds)  # fmt: skip
    peak = matmul_peak(torch.bfloat16)
    consumes = {r: batch * clip_seconds(timed) / median(t) for r, t in times.items()}
    m = machine()
    table = [
        f"{m['cpu']}, {m['threads']} threads; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s",
        "",
        "| measure | value |",
        "|---|---|",
        f"| prep: audio written | {prep['audio_hours'] * 60:.1f} min |",
        f"| prep: hours of audio per core-hour ({args.cpus} Ray CPU) | "
        f"{prep['hours_per_core_hour']:.0f} ({prep['hours_per_core_hour_with_startup']:.0f} "
        "with Ray start and fit) |",
        f"| loader: seconds of audio/s, one core | {loader:.0f} |",
        f"| step: ViT-{args.step_preset}, {args.step_frames} frames "
        f"({geometry(timed).num_tokens} patches), batch {batch}, bf16 | |",
        f"| step at 0.8: s, seconds of audio/s | {median(times['0.8']):.3f}, {consumes['0.8']:.0f} |",
        f"| step at 0.0: s, seconds of audio/s | {median(times['0.0']):.3f}, {consumes['0.0']:.0f} |",
        f"| step 0.0 / step 0.8 | {median(times['0.0']) / median(times['0.8']):.2f}x |",
        f"| loader cores per rank to feed the 0.8 step | {consumes['0.8'] / loader:.2f} |",
    ]
    payload = {"prep": prep, "loader_audio_s_per_s": loader, "step_s": times,
               "consumes_audio_s_per_s": consumes, "matmul_peak_gflop_s": peak / 1e9,
               "machine": m}  # fmt: skip
    write_results(args.out, "audio_data", payload, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
