"""An exported encoder in the layouts other tools load: HF ``transformers`` (``ViTModel``) and
timm (``VisionTransformer``).

Our encoder keeps four things that a guessed mapping gets silently wrong; each is mapped here:

- the token projection is a Linear over a patch flattened as (row, col, channel): timm and HF
  hold a strided conv ``[D, C, p, p]``, the same map once the weight is reordered;
- positions are fixed sin-cos, computed, not stored: both tools hold them as a tensor, with a
  zero row for the cls token (which gets no position in our encoder, as in MAE);
- attention's q, k and v are one fused Linear (as timm's ``qkv``); HF holds three;
- every LayerNorm has eps 1e-6 (HF's ViT default is 1e-12) and the features are the mean of the
  final-normed patch tokens, cls left out (timm: ``global_pool="avg", fc_norm=False``; HF:
  ``last_hidden_state[:, 1:].mean(1)``), or the cls token with ``pool: cls``.

Which of our modalities fit is the modality's to say (``foreign_export_problem``, and its
``hf_processor`` for the input transform): image, and audio (a log-mel spectrogram is a
one-channel picture to a ViT). Video and text have no class in either tool that holds our
encoder exactly; the reason is given to the user.

The mappings are pure functions of a state dict; the writers add the config files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.export_format import ENCODER, FORMATS, ExportInfo, interop_problem, read_export
from training.modalities import modality
from training.positions import sincos_positions

HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
HF_PROCESSOR = "preprocessor_config.json"
TIMM_WEIGHTS = "model.safetensors"
TIMM_CONFIG = "timm_config.json"  # VisionTransformer's keyword arguments


def patch_size(export: ExportInfo) -> int:
    return int(export.input.patch_size)


def channels(export: ExportInfo) -> int:
    return export.geometry.values_per_token // patch_size(export) ** 2


def picture_size(export: ExportInfo) -> tuple[int, int]:
    """(height, width) in pixels (image) or (frames, mel bins) (audio) of one input."""
    rows, cols = export.geometry.grid
    return rows * patch_size(export), cols * patch_size(export)


def timm_state_dict(encoder: dict[str, torch.Tensor], export: ExportInfo) -> dict:
    """Our encoder's tensors under timm ``VisionTransformer``'s names (no head)."""
    p, c, dim = patch_size(export), channels(export), export.model.resolved().embed_dim
    out = {
        "cls_token": encoder["cls_token"],
        # [D, p*p*C] over (row, col, channel) -> the conv kernel [D, C, p, p]
        "patch_embed.proj.weight": encoder["patch_embed.weight"]
        .reshape(dim, p, p, c)
        .permute(0, 3, 1, 2),
        "patch_embed.proj.bias": encoder["patch_embed.bias"],
        "pos_embed": stored_positions(dim, export.geometry.grid, encoder.get("pos_embed")),
        "norm.weight": encoder["norm.weight"],
        "norm.bias": encoder["norm.bias"],
    }
    renames = {
        "norm1": "norm1",
        "attn.qkv": "attn.qkv",
        "attn.proj": "attn.proj",
        "norm2": "norm2",
        "mlp.0": "mlp.fc1",
        "mlp.2": "mlp.fc2",
    }
    for i in range(export.model.resolved().depth):
        for ours, theirs in renames.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{theirs}.{kind}"] = encoder[f"blocks.{i}.{ours}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def stored_positions(
    dim: int, grid: tuple[int, ...], stored: torch.Tensor | None = None
) -> torch.Tensor:
    """``[1, 1 + N, D]``: our positions (fixed sin-cos, or the table the export stores:
    ``model.stored_positions``) with the cls token's zero row first."""
    table = sincos_positions(dim, grid) if stored is None else stored.reshape(-1, dim)
    return torch.cat([torch.zeros(1, dim), table])[None]


def timm_kwargs(export: ExportInfo) -> dict:
    """``VisionTransformer(**kwargs)`` that holds :func:`timm_state_dict` and pools as we do."""
    m = export.model.resolved()
    return {
        "img_size": list(picture_size(export)),
        "patch_size": patch_size(export),
        "in_chans": channels(export),
        "embed_dim": m.embed_dim,
        "depth": m.depth,
        "num_heads": m.num_heads,
        "mlp_ratio": m.mlp_ratio,
        "qkv_bias": True,
        "num_classes": 0,
        "global_pool": "token" if m.pool == "cls" else "avg",
        "fc_norm": False,  # the final norm before pooling, as ours (timm's "avg" default is after)
    }


def hf_state_dict(timm_state: dict[str, torch.Tensor], depth: int) -> dict:
    """timm ``VisionTransformer`` tensors under HF ``ViTModel``'s names (no pooler)."""
    out = {
        "embeddings.cls_token": timm_state["cls_token"],
        "embeddings.position_embeddings": timm_state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
        "layernorm.weight": timm_state["norm.weight"],
        "layernorm.bias": timm_state["norm.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(depth):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in renames.items():
            for kind in ("weight", "bias"):
                out[f"{theirs}{b}.{kind}"] = timm_state[f"{ours}{a}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = timm_state[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, t in (("query", q), ("key", k), ("value", v)):
                out[f"{theirs}attention.attention.{name}.{kind}"] = t
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(export: ExportInfo) -> dict:
    m = export.model.resolved()
    height, width = picture_size(export)
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": m.embed_dim,
        "num_hidden_layers": m.depth,
        "num_attention_heads": m.num_heads,
        "intermediate_size": int(m.embed_dim * m.mlp_ratio),
        "hidden_act": "gelu",  # exact (erf) GELU, as torch's nn.GELU()
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "image_size": [height, width] if height != width else height,
        "patch_size": patch_size(export),
        "num_channels": channels(export),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "torch_dtype": "float32",
        # Not read by transformers; says how maskmill pools (see the module docstring).
        "maskmill": {"modality": export.modality, "pool": m.pool, **export.info},
    }


def write_interop(export_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write export ``export_dir`` as ``fmt`` (hf | timm) into ``out``; returns ``out``."""
    export = read_export(export_dir)
    problem = interop_problem(export.modality, export.model)
    if problem:
        raise ValueError(f"cannot export a {export.modality} encoder to {fmt}: {problem}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timm_state = timm_state_dict(load_file(str(Path(export_dir) / ENCODER)), export)
    if fmt == "timm":
        save_file(timm_state, str(out / TIMM_WEIGHTS))
        _write_json(out / TIMM_CONFIG, timm_kwargs(export))
    elif fmt == "hf":
        depth = export.model.resolved().depth
        save_file(hf_state_dict(timm_state, depth), str(out / HF_WEIGHTS), {"format": "pt"})
        _write_json(out / HF_CONFIG, hf_config(export))
        processor = modality(export.modality).hf_processor
        if processor is not None:
            _write_json(out / HF_PROCESSOR, processor(export.input))
    else:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return out


def _write_json(path: Path, desc: dict) -> None:
    path.write_text(json.dumps(desc, indent=2) + "\n")
