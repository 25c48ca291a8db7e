"""A small action-recognition corpus in the Kinetics layout, rendered and encoded with PyAV.

Six classes that only motion tells apart: moving left or right, growing or shrinking, rotating
clockwise or anticlockwise. With ``scene: object`` one shape moves so over a smooth, muted
background; with ``scene: texture`` the whole picture does (a camera panning, zooming and
rolling over a scene of blobs and shapes), so every part of every frame shows the motion. Every
class draws the same shapes, colours, backgrounds, positions, sizes and angles, so one frame
carries no class information; two frames do. A clip is ``seconds`` long at ``fps`` with a little
sensor noise, encoded as H.264 mp4 (one mkv and one webm among them, as Kinetics downloads mix
containers).

Layout (Kinetics-400's): ``train.csv`` and ``validate.csv`` with ``label,youtube_id,time_start,
time_end,split`` and the clips as ``{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``.
With ``corrupt`` the corpus gets the quirks real downloads have: an mp4 cut short before its
index (unreadable) and one cut short after it (decodes partway), an audio-only file, a clip
shorter than the sampling window, and a CSV row whose file is missing.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CLASSES = (
    "moving left",
    "moving right",
    "growing",
    "shrinking",
    "rotating clockwise",
    "rotating anticlockwise",
)
CSV_FIELDS = ("label", "youtube_id", "time_start", "time_end", "split")
SCENES = ("object", "texture")
# x264 options under which the same frames give the same bytes (measured: with the lookahead and
# mb-tree on, one to all of 8 clips came out different on a second encode, threads 1 or not).
X264_REPRODUCIBLE = {"rc-lookahead": "0", "mbtree": "0"}
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass
class VideoDemoConfig:
    """``demo_data`` section for video: Kinetics-layout clips of six motion classes."""

    out: str = "???"
    clips_per_class: int = 40  # train
    val_clips_per_class: int = 10
    width: int = 128
    height: int = 96
    fps: int = 25
    seconds: float = 2.0
    corrupt: bool = False  # add broken and quirky inputs the prep must count
    seed: int = 0
    # object: one shape moves over a still background; texture: the whole scene moves (a
    # camera's pan, zoom and roll), so every token of a clip sees the motion
    scene: str = "object"

    def problems(self):
        if self.scene not in SCENES:
            yield ("scene", f"one of {', '.join(SCENES)}, got {self.scene!r}")
        for key in ("clips_per_class", "val_clips_per_class"):
            if getattr(self, key) < 1:
                yield (key, f"an int >= 1, got {getattr(self, key)}")
        for key in ("width", "height"):
            if getattr(self, key) < 32 or getattr(self, key) % 2:
                yield (key, f"an even int >= 32 (pixels), got {getattr(self, key)}")
        if not 1 <= self.fps <= 120:
            yield ("fps", f"an int in [1, 120], got {self.fps}")
        if not 0.5 <= self.seconds <= 30:
            yield ("seconds", f"a float in [0.5, 30], got {self.seconds}")


def write_video_demo(cfg: VideoDemoConfig) -> Path:
    """Write the corpus under ``cfg.out``; returns that folder."""
    root = Path(cfg.out)
    rng = np.random.default_rng([cfg.seed, 23])
    frames = max(2, round(cfg.seconds * cfg.fps))
    rows = {"train": [], "val": []}
    jobs = [
        (split, label)
        for split, count in (("train", cfg.clips_per_class), ("val", cfg.val_clips_per_class))
        for _ in range(count)
        for label in CLASSES
    ]
    for n, (split, label) in enumerate(tqdm(jobs, desc="video demo", unit="clip")):
        ext = ".mkv" if n == 1 else ".webm" if n == 2 else ".mp4"
        clip = render_clip(label, cfg.width, cfg.height, frames, rng, cfg.scene)
        rows[split].append(_write_clip(root, split, label, clip, cfg.fps, ext, rng))
    if cfg.corrupt:
        _write_quirks(root, cfg, rows, rng)
    for split, name in (("train", "train.csv"), ("val", "validate.csv")):
        _write_csv(root / name, rows[split])
    log.info("video demo: %d clips of %d classes under %s", len(jobs), len(CLASSES), root)
    return root


def render_clip(
    label: str, width: int, height: int, frames: int, rng, scene: str = "object"
) -> np.ndarray:
    """uint8 RGB ``[frames, height, width, 3]`` of one clip of class ``label``."""
    if scene == "texture":
        return _render_camera(label, width, height, frames, rng)
    background = _background(width, height, rng)
    # Saturated colours over a muted background: the object, not the background, is what a
    # clip's pixels vary by most (over a high-contrast background neither a small 3-D CNN nor
    # VideoMAE pretraining learned the classes from raw frames; from frame differences a CNN did).
    colour = tuple(int(c) for c in rng.choice([30, 60, 196, 226], size=3))
    side = min(width, height)
    size0, angle0 = rng.uniform(0.3, 0.45) * side, rng.uniform(0, 360)
    # Fast enough that a sampled clip (a third to a half of the video) shows it plainly.
    travel = rng.uniform(0.6, 0.8) * width  # moving: pixels over the video
    spin = rng.uniform(270, 450)  # rotating: degrees over the video
    growth = rng.uniform(2.5, 3.5)  # growing: end size / start size
    x0, y0 = rng.uniform(0.45, 0.55) * width, rng.uniform(0.35, 0.65) * height
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        u = t / (frames - 1) - 0.5  # -0.5 .. 0.5: symmetric, so no class has its own positions
        x, size, angle = x0, size0, angle0
        if label.startswith("moving"):
            x = x0 + (travel * u if label == "moving right" else -travel * u)
        elif label in ("growing", "shrinking"):
            size = size0 * growth ** (u if label == "growing" else -u)
        else:  # image y points down: clockwise on screen is a growing angle
            angle = angle0 + (spin * u if label == "rotating clockwise" else -spin * u)
        frame = background.copy()
        _draw_shape(frame, (x, y0), size, angle, colour)
        noise = rng.integers(-4, 5, size=frame.shape, dtype=np.int16)
        out[t] = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def _render_camera(label: str, width: int, height: int, frames: int, rng) -> np.ndarray:
    """The whole scene moves: a canvas three times the frame, viewed through a window that pans
    (the scene moves left or right), zooms (it grows or shrinks) or rolls (it rotates) about
    the canvas's centre, at the same speeds as an object moves."""
    canvas = _scene(3 * width, 3 * height, rng)
    travel = rng.uniform(0.6, 0.8) * width
    spin = rng.uniform(270, 450)
    growth = rng.uniform(2.5, 3.5)
    angle0 = rng.uniform(0, 360)
    centre = (1.5 * width, 1.5 * height)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        u = t / (frames - 1) - 0.5
        shift, scale, angle = 0.0, 1.0, angle0
        if label.startswith("moving"):
            shift = travel * u if label == "moving right" else -travel * u
        elif label in ("growing", "shrinking"):
            scale = growth ** (u if label == "growing" else -u)
        else:  # as for an object: clockwise on screen is a growing angle (y points down)
            angle = angle0 + (spin * u if label == "rotating clockwise" else -spin * u)
        # the scene about the canvas's centre: rotated, scaled, shifted, then the frame's window
        m = cv2.getRotationMatrix2D(centre, -angle, scale)
        m[:, 2] += (shift - width, -height)
        frame = cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        noise = rng.integers(-4, 5, size=frame.shape, dtype=np.int16)
        out[t] = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def _scene(width: int, height: int, rng) -> np.ndarray:
    """A canvas of soft colour blobs with sharp shapes on it: edges to follow everywhere."""
    coarse = rng.integers(60, 196, size=(9, 12, 3)).astype(np.uint8)
    canvas = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    side = min(width, height)
    for _ in range(40):
        colour = tuple(int(c) for c in rng.choice([30, 60, 196, 226], size=3))
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        _draw_shape(canvas, centre, rng.uniform(0.05, 0.15) * side, rng.uniform(0, 360), colour)
    return canvas


def _background(width: int, height: int, rng) -> np.ndarray:
    """A smooth, muted random colour field: low-resolution noise scaled up (bicubic)."""
    coarse = rng.integers(108, 148, size=(3, 4, 3)).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _draw_shape(frame: np.ndarray, centre, size: float, angle: float, colour) -> None:
    """A bar with a contrasting cap at one end, so its orientation shows."""
    box = ((float(centre[0]), float(centre[1])), (size, size * 0.45), angle)
    cv2.fillPoly(frame, [cv2.boxPoints(box).round().astype(np.int32)], colour, cv2.LINE_AA)
    rad = math.radians(angle)
    cap = (centre[0] + 0.35 * size * math.cos(rad), centre[1] + 0.35 * size * math.sin(rad))
    cap_box = ((float(cap[0]), float(cap[1])), (size * 0.3, size * 0.45), angle)
    inverse = tuple(255 - c for c in colour)
    cv2.fillPoly(frame, [cv2.boxPoints(cap_box).round().astype(np.int32)], inverse, cv2.LINE_AA)


def write_video(path: Path, frames: np.ndarray, fps: int, options: dict | None = None) -> None:
    """Encode RGB frames by the file's extension: H.264 in mp4/mkv, VP9 in webm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    # bitexact: no random segment id or date in matroska/webm headers, so a rerun is the same
    with av.open(str(path), "w", options={"fflags": "+bitexact", **(options or {})}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # the encoders' threads vary the bytes too
        if codec == "libx264":  # its lookahead (mb-tree) varied the bytes run to run, even so
            stream.options = X264_REPRODUCIBLE
        for i, f in enumerate(frames):
            out.mux(stream.encode(video_frame(f, i, fps)))
        out.mux(stream.encode())


def video_frame(rgb: np.ndarray, index: int, fps: float) -> av.VideoFrame:
    """A frame with its timestamp set: frames without one got arbitrary timestamps, which the
    encoders' rate control reads, so the same frames encoded to different bytes run to run."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = index, Fraction(1, max(1, round(fps)))
    return frame


def _write_clip(root: Path, split: str, label: str, clip, fps: int, ext: str, rng) -> dict:
    row = _row(label, split, clip.shape[0] / fps, rng)
    write_video(root / split / label.replace(" ", "_") / f"{_file_stem(row)}{ext}", clip, fps)
    return row


def _row(label: str, split: str, seconds: float, rng) -> dict:
    start = int(rng.integers(0, 300))
    youtube_id = "".join(_ID_CHARS[i] for i in rng.integers(0, len(_ID_CHARS), size=11))
    return {
        "label": label,
        "youtube_id": youtube_id,
        "time_start": start,
        "time_end": start + max(1, math.ceil(seconds)),
        "split": "train" if split == "train" else "val",
    }


def _file_stem(row: dict) -> str:
    return f"{row['youtube_id']}_{row['time_start']:06d}_{row['time_end']:06d}"


def _write_quirks(root: Path, cfg: VideoDemoConfig, rows: dict, rng) -> None:
    w, h, fps = cfg.width, cfg.height, cfg.fps
    long = round(2 * cfg.seconds * cfg.fps)
    for index_first in (False, True):  # the mp4 index after the data (the default) or before it
        row = _row(CLASSES[0], "train", long / fps, rng)
        path = root / "train" / "moving_left" / f"{_file_stem(row)}.mp4"
        options = {"movflags": "faststart"} if index_first else {}
        write_video(path, render_clip(CLASSES[0], w, h, long, rng, cfg.scene), fps, options)
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
        rows["train"].append(row)
    short = _write_clip(
        root,
        "train",
        CLASSES[1],
        render_clip(CLASSES[1], w, h, 6, rng, cfg.scene),
        fps,
        ".mp4",
        rng,
    )
    rows["train"].append(short)
    silent = _row(CLASSES[2], "train", 1.0, rng)
    _write_audio_only(root / "train" / "growing" / f"{_file_stem(silent)}.mp4")
    rows["train"].append(silent)
    rows["val"].append(_row(CLASSES[3], "val", 2.0, rng))  # its file is never written


def _write_audio_only(path: Path, rate: int = 16000) -> None:
    """One second of a 440 Hz tone in an mp4 with no video stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, rate, 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
