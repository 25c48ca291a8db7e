"""Exports that HF ``transformers`` and timm load: the same features as our encoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.export import load_encoder, write_export
from training.export_format import ExportInfo, interop_problem
from training.export_interop import HF_PROCESSOR, TIMM_CONFIG, TIMM_WEIGHTS, write_interop
from training.modalities.audio.bundle import AudioInputConfig
from training.modalities.image.bundle import ImageInputConfig
from training.modalities.image.patches import normalize_pixels, patchify
from training.objectives import objective

SMALL = ModelConfig(embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1)


def _export(tmp_path, modality, input_cfg, pool="mean"):
    """A random, non-trivial model exported as the pretrain stage does."""
    export = ExportInfo(
        modality, "mae", input_cfg, dataclasses.replace(SMALL, pool=pool), {"step": 1}
    )
    model = objective("mae").build_model(export.model, export.geometry, None)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # biases and norms away from 0 and 1, so none is skipped
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    write_export(model.state_dict(), tmp_path / "export", export)
    return tmp_path / "export"


def _images(size, n=3):
    gen = torch.Generator().manual_seed(1)
    return normalize_pixels(
        torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    )


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_hf_vit_model_gives_our_features(tmp_path, pool):
    transformers = pytest.importorskip("transformers", reason="transformers is the bench extra")
    export_dir = _export(tmp_path, "image", ImageInputConfig(image_size=32, patch_size=8), pool)
    hf_dir = write_interop(export_dir, "hf", tmp_path / "hf")

    model = transformers.AutoModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
    images = _images(32)
    with torch.no_grad():
        hidden = model(pixel_values=images).last_hidden_state
        ours = load_encoder(export_dir).eval().features(patchify(images, 8))
    theirs = hidden[:, 1:].mean(1) if pool == "mean" else hidden[:, 0]
    assert type(model).__name__ == "ViTModel"
    # Too small to show in these features (~5e-7), so checked where it is set: 1e-12 is HF's default.
    assert model.config.layer_norm_eps == 1e-6
    assert (theirs - ours).abs().max().item() <= 1e-5


def test_hf_image_processor_does_our_evaluation_transform(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the bench extra")
    from PIL import Image

    from training.modalities.image.ops import centre_crop_box, crop_resized

    export_dir = _export(tmp_path, "image", ImageInputConfig(image_size=32, patch_size=8))
    hf_dir = write_interop(export_dir, "hf", tmp_path / "hf")
    assert json.loads((hf_dir / HF_PROCESSOR).read_text())["image_mean"] == [0.485, 0.456, 0.406]
    processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)

    # A smooth picture (interpolation kernels differ at edges, not on gradients), 60 x 90.
    y, x = np.mgrid[0:60, 0:90]
    rgb = np.stack([x * 2.5, y * 4, (x + y) * 1.5], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.jpg", quality=100)
    data = (tmp_path / "p.jpg").read_bytes()
    theirs = processor(Image.open(tmp_path / "p.jpg"), return_tensors="pt")["pixel_values"]
    ours = normalize_pixels(
        torch.from_numpy(
            crop_resized(data, (90, 60), centre_crop_box((90, 60), 32), 32, False)
        ).permute(2, 0, 1)[None]
    )
    assert theirs.shape == ours.shape == (1, 3, 32, 32)
    # Same crop and normalisation; only the resampling kernels differ (PIL vs OpenCV bicubic).
    assert (theirs - ours).abs().mean().item() < 0.05


def test_audio_exports_as_a_one_channel_vit(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the bench extra")
    cfg = AudioInputConfig(frames=64, patch_size=16, mel_mean=0.0, mel_std=1.0)
    export_dir = _export(tmp_path, "audio", cfg)
    model = transformers.AutoModel.from_pretrained(
        write_interop(export_dir, "hf", tmp_path / "hf"), add_pooling_layer=False
    ).eval()
    mels = torch.randn(2, 1, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = model(pixel_values=mels).last_hidden_state[:, 1:].mean(1)
        ours = load_encoder(export_dir).eval().features(patchify(mels, 16))
    assert (theirs - ours).abs().max().item() <= 1e-5


def test_timm_vision_transformer_gives_our_features(tmp_path):
    timm = pytest.importorskip(
        "timm", reason="timm needs torchvision, whose wheels pull a CUDA torch; not installed here"
    )
    from safetensors.torch import load_file

    export_dir = _export(tmp_path, "image", ImageInputConfig(image_size=32, patch_size=8))
    out = write_interop(export_dir, "timm", tmp_path / "timm")
    model = timm.models.vision_transformer.VisionTransformer(
        **json.loads((out / TIMM_CONFIG).read_text())
    )
    model.load_state_dict(load_file(str(out / TIMM_WEIGHTS)))
    images = _images(32)
    with torch.no_grad():
        theirs = model.eval()(images)
        ours = load_encoder(export_dir).eval().features(patchify(images, 8))
    assert (theirs - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("modality", ["video", "text"])
def test_modalities_no_class_fits_say_why(modality):
    assert "no class in HF or timm" in interop_problem(modality)
