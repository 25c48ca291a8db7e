"""Run directories written before modalities (maskmill 0.1, images only): their fingerprints.

0.1 hashed the pretrain section in its image-only layout: ``image_size`` and ``patch_size`` under
``pretrain.model``, ``crop_scale`` and ``hflip`` under ``pretrain.loader``, no mask kind. Today's
config renders differently, so without this a finished 0.1 pretraining would look changed and its
output (checkpoints included) would be removed and redone. The runner accepts, for a stage
recorded as done, the fingerprint 0.1 would compute for today's config, and from then on records
today's. (0.1's one-process ``evaluate`` stage has no successor to keep: ``finetune`` and
``probe`` run its protocols as distributed jobs, and run anew on a 0.1 run directory.)
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

# 0.1's presets carried the patch size; a 0.1 YAML that left it unset hashed it as null.
V1_PRESET_PATCH = {"nano": 8, "tiny": 16, "small": 16, "base": 16, "large": 16, "huge": 14}


def v1_sections(stage: str, section: Any) -> list[str]:
    """The YAML texts 0.1 may have hashed for ``section`` (today's, for ``stage``), or none when
    the layout did not change for that stage or today's config could not be written by 0.1."""
    tree = OmegaConf.to_container(OmegaConf.structured(section))
    if stage != "pretrain":
        return []
    candidates = _pretrain_v1(tree)
    return [OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=False) for c in candidates]


def _pretrain_v1(tree: dict) -> list[dict]:
    p = tree["pretrain"]
    if p["modality"] != "image" or p["mask"]["kind"] != "random":
        return []
    seen, model = p["input"], p["model"]
    out = []
    patches = [seen["patch_size"]]
    if V1_PRESET_PATCH.get(model["preset"]) == seen["patch_size"]:
        patches.append(None)
    for patch in patches:
        v1_model = {
            "preset": model["preset"],
            "image_size": seen["image_size"],
            "patch_size": patch,
        }
        v1_model.update((k, v) for k, v in model.items() if k != "preset")
        loader = p["loader"]
        v1 = {k: v for k, v in p.items() if k not in ("modality", "input")}
        v1["model"] = v1_model
        v1["mask"] = {"ratio": p["mask"]["ratio"]}
        v1["loader"] = {
            "workers": loader["workers"],
            "shuffle_buffer": loader["shuffle_buffer"],
            "crop_scale": seen["crop_scale"],
            "hflip": seen["hflip"],
            "prefetch_factor": loader["prefetch_factor"],
        }
        out.append({"pretrain": v1, "global_batch": tree["global_batch"]})
    return out
