"""What the video modality does to data: decode a clip sample, crop and resize it, turn a batch
into tubelet tokens, its downstream tasks, its report figure.

A training clip gets one random box (``crop_scale`` of the frame's area, aspect 3/4-4/3) for all
its frames, and a flip when ``hflip`` is on; an evaluation clip gets the square of the shorter
side at ``eval_crop``. The clip member is whichever form the prep stored
(``data_prep.video.codecs``); frames are resized with OpenCV in the loader's workers, so the batch
that reaches the device is uint8 ``[B, T, S, S, 3]`` and tokenizing is a normalise + reshape.
"""

from __future__ import annotations

import logging
import random

import cv2
import numpy as np
import torch

from data_prep.video.codecs import FORMS, decode_clip
from training.modalities import Example, ModalityOps
from training.modalities.figures import masked_and_reconstructed, picture_grid
from training.modalities.image.ops import random_resized_crop_box
from training.modalities.image.patches import PIXEL_MEAN, PIXEL_STD
from training.modalities.video.bundle import VideoInputConfig, VideoTasksConfig
from training.tasks.finetune import Finetune
from training.tasks.probe import Knn, LinearProbe

log = logging.getLogger(__name__)
cv2.setNumThreads(0)


def decode(cfg: VideoInputConfig, sample: dict, rng: random.Random | None) -> Example | None:
    """A shard sample -> uint8 ``[T, S, S, 3]``."""
    form = next((f for f in FORMS if f in sample), None)
    try:
        if form is None:
            raise ValueError("no clip member")
        frames = decode_clip(form, sample[form])
    except ValueError as err:
        log.warning("cannot decode sample %s: %s", sample.get("__key__"), err)
        return None
    frames = frames[frame_indices(len(frames), cfg.num_frames)]
    height, width = frames.shape[1:3]
    if rng is not None:
        box = random_resized_crop_box((width, height), cfg.crop_scale, rng)
        flip = cfg.hflip and rng.random() < 0.5
    else:
        box, flip = eval_crop_box((width, height), cfg.eval_crop), False
    clip = crop_resized(frames, box, cfg.frame_size, flip)
    label = int(sample["cls"]) if "cls" in sample else -1
    return Example(torch.from_numpy(clip), label, sample["__key__"])


def frame_indices(stored: int, wanted: int) -> np.ndarray:
    """``wanted`` indices spread evenly over ``stored`` frames (all of them when equal)."""
    return np.linspace(0, stored - 1, wanted).round().astype(np.int64)


def eval_crop_box(size: tuple[int, int], where: str) -> tuple[int, int, int, int]:
    """The square of the shorter side at the first, centre or last place along the longer."""
    w, h = size
    side = min(w, h)
    offset = {"first": 0, "centre": (max(w, h) - side) // 2, "last": max(w, h) - side}[where]
    return (offset, 0, offset + side, side) if w >= h else (0, offset, side, offset + side)


def crop_resized(frames: np.ndarray, box, out: int, flip: bool) -> np.ndarray:
    """uint8 ``[T, out, out, 3]`` of ``box`` of every frame."""
    left, top, right, bottom = box
    far = min(right - left, bottom - top) >= 2 * out
    method = cv2.INTER_AREA if far else cv2.INTER_LINEAR
    result = np.empty((len(frames), out, out, 3), np.uint8)
    for t, frame in enumerate(frames):
        resized = cv2.resize(frame[top:bottom, left:right], (out, out), interpolation=method)
        result[t] = resized[:, ::-1] if flip else resized
    return result


def tokenize(cfg: VideoInputConfig, clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, S, S, 3]`` -> normalised tubelet values ``[B, N, t*p*p*3]`` (float32),
    tokens ordered (time, row, col), values (frame, row, col, channel)."""
    return tubeletize(normalize_clips(clips), cfg.tubelet, cfg.patch_size)


def normalize_clips(clips: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN, device=clips.device)
    std = torch.tensor(PIXEL_STD, device=clips.device)
    return (clips.float() / 255.0 - mean) / std


def tubeletize(clips: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, T, H, W, C]`` -> ``[B, (T/t)*(H/p)*(W/p), t*p*p*C]``."""
    b, t, h, w, c = clips.shape
    x = clips.reshape(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch * c)


def untubeletize(tokens: torch.Tensor, cfg: VideoInputConfig) -> torch.Tensor:
    """Inverse of :func:`tubeletize` for ``cfg``'s clip shape: -> ``[B, T, S, S, 3]``."""
    t, p, s = cfg.tubelet, cfg.patch_size, cfg.frame_size
    b = tokens.shape[0]
    x = tokens.reshape(b, cfg.num_frames // t, s // p, s // p, t, p, p, 3)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, cfg.num_frames, s, s, 3)


def tasks(cfg: VideoTasksConfig) -> list:
    return [LinearProbe(cfg.linear_probe), Knn(cfg.knn), Finetune(cfg.finetune)]


@torch.no_grad()
def reconstruction_figure(cfg: VideoInputConfig, model, clips: torch.Tensor, mask, title: str):
    """One row per clip, each cell a strip of four frames: original | masked | reconstruction."""
    target = tokenize(cfg, clips)
    masked, reconstructed = masked_and_reconstructed(model, target, mask, fill=-10.0)
    shown = frame_indices(cfg.num_frames, 4)
    mean, std = torch.tensor(PIXEL_MEAN), torch.tensor(PIXEL_STD)

    def strips(tokens: torch.Tensor) -> np.ndarray:
        frames = (untubeletize(tokens, cfg)[:, shown] * std + mean).clamp(0, 1)
        return torch.cat(list(frames.unbind(dim=1)), dim=2).numpy()  # frames side by side

    columns = [("frames", target), (title, masked), ("reconstruction", reconstructed)]
    return picture_grid([(h, strips(t)) for h, t in columns], (12, 1.1), interpolation="nearest")


OPS = ModalityOps(
    decode=decode,
    tokenize=tokenize,
    tasks=tasks,
    reconstruction_figure=reconstruction_figure,
)
