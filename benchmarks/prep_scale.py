"""How the prep's driver scales with the corpus: synthetic corpora of tiny items at three sizes,
each prepared by the real job (local Ray), and the driver's figures at each size, projected to
the real corpora on 640 CPUs with the arithmetic shown.

    python -m benchmarks.prep_scale                           # every modality, 2k / 8k / 32k
    python -m benchmarks.prep_scale --modalities audio video --sizes 10000 100000 1000000

Per modality and size, in a process of its own (the driver's peak RSS is per process):
- driver peak RSS and driver CPU seconds per 1,000 inputs (the driver lists, plans, submits and
  collects; its work is serial, so at scale it bounds the wall-clock);
- task count and the spread of shard sizes (min / median / max bytes);
- wall-clock and the tasks' CPU seconds per input (wall x CPUs / inputs: an upper bound).

Text corpora are 16 files at every size, 4x the image sizes, so what grows is the number of
documents: a driver that held anything per document (the one-process dedup did) shows it;
C4's 1,024 files are a per-file cost the driver pays once each.

Tiny items (16 px images, one-line documents) make the driver's share visible: its cost per
input does not depend on the item's size, the tasks' does. Fixed costs (importing, starting the
Ray head) dominate small runs, so the figures projected are marginal: the difference between
the largest and the smallest size, per input. The tasks' cost per input comes from a real-sized
item timed here for images (an ImageNet-sized JPEG), audio (a minute of LibriLight-like speech
cut as the reader cuts it, per second of audio, times LibriLight's 60 k hours) and video (a
Kinetics-sized clip: 10 s at 340 x 256, 30 fps, cut into the reader's default four clips), and
for text (a token of the demo corpus's prose at seq 512 through the dedup pass and the encode
task: C4's average document is ~430 tokens, the runs' one-line documents ~12, so the runs' wall
clock says little about C4's tasks; the driver's share, the point here, is the runs').
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine

SIZES = (2000, 8000, 32000)
TARGET_CPUS = 640
C4_TOKENS = 156e9  # C4.en's count (Dodge et al. 2021, "Documenting Large Webtext Corpora")
# The corpora the issue names: inputs and what one input is, for the projection.
CORPORA = {
    "ImageNet-1k": ("image", 1_281_167),
    "ImageNet-21k": ("image", 14_197_122),
    "LibriLight": ("audio", 219_000),  # chapters; 60 k hours (Kahn et al. 2020)
    "Kinetics-400": ("video", 260_000),  # train + val videos, ~10 s each
    "C4 (en)": ("text", 365_000_000),
}
MODALITIES = ("image", "text", "audio", "video")
LIBRILIGHT_SECONDS = 60_000 * 3600


def write_images(root: Path, n: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 200)).save(buf, "JPEG")
    data = buf.getvalue()
    for i in range(n):
        folder = root / "train" / f"n{i % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{i % 10:08d}_{i}.JPEG").write_bytes(data)


def write_chapters(root: Path, n: int) -> None:
    """LibriLight's layout, ``n`` chapters of 1.1 s (a tone: FLAC packs it small) with their
    voice activity; 100 speakers, 10 books each."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(17600) / 16000)
    sf.write(buf, tone, 16000, format="FLAC", subtype="PCM_16")
    audio, meta = buf.getvalue(), json.dumps({"voice_activity": [[0.0, 1.1]]})
    for i in range(n):
        folder = root / "small" / f"{i % 100}" / f"{i % 1000}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"chapter_{i}.flac").write_bytes(audio)
        (folder / f"chapter_{i}.json").write_text(meta)


def write_videos(root: Path, n: int) -> None:
    """Kinetics' layout: ``train.csv`` and ``n`` clips of 16 frames at 32 x 32 (one encoded
    once, copied), 10 classes."""
    import numpy as np

    from data_prep.video.demo import write_video

    sample = root / "sample.mp4"
    write_video(sample, np.full((16, 32, 32, 3), 90, np.uint8), 25)
    data = sample.read_bytes()
    sample.unlink()
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i in range(n):
        label = f"class {i % 10}"
        folder = root / "train" / label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"v{i:09d}_000000_000010.mp4").write_bytes(data)
        rows.append(f"{label},v{i:09d},0,10,train")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


WRITERS = {"image": write_images, "audio": write_chapters, "video": write_videos}


TEXT_FILES = 16  # the file count stays: what grows is the documents, whose cost is measured
# Text sizes are this many times the image sizes: a driver holding ~80 bytes a document shows
# in its RSS only past ~100 k documents (Ray's start alone varies it by a few MB).
TEXT_SCALE = 4


def write_documents(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    per_file = -(-n // TEXT_FILES)
    for start in range(0, n, per_file):
        lines = (json.dumps({"text": f"document {i} says {i % 97} things about {i % 13}"})
                 for i in range(start, min(n, start + per_file)))  # fmt: skip
        (root / f"part-{start // per_file:05d}.jsonl").write_text("\n".join(lines) + "\n")


def _prep_config(modality: str, source: Path, out: Path, cpus: int):
    from data_prep.corpus import corpus_reader

    reader = corpus_reader(modality)
    keys = {"source": str(source), "out": str(out), "splits": ["train"], "num_cpus": cpus}
    if modality == "text":
        keys.update(vocab_size=200, tokenizer_sample_docs=2000, seq_len=32, val_fraction=0.0)
    if modality == "video":
        keys.update(short_side=32)
    return reader, reader.config(**keys)


def measure(modality: str, n: int, cpus: int) -> dict:
    """Write a corpus of ``n`` tiny inputs, prepare it; the driver's figures (this process)."""
    from data_prep.job import run_prep
    from data_prep.shard_format import read_manifest

    tmp = Path(tempfile.mkdtemp(prefix="prep-scale-"))
    source = tmp / "src"
    WRITERS.get(modality, write_documents)(source, n)
    reader, cfg = _prep_config(modality, source, tmp / "out", cpus)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    stats = run_prep(reader, cfg)["train"]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    sizes = sorted(r.bytes for r in read_manifest(tmp / "out" / "train"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "n": n,  # images, or documents (text: stats["inputs"] counts files)
        "inputs": stats["inputs"],
        "tokens": stats["samples"] * getattr(cfg, "seq_len", 0),  # packed: full sequences
        "driver_cpu_s": cpu,
        "driver_peak_rss_mb": after.ru_maxrss / 1024,
        "driver_cpu_s_per_1000": 1000 * cpu / n,
        "tasks": len(sizes),
        "shard_bytes": [sizes[0], int(statistics.median(sizes)), sizes[-1]],
        "wall_s": wall,
        "task_cpu_s_per_input": wall * cpus / n,
    }


def real_image_cost(repeats: int = 20) -> float:
    """CPU seconds to prepare one ImageNet-sized JPEG (500 x 375, the corpus's typical size):
    decode, shrink to 256 short side, re-encode, as the image reader does."""
    import numpy as np
    from PIL import Image

    from data_prep.image.encode import normalize_image

    rng = np.random.default_rng(0)
    pixels = (rng.random((375, 500, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    start = time.process_time()
    for _ in range(repeats):
        normalize_image(data, 256, 90)
    return (time.process_time() - start) / repeats


def real_audio_cost(seconds: int = 60) -> float:
    """CPU seconds a second of LibriLight-like audio costs the audio reader: a chapter of
    ``seconds`` (speech-like: noise bursts in a 1-3 s rhythm, pauses between), decoded, cut at
    its voice activity into 10 s segments, each re-encoded as FLAC."""
    import numpy as np
    import soundfile as sf

    from data_prep.audio.layout import AudioItem
    from data_prep.audio.reader import AudioPrepConfig, encode

    rng = np.random.default_rng(0)
    t = np.arange(seconds * 16000) / 16000
    envelope = (np.sin(2 * np.pi * t / 2.3) > -0.3).astype(np.float32)
    speech = 0.2 * envelope * rng.standard_normal(len(t)).astype(np.float32)
    activity = [[float(a), float(min(seconds, a + 1.6))] for a in np.arange(0, seconds, 2.3)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "small" / "1" / "2"
        folder.mkdir(parents=True)
        sf.write(folder / "c.flac", speech, 16000, format="FLAC", subtype="PCM_16")
        (folder / "c.json").write_text(json.dumps({"voice_activity": activity}))
        item = AudioItem("small/1/2/c.flac", "1", "2", "c", root=tmp)
        cfg = AudioPrepConfig(source=tmp, out=tmp)
        start = time.process_time()
        assert sum(1 for _ in encode(cfg, {"classes": {}}, item)) >= seconds // 10
        return (time.process_time() - start) / seconds


def real_video_cost() -> float:
    """CPU seconds the video reader spends on one Kinetics-sized clip: 10 s at 340 x 256,
    30 fps, H.264 (moving shapes over a textured scene), cut into its default clips."""
    import numpy as np

    from data_prep.video.demo import write_video
    from data_prep.video.layout import VideoItem
    from data_prep.video.reader import VideoPrepConfig, encode

    rng = np.random.default_rng(0)
    scene = (rng.random((256 + 300, 340 + 300, 3)) * 255).astype(np.uint8)
    frames = np.stack([scene[k : k + 256, k : k + 340] for k in range(300)])  # a slow pan
    with tempfile.TemporaryDirectory() as tmp:
        write_video(Path(tmp) / "v.mp4", frames, 30)
        item = VideoItem("v.mp4", "a", "v", root=tmp)
        cfg = VideoPrepConfig(source=tmp, out=tmp)
        start = time.process_time()
        assert sum(1 for _ in encode(cfg, {"classes": {"a": 0}}, item)) >= 4
        return time.process_time() - start


def real_text_cost(seq_len: int = 512) -> float:
    """CPU seconds a token of real prose costs the text prep, both passes: the dedup signatures
    and their merge (``fit`` with a given tokenizer: no training), then the encode tasks with
    their shard writer, at C4's recipe length. The documents are the demo corpus's (the
    stdlib's docstrings and the language reference, C4 / Pile / Wikipedia / txt forms); one
    core, in this process (a fit of under 48 files runs its tasks inline)."""
    from benchmarks.text_prep import _real_tokens, maskmill_prep
    from data_prep.text.demo import TextDemoConfig, write_text_demo
    from data_prep.text.layout import text_files
    from data_prep.text.reader import TextItem, TextPrepConfig, fit

    with tempfile.TemporaryDirectory() as tmp:
        source = write_text_demo(TextDemoConfig(out=f"{tmp}/raw")) / "corpus"
        files = text_files(source)
        items = [TextItem(f, "train", n) for n, f in enumerate(files)]

        def config(name: str, **keys) -> TextPrepConfig:
            Path(tmp, name).mkdir()
            return TextPrepConfig(source=str(source), out=f"{tmp}/{name}", seq_len=seq_len,
                                  val_fraction=0.0, splits=["train"], **keys)  # fmt: skip

        fit(config("trained"), items)  # the tokenizer, untimed: a fixed cost, not a token's
        cfg = config("timed", tokenizer=f"{tmp}/trained/tokenizer.json")
        start = time.process_time()
        state = fit(cfg, items)
        maskmill_prep(cfg, state, files, Path(cfg.out))
        seconds = time.process_time() - start
        return seconds / _real_tokens(Path(cfg.out))


def marginal(found: list[dict], key: str) -> float:
    """``key``'s growth per input from the smallest size to the largest."""
    return (found[-1][key] - found[0][key]) / (found[-1]["n"] - found[0]["n"])


def project(rows: dict, costs: dict[str, float]) -> list[str]:
    """The arithmetic, one line per corpus whose modality was measured: tasks over
    TARGET_CPUS at ``costs[modality]`` CPU seconds an input (text: a token), plus the driver's
    serial share at its marginal cost per input."""
    lines = []
    for corpus, (modality, inputs) in CORPORA.items():
        if modality not in rows:
            continue
        found = rows[modality]
        # a marginal below the runs' noise can come out negative: counted as none
        per_input = max(0.0, marginal(found, "driver_cpu_s"))
        driver = per_input * inputs
        if modality == "text":  # C4's documents are ~430 tokens, the runs' ~12: by the token
            per_token = costs["text"]
            tasks = per_token * C4_TOKENS / TARGET_CPUS
            lines.append(
                f"| {corpus} | {inputs:,} documents, {C4_TOKENS / 1e9:.0f} B tokens | "
                f"{per_token * 1e6:.2f} µs x {C4_TOKENS:.3g} tokens / {TARGET_CPUS} = "
                f"{tasks / 60:.1f} min | {per_input * 1e6:.1f} µs x {inputs:,} = "
                f"{driver / 60:.1f} min | {(tasks + driver) / 60:.1f} min |"
            )
            continue
        task = costs[modality]
        tasks = task * inputs / TARGET_CPUS
        if modality == "audio":  # by the second of audio: chapters run 1 min to hours
            per_second = task / (LIBRILIGHT_SECONDS / inputs)
            what = f"{per_second * 1e3:.2f} ms x {LIBRILIGHT_SECONDS:.3g} s of audio"
        else:
            what = f"{task * 1e3:.2f} ms x {inputs:,}"
        lines.append(
            f"| {corpus} | {inputs:,} | {what} / {TARGET_CPUS} = "
            f"{tasks / 60:.1f} min | {per_input * 1e6:.0f} µs x {inputs:,} = "
            f"{driver / 60:.1f} min | {(tasks + driver) / 60:.1f} min |"
        )
    return lines


def print_projection(rows: dict[str, list[dict]]) -> None:
    """Each measured modality's real-sized item timed here, then the projection table."""
    timers = {"image": real_image_cost, "video": real_video_cost, "text": real_text_cost,
              "audio": lambda: real_audio_cost() * LIBRILIGHT_SECONDS / CORPORA["LibriLight"][1]}  # fmt: skip
    costs = {m: timers[m]() for m in MODALITIES if m in rows}
    timed = {"image": "an ImageNet-sized JPEG", "audio": "LibriLight's average chapter "
             "(16.4 min)", "video": "a 10 s Kinetics clip at 340 x 256",
             "text": "a token of prose at seq 512, dedup pass included"}  # fmt: skip
    said = "; ".join(
        f"{timed[m]}: {c * 1e6:.2f} µs" if m == "text" else f"{timed[m]}: {c * 1e3:.1f} ms"
        for m, c in costs.items()
    )
    print(f"\nProjection to {TARGET_CPUS} CPUs (CPU per input, timed here: {said}):")
    print("| corpus | inputs | tasks on 640 CPUs | driver (serial) | total |")
    print("|---|---|---|---|---|")
    print("\n".join(project(rows, costs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs=3, type=int, default=SIZES)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument("--one", nargs=2, metavar=("MODALITY", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.cpus)))
        return
    about = machine()
    print(f"{about['cpu']}, {args.cpus} CPUs for Ray; each size in a process of its own\n")
    print(
        "| modality | inputs | driver peak RSS | driver CPU / 1000 inputs | tasks | shard "
        "bytes (min / median / max) | wall | task CPU / input |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows: dict[str, list[dict]] = {}
    for modality in args.modalities:
        for n in [n * (TEXT_SCALE if modality == "text" else 1) for n in args.sizes]:
            cmd = [sys.executable, "-m", "benchmarks.prep_scale", "--cpus", str(args.cpus),
                   "--one", modality, str(n)]  # fmt: skip
            env = {**os.environ, "TQDM_DISABLE": "1"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.setdefault(modality, []).append(r)
            lo, mid, hi = r["shard_bytes"]
            print(f"| {modality} | {n:,} | {r['driver_peak_rss_mb']:.0f} MB | "
                  f"{r['driver_cpu_s_per_1000']:.3f} s | {r['tasks']} | {lo:,} / {mid:,} / "
                  f"{hi:,} | {r['wall_s']:.1f} s | {r['task_cpu_s_per_input'] * 1e3:.2f} ms |")  # fmt: skip
    for modality, found in rows.items():
        growth = found[-1]["driver_peak_rss_mb"] - found[0]["driver_peak_rss_mb"]
        per_input = 1e6 * marginal(found, "driver_peak_rss_mb")
        print(f"\n{modality}: driver peak RSS grows {growth:.0f} MB from {found[0]['n']:,} to "
              f"{found[-1]['n']:,} inputs: {per_input:.0f} bytes per input, so "
              f"{per_input * 1.28e6 / 1e9:.2f} GB at ImageNet-1k's 1.28 M and "
              f"{per_input * 1e9 / 1e9:.0f} GB at 10^9; driver CPU "
              f"{marginal(found, 'driver_cpu_s') * 1e6:.0f} µs per input")  # fmt: skip
    print_projection(rows)


if __name__ == "__main__":
    main()
