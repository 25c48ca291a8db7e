"""Run directories of maskmill 0.1 (images only, before modalities) keep their finished stages."""

from pathlib import Path

import pytest

from pipeline.schema import load_run_config
from pipeline.stages import STAGES
from pipeline.state import fingerprint
from training.modalities.image.legacy import v1_sections

CONFIGS = Path(__file__).resolve().parents[4] / "configs"

# What maskmill 0.1 (commit f766aac) computed for these configs with inputs "INPUTS", recorded
# from that code: pretrain is the section whose layout moved.
V1 = [
    ("quickstart_image.yaml", [], "pretrain", "a738626cfafefa89"),
    # 0.1 with patch_size left to the preset (hashed as null); today's YAML names 16
    ("imagenet_mae_vitb.yaml", ["prep.source=/data/imagenet"], "pretrain", "5348120c51aa82a6"),
]


@pytest.mark.parametrize(("config", "overrides", "stage", "v1"), V1)
def test_today_config_renders_to_what_0_1_hashed(config, overrides, stage, v1):
    cfg = load_run_config(CONFIGS / config, ["run_dir=/r", *overrides])
    section = next(s for s in STAGES if s.name == stage).section(cfg)
    candidates = {fingerprint(stage, text, "INPUTS") for text in v1_sections(stage, section)}
    assert v1 in candidates


def test_a_changed_config_matches_no_0_1_fingerprint():
    cfg = load_run_config(
        CONFIGS / "quickstart_image.yaml", ["run_dir=/r", "pretrain.mask.ratio=0.9"]
    )
    section = next(s for s in STAGES if s.name == "pretrain").section(cfg)
    candidates = {
        fingerprint("pretrain", text, "INPUTS") for text in v1_sections("pretrain", section)
    }
    assert "a738626cfafefa89" not in candidates
