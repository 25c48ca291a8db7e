"""The image modality: ImageNet-layout shards (``jpg`` + ``cls``) to patch tokens for MAE.

Its configs and geometry (read when a run YAML is loaded, no torch); what it does to data is in
``image_ops``. Tokens are the normalised pixels of ``patch_size`` squares, row-major over the
patch grid. Downstream: linear probe, k-NN and fine-tuning, all top-1/top-5 accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from training.modalities import Modality, TokenGeometry
from training.modalities.image.legacy import v1_sections
from training.objectives import objective
from training.tasks.config import FinetuneConfig, KnnConfig, ProbeConfig


@dataclass
class ImageInputConfig:
    """``pretrain.input``: the square crops the model sees and how they become patch tokens."""

    POSITIVE: ClassVar = ("image_size", "patch_size")

    # (image) the square crop the model sees
    image_size: int = 224
    patch_size: int = 16  # ViT-H in the MAE paper uses 14
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # random-resized crop
    # (image) RandomResizedCrop + flip, as MAE
    hflip: bool = True

    def problems(self):
        if self.image_size % self.patch_size:
            yield (
                "image_size",
                f"a multiple of patch_size {self.patch_size}, got {self.image_size}",
            )
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            yield ("crop_scale", f"[min, max] with 0 < min <= max <= 1, got {self.crop_scale}")


@dataclass
class AugmentedInputConfig(ImageInputConfig):
    """A training input with the fine-tuning recipe's per-image augmentations
    (``image_augment``): RandAugment and random erasing, after the crop and flip."""

    randaug_ops: int = 0
    randaug_magnitude: float = 9.0
    randaug_std: float = 0.5
    erase_prob: float = 0.0


@dataclass
class ImageFinetuneConfig(FinetuneConfig):
    """MAE's ImageNet fine-tuning recipe by default: RandAugment ``rand-m9-mstd0.5-inc1``,
    random erasing 0.25, mixup 0.8, cutmix 1.0, switch 0.5, crops of 8-100% of the picture."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    randaug_ops: int = 2  # 0: no RandAugment
    randaug_magnitude: float = 9.0  # of 10
    randaug_std: float = 0.5
    erase_prob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0

    def problems(self):
        yield from super().problems()
        if self.randaug_ops < 0 or not 0 <= self.randaug_magnitude <= 10:
            yield ("randaug_ops", "randaug_ops >= 0 and randaug_magnitude in [0, 10]")
        if not 0 <= self.erase_prob <= 1:
            yield ("erase_prob", f"a float in [0, 1], got {self.erase_prob}")


@dataclass
class ImageProbeConfig(ProbeConfig):
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # with augment


@dataclass
class ImageTasksConfig:
    """``evaluate.tasks``: each protocol runs on the pretrained and a random-init encoder."""

    linear_probe: ImageProbeConfig = field(default_factory=ImageProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: ImageFinetuneConfig = field(default_factory=ImageFinetuneConfig)


def geometry(cfg: ImageInputConfig) -> TokenGeometry:
    grid = cfg.image_size // cfg.patch_size
    return TokenGeometry((grid, grid), cfg.patch_size**2 * 3)


def upgrade_export(desc: dict) -> dict:
    """A model.json from before the seam kept the image geometry inside ``model`` (and the
    patch size could come from the preset); move it to ``input``."""
    model = dict(desc["model"])
    size, patch = model.pop("image_size"), model.pop("patch_size")
    return {**desc, "model": model, "modality": "image", "objective": "mae",
            "input": {"image_size": size, "patch_size": patch}}  # fmt: skip


def hf_processor(cfg: ImageInputConfig) -> dict:
    """ConvNeXT's processor does our evaluation transform: the shorter side resized to
    ``image_size / 0.875``, a centre crop of ``image_size``, ImageNet mean and std, bicubic
    (ViT's processor squashes the whole picture to a square instead)."""
    from training.modalities.image.patches import PIXEL_MEAN, PIXEL_STD

    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": cfg.image_size},
        "crop_pct": 0.875,
        "resample": 3,  # bicubic, as our loader
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(PIXEL_MEAN),
        "image_std": list(PIXEL_STD),
    }


MODALITY = Modality(
    name="image",
    unit="images",
    objective=objective("mae"),
    members=("jpg", "cls"),
    mask_kinds=("random", "block", "noise_lowpass", "noise_highpass", "noise_bandpass", "hpm"),
    mask_ratio=0.75,  # MAE's
    input_config=ImageInputConfig,
    tasks_config=ImageTasksConfig,
    geometry=geometry,
    ops_module="training.modalities.image.ops",
    upgrade_export=upgrade_export,
    older_sections=v1_sections,
    foreign_export_problem=None,
    hf_processor=hf_processor,
    moved_keys={  # the image-only layout before modalities
        "pretrain.model.image_size": "pretrain.input.image_size",
        "pretrain.model.patch_size": "pretrain.input.patch_size",
        "pretrain.loader.crop_scale": "pretrain.input.crop_scale",
        "pretrain.loader.hflip": "pretrain.input.hflip",
        "evaluate.linear_probe": "evaluate.tasks.linear_probe",
        "evaluate.knn": "evaluate.tasks.knn",
        "evaluate.finetune": "evaluate.tasks.finetune",
    },
)
