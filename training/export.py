"""Exporting a trained model: consolidate the ZeRO partitions into safetensors, and loading it
back (``model.json`` and the file names: ``training.export_format``)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.export_format import ENCODER, MAE, ExportInfo, read_export, write_model_json
from training.objectives import objective
from training.objectives.mae.model import ViTEncoder
from training.safe_load import weights_only_loading


def export_from_checkpoint(
    ckpt_dir: Path, tag: str, out_dir: Path, export: ExportInfo, zero_stage: int
) -> None:
    """Write the whole MAE, the encoder alone and its description from checkpoint ``tag``.

    With ZeRO (stages 1-3) the fp32 master weights are gathered from every rank's partition, as
    DeepSpeed's ``zero_to_fp32`` does; without ZeRO the one model-state file holds them all.
    """
    with weights_only_loading():  # no pickle in a checkpoint runs code
        if zero_stage > 0:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        else:
            path = ckpt_dir / tag / "mp_rank_00_model_states.pt"
            state = torch.load(path, map_location="cpu")["module"]
    write_export({k: v.float() for k, v in state.items()}, out_dir, export)


def write_export(state: dict[str, torch.Tensor], out_dir: Path, export: ExportInfo) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    # HPM's loss head chose masks while training; the exported MAE reconstructs without it.
    state = {k: v for k, v in state.items() if not k.startswith("loss_head.")}
    save_file(state, str(out_dir / MAE))
    save_file(encoder, str(out_dir / ENCODER))
    write_model_json(out_dir, export)


def load_encoder(export_dir: str | Path, drop_path: float = 0.0) -> ViTEncoder:
    export = read_export(export_dir)
    encoder = ViTEncoder(export.model, export.geometry, drop_path=drop_path)
    encoder.load_state_dict(load_file(str(Path(export_dir) / ENCODER)))
    return encoder


def load_model(export_dir: str | Path) -> torch.nn.Module:
    """The whole pretraining model of an export (MAE with its decoder, MLM with its head)."""
    export = read_export(export_dir)
    model = objective(export.objective).build_model(export.model, export.geometry, None)
    model.load_state_dict(load_file(str(Path(export_dir) / MAE)))
    return model


load_mae = load_model  # the name before other objectives
