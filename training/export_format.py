"""What an export directory holds, read without torch: file names and ``model.json``.

``model.json`` records what is needed to rebuild the model without the run's YAML: the modality,
the objective, the modality's input config (which fixes the token geometry), the model config,
and facts of the run (step, mask kind and ratio, train samples).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ModelConfig
from training.modalities import DEFAULT, TokenGeometry, modality

# The layouts other tools load (training.export_interop): transformers' ViTModel, timm's
# VisionTransformer.
FORMATS = ("hf", "timm")
ENCODER = "encoder.safetensors"
MAE = "mae.safetensors"
MODEL_JSON = "model.json"


@dataclass(frozen=True)
class ExportInfo:
    """What ``model.json`` says, typed."""

    modality: str
    objective: str
    input: Any  # the modality's input config
    model: ModelConfig
    info: dict  # step, mask kind and ratio, train samples, ...

    @property
    def geometry(self) -> TokenGeometry:
        return modality(self.modality).geometry(self.input)


def write_model_json(out_dir: Path, export: ExportInfo) -> None:
    desc = {
        "modality": export.modality,
        "objective": export.objective,
        "input": dataclasses.asdict(export.input),
        "model": dataclasses.asdict(export.model.resolved()),
        **export.info,
    }
    (out_dir / MODEL_JSON).write_text(json.dumps(desc, indent=2) + "\n")


def read_export(export_dir: str | Path) -> ExportInfo:
    desc = json.loads((Path(export_dir) / MODEL_JSON).read_text())
    if "modality" not in desc:  # written before modalities existed: the default was the only one
        desc = modality(DEFAULT).upgrade_export(desc)
    m = modality(desc["modality"])
    rest = {k: v for k, v in desc.items() if k not in ("modality", "objective", "input", "model")}
    return ExportInfo(
        modality=desc["modality"],
        objective=desc["objective"],
        input=m.input_config(**desc["input"]),
        model=ModelConfig(**desc["model"]),
        info=rest,
    )


def interop_problem(modality_name: str, model: ModelConfig | None = None) -> str | None:
    """Why a modality's encoder (of ``model``'s shape) cannot be exported to HF / timm, or None
    when it can."""
    if model is not None and not (model.cls_token and model.final_norm):
        return "an encoder without a cls token or final norm (VideoMAE's) has no ViT class there"
    return modality(modality_name).foreign_export_problem
