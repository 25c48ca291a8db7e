"""The video data path: which clip form the loader decodes fastest, the loader against a
decord-style baseline that decodes the source videos at training time, prep throughput, and
what the quickstart's step consumes at tube-mask ratios 0.9 and 0.0.

    python -m benchmarks.video_data [--videos 24] [--short-side 56] [--frame-size 48]
        [--patch-size 8] [--clips 24] [--rounds 3] [--batch 32] [--out results/video_data]

The defaults are the quickstart's sizes; ``--short-side 256 --frame-size 224 --patch-size 16
--batch 8`` is VideoMAE's Kinetics input (the step then is ViT-nano on 8 x 14 x 14 tubelets).

1. **Clip forms**: the demo corpus's videos (rendered at ``--short-side``), decoded once, cut
   into the quickstart's clips (16 frames at stride 2) and stored as per-frame JPEG (``mjpeg``),
   H.264 mp4 with one keyframe per clip and raw uint8 + zstd (``npy.zst``); for each, clips per
   second one core decodes into the training input (decode + crop + resize to
   ``--frame-size``: the loader's whole work per clip), and bytes per clip.
2. **Baseline**: what the reference loaders do with decord: open the source video, decode up
   to the clip's last frame, keep every ``stride``-th, resize + crop. PyAV (FFmpeg, as decord
   is) on the same files, one thread. Clips per second per core.
3. **Prep**: the real Ray job over the corpus, clips written per core-second.
4. **Loader vs step**: the real training loader (one core, no workers) over the prepared
   train split, against clips per second of the quickstart's step (ViT-nano, decoder 2 x 96,
   tubelets of 2 x ``--patch-size``², batch ``--batch``, bf16) at 0.9 (tubes) and 0.0.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from benchmarks.common import interleaved, machine, matmul_peak, median, write_results
from benchmarks.pretrain_vs_hf import MasterWeights
from data_prep.video.clips import plan_clips
from data_prep.video.codecs import FORMS, decode_clip, encode_clip
from data_prep.video.decode import read_video, scaled_size
from data_prep.video.demo import VideoDemoConfig, write_video_demo
from data_prep.video.layout import split_items
from data_prep.video.reader import VideoPrepConfig, prep_video
from training.config import LoaderConfig, ModelConfig
from training.loader import train_loader, train_spec_for
from training.modalities.video.bundle import VideoInputConfig, geometry
from training.modalities.video.ops import crop_resized, eval_crop_box, tokenize
from training.objectives.mae.masking import make_masks
from training.objectives.mae.model import MaskedAutoencoder

FRAMES, STRIDE = 16, 2


def source_clips(videos: list[Path], short_side: int, count: int):
    """(video file, clip frame indices, decoded clip) of up to ``count`` clips."""
    found = []
    for path in videos:
        frames = read_video(path, short_side).frames
        for clip in plan_clips(len(frames), FRAMES, STRIDE, 2, pad=False).clips:
            found.append((path, clip, frames[list(clip)]))
    return found[:count]


def form_rates(clips, frame_size: int, rounds: int) -> dict[str, dict]:
    """Clips/s one core decodes into the training input, and bytes per clip, for each form."""
    stored = {f: [encode_clip(c, f, 90) for _, _, c in clips] for f in FORMS}
    h, w = clips[0][2].shape[1:3]
    box = eval_crop_box((w, h), "centre")

    def run(form, _):
        for data in stored[form]:
            crop_resized(decode_clip(form, data), box, frame_size, False)

    times = interleaved({f: functools.partial(run, f) for f in FORMS}, rounds)
    return {
        f: {
            "clips_per_s": len(clips) / median(times[f]),
            "bytes_per_clip": sum(map(len, stored[f])) / len(clips),
        }
        for f in FORMS
    }


def decode_source_clip(path: Path, clip: tuple[int, ...], short_side: int, size: int):
    """The decord-style loader's work for one clip: decode the source video up to the clip's
    last frame, keep its frames, resize (swscale) and centre-crop."""
    wanted, out = set(clip), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                w, h = scaled_size(frame.width, frame.height, short_side)
                out.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
            if i >= clip[-1]:
                break
    frames = np.stack(out)
    return crop_resized(frames, eval_crop_box((w, h), "centre"), size, False)


def baseline_rate(clips, short_side: int, frame_size: int, rounds: int) -> float:
    def run(_):
        for path, clip, _ in clips:
            decode_source_clip(path, clip, short_side, frame_size)

    return len(clips) / median(interleaved({"source": run}, rounds)["source"])


def prep_rate(raw: Path, out: Path, short_side: int) -> dict:
    cfg = VideoPrepConfig(source=str(raw), out=str(out), short_side=short_side, frames=FRAMES,
                          stride=STRIDE, clips_per_video=2, num_cpus=1)  # fmt: skip
    stats = prep_video(cfg)
    seconds = sum(s["seconds"] for s in stats.values())
    clips = sum(s["samples"] for s in stats.values())
    return {"clips": clips, "splits_s": seconds, "clips_per_core_s": clips / seconds}


def loader_rate(train: Path, seen: VideoInputConfig, batch: int, batches: int) -> float:
    spec = train_spec_for(str(train), "video", seen, LoaderConfig(workers=0), batch, seed=0)
    it = train_loader(spec)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def video_step(seen: VideoInputConfig, batch: int):
    """``step(i, ratio)``: one bf16 training step of the quickstart's model, tube masks."""
    torch.manual_seed(0)
    g = geometry(seen)
    cfg = ModelConfig(preset="nano", decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
    model = MaskedAutoencoder(cfg, g).train().to(torch.bfloat16)
    opt = MasterWeights(model, 1e-4)
    clips = torch.randint(0, 256, (batch, seen.num_frames, seen.frame_size, seen.frame_size, 3),
                          dtype=torch.uint8)  # fmt: skip
    keys = [f"clip{i}" for i in range(batch)]

    def step(i: int, ratio: float) -> None:
        mask = make_masks("tube", 0, i, keys, g, ratio)
        opt.step(model(tokenize(seen, clips).to(torch.bfloat16), mask))

    return step


def parse(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=24, help="demo videos per split")
    parser.add_argument("--short-side", type=int, default=56, help="stored frames' shorter side")
    parser.add_argument("--frame-size", type=int, default=48, help="the model's crop")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=24, help="clips timed per form")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--out", default="results/video_data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, args.videos // 6)
        height = args.short_side
        width = scaled_size(4 * height, 3 * height, height)[0]
        demo = VideoDemoConfig(out=f"{tmp}/raw", clips_per_class=per_class,
                               val_clips_per_class=1, width=width, height=height, seconds=2.6)  # fmt: skip
        raw = write_video_demo(demo)
        videos = [i.file for i in split_items(raw, "train")]
        clips = source_clips(videos, args.short_side, args.clips)
        forms = form_rates(clips, args.frame_size, args.rounds)
        baseline = baseline_rate(clips, args.short_side, args.frame_size, args.rounds)
        prep = prep_rate(raw, Path(tmp) / "shards", args.short_side)
        seen = VideoInputConfig(
            num_frames=FRAMES, frame_size=args.frame_size, patch_size=args.patch_size
        )
        loader = loader_rate(Path(tmp) / "shards" / "train", seen, args.batch, args.batches)
    step = video_step(seen, args.batch)
    times = interleaved({r: functools.partial(step, ratio=float(r)) for r in ("0.9", "0.0")},
                        args.rounds)  # fmt: skip
    peak = matmul_peak(torch.bfloat16)
    consumes = {r: args.batch / median(t) for r, t in times.items()}
    table = _table(args, forms, baseline, prep, loader, times, consumes, peak)
    payload = {"forms": forms, "baseline_clips_per_s": baseline, "prep": prep,
               "loader_clips_per_s": loader, "step_s": times, "consumes_clips_per_s": consumes,
               "matmul_peak_gflop_s": peak / 1e9, "machine": machine()}  # fmt: skip
    write_results(args.out, "video_data", payload, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


def geometry_text(args) -> str:
    side = args.frame_size // args.patch_size
    return f"{FRAMES // 2} x {side} x {side}"


def _table(args, forms, baseline, prep, loader, times, consumes, peak) -> list[str]:
    m = machine()
    best = max(forms, key=lambda f: forms[f]["clips_per_s"])
    rows = [
        f"{m['cpu']}, {m['threads']} threads; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s",
        f"clips of {FRAMES} frames at stride {STRIDE}, stored at short side {args.short_side}, "
        f"decoded to {args.frame_size}x{args.frame_size}; step on {geometry_text(args)} tubelets",
        "",
        "| clip form | clips/s, one core | vs source decode | KB per clip |",
        "|---|---|---|---|",
    ]
    for f, r in forms.items():
        rows.append(f"| {f}{' (fastest)' if f == best else ''} | {r['clips_per_s']:.0f} | "
                    f"{r['clips_per_s'] / baseline:.1f}x | {r['bytes_per_clip'] / 1024:.0f} |")  # fmt: skip
    rows += [
        f"| source mp4 decoded at training time (decord-style) | {baseline:.0f} | 1.0x | |",
        "",
        "| measure | value |",
        "|---|---|",
        f"| prep: clips written per core-second (1 Ray CPU) | {prep['clips_per_core_s']:.1f} |",
        f"| loader: clips/s, one core (real train_loader, npy.zst) | {loader:.0f} |",
        f"| step at 0.9 (tubes): s, clips/s | {median(times['0.9']):.3f}, {consumes['0.9']:.0f} |",
        f"| step at 0.0: s, clips/s | {median(times['0.0']):.3f}, {consumes['0.0']:.0f} |",
        f"| step 0.0 / step 0.9 | {median(times['0.0']) / median(times['0.9']):.2f}x |",
        f"| loader cores per rank to feed the 0.9 step | {consumes['0.9'] / loader:.2f} |",
    ]
    return rows


if __name__ == "__main__":
    sys.exit(main())
