"""The forms a clip is stored in, one shard member each: encode at prep, decode in the loader.

* ``mjpeg``: one JPEG per frame, concatenated (a Motion-JPEG stream); each frame decodes alone.
* ``mp4``: H.264 in MP4, one keyframe at the clip's start (the loader decodes the whole clip).
* ``npy.zst``: the raw uint8 ``[T, H, W, 3]`` array as ``.npy``, zstd-compressed.

``python -m benchmarks.video_data`` measures each form's decode rate per core and size per clip
on the demo corpus; the prep's default (:data:`DEFAULT_FORM`) is the form it picked, and the
others stay selectable with ``prep.clip_format``.
"""

from __future__ import annotations

import io
from fractions import Fraction

import cv2
import numpy as np

from data_prep.shard_format import npy_zst_array, npy_zst_bytes

FORMS = ("mjpeg", "mp4", "npy.zst")
# Picked by benchmarks/video_data.py (README "Performance"): into the training input raw + zstd
# decodes 1.5x faster per core than per-frame JPEG at the quickstart's 56 px and 1.2x at
# Kinetics' 256 px, and 3-19x faster than H.264; it is 2-3.3x larger than JPEG on disk, which
# ``clip_format: mjpeg`` trades back where storage or I/O is short (the K400 recipe does).
DEFAULT_FORM = "npy.zst"
_SOI = b"\xff\xd8\xff"  # start of a JPEG image; inside entropy-coded data 0xFF is always stuffed


def encode_clip(frames: np.ndarray, form: str, quality: int, fps: float = 25.0) -> bytes:
    """uint8 RGB ``[T, H, W, 3]`` -> the bytes of one ``form`` member."""
    if form == "mjpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        parts = [cv2.imencode(".jpg", f[:, :, ::-1], params)[1].tobytes() for f in frames]
        return b"".join(parts)
    if form == "mp4":
        return _h264(frames, quality, fps)
    if form == "npy.zst":
        return npy_zst_bytes(frames)
    raise ValueError(f"unknown clip form {form!r}; expected one of {', '.join(FORMS)}")


def _h264(frames: np.ndarray, quality: int, fps: float) -> bytes:
    import av  # only the prep encodes mp4; the loader decodes it below

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # JPEG quality 90 and CRF 18 are both "visually lossless"; 3 quality points per CRF step
        crf = min(51, max(0, 18 + (90 - quality) // 3))
        # no lookahead or mb-tree: with them the same clip encoded to different bytes run to run
        stream.options = {"crf": str(crf), "preset": "fast", "g": str(len(frames)),
                          "rc-lookahead": "0", "mbtree": "0"}  # fmt: skip
        stream.codec_context.thread_count = 1
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, max(1, round(fps)))  # reproducible bytes
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def decode_clip(form: str, data: bytes) -> np.ndarray:
    """The bytes of one ``form`` member -> uint8 RGB ``[T, H, W, 3]``; ValueError when they do
    not decode."""
    if form == "mjpeg":
        parts = jpeg_parts(data)
        frames = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
        if not frames or any(f is None for f in frames):
            raise ValueError("corrupt JPEG frame")
        return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])
    if form == "mp4":
        return _decode_h264(data)
    if form == "npy.zst":
        return npy_zst_array(data)
    raise ValueError(f"unknown clip form {form!r}")


def jpeg_parts(data: bytes) -> list[bytes]:
    """The JPEG images of a concatenated Motion-JPEG member."""
    starts = []
    pos = data.find(_SOI)
    while pos >= 0:
        starts.append(pos)
        pos = data.find(_SOI, pos + 3)
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)])]


def _decode_h264(data: bytes) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # one loader worker, one core
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, IndexError) as err:
        raise ValueError(f"corrupt mp4 clip: {err}") from None
    if not frames:
        raise ValueError("mp4 clip without frames")
    return np.stack(frames)


def clip_key(video_key: str, index: int) -> str:
    """The sample key of clip ``index`` of a video: the multi-view test groups clips by video."""
    return f"{video_key}_clip{index:02d}"


def video_of(sample_key: str) -> str:
    """The video key a clip's sample key belongs to (inverse of :func:`clip_key`)."""
    return sample_key.rsplit("_clip", 1)[0]
