"""Every number of every config section is range-checked before any work starts, with the key
named: table-driven over the shipped quickstart of each modality."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.schema import load_run_config
from training.typed_config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODALITIES = ("image", "audio", "video", "text")


def _numbers(obj, prefix=""):
    """(dotted key, class) of every int / float field in a config tree (unset ones included)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        elif _is_number(value, f.type):
            yield f"{prefix}{f.name}", type(obj)


def _is_number(value, declared) -> bool:
    if value is None:  # unset: numeric if declared so (int | None)
        return "int" in str(declared) or "float" in str(declared)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refused(config: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_run_config(config, list(overrides))
    return str(err.value)


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_negative_number_is_refused_by_name(modality):
    """All at once: validation names every bad key in one error, so one load checks them all
    (one load per key took 50 s of the suite)."""
    config = CONFIGS / f"quickstart_{modality}.yaml"
    keys = [
        key
        for key, cls in _numbers(load_run_config(config))
        if key.rpartition(".")[2] not in getattr(cls, "SIGNED", ())
    ]
    said = _refused(config, *(f"{key}=-1" for key in keys))
    assert [k for k in keys if f"  {k}: " not in said] == []
    assert len(keys) > 60


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "pretrain.model.decoder_num_heads=0",
            "pretrain.model.decoder_num_heads: an int > 0, got 0",
        ),
        ("pretrain.model.num_heads=0", "pretrain.model.num_heads: an int > 0, got 0"),
        ("pretrain.input.image_size=0", "pretrain.input.image_size: an int > 0, got 0"),
        ("pretrain.input.patch_size=-4", "pretrain.input.patch_size: an int > 0, got -4"),
        (
            "launch.master_port=70000",
            "launch.master_port: a TCP port in [1, 65535] or null, got 70000",
        ),
        ("pretrain.optim.warmup_steps=-1", "pretrain.optim.warmup_steps: an int >= 0, got -1"),
        (
            "pretrain.loader.shuffle_buffer=-1",
            "pretrain.loader.shuffle_buffer: an int >= 0, got -1",
        ),
        ("pretrain.loader.prefetch_factor=0", "pretrain.loader.prefetch_factor: an int > 0, got 0"),
        ("report.reconstructions=0", "report.reconstructions: an int > 0, got 0"),
    ],
)
def test_values_that_used_to_pass_and_then_crash_are_refused(override, expected):
    assert expected in _refused(CONFIGS / "quickstart_image.yaml", override)


def test_a_negative_mean_is_a_mean():
    cfg = load_run_config(CONFIGS / "quickstart_audio.yaml", ["pretrain.input.mel_mean=-4.5"])
    assert cfg.pretrain.input.mel_mean == -4.5


def test_mask_settings_are_refused_where_they_cannot_work():
    image, text, video = (CONFIGS / f"quickstart_{m}.yaml" for m in ("image", "text", "video"))
    assert load_run_config(image, ["pretrain.mask.ratio=0.98"]).pretrain.mask.ratio == 0.98
    assert "pretrain.mask.ratio: a float in [0, 0.98]" in _refused(
        image, "pretrain.mask.ratio=0.99"
    )
    assert "pretrain.mask.per_sample: 1 for an MLM" in _refused(text, "pretrain.mask.per_sample=2")
    assert "pretrain.mask.kind: one of tube, random for video" in _refused(
        video, "pretrain.mask.kind=block"
    )
    assert "pretrain.mask.hard_share: a float in [0, 1]" in _refused(
        image, "pretrain.mask.hard_share=1.5"
    )
    hpm = load_run_config(image, ["pretrain.mask.kind=hpm", "pretrain.mask.per_sample=4"])
    assert (hpm.pretrain.mask.kind, hpm.pretrain.mask.per_sample) == ("hpm", 4)
