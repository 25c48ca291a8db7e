"""Starting from published weights: a checkpoint in a known layout loaded into our MAE (its
encoder, and its decoder when the file has one), with everything left unloaded named.

Layouts, told apart by their tensors' names:

- ``hf``: HF ``ViTMAEForPreTraining`` (``vit.*``, ``decoder.*``), or an encoder alone
  (``ViTMAEModel`` / ``ViTModel``: ``embeddings.*``), in transformers 4's names
  (``encoder.layer.N.attention.attention.query``) or 5's (``layers.N.attention.q_proj``; its
  ``save_pretrained`` writes the decoder's as ``decoder.decoder_encoder.layer.N``);
  a saved folder (``model.safetensors`` + ``config.json``) or the file;
- ``mae``: the MAE repository's checkpoint (``checkpoint["model"]``: ``patch_embed.proj``,
  ``blocks.N.attn.qkv``, ``decoder_embed``, ``decoder_blocks.N``, ``decoder_pred``,
  ``pos_embed``, ``decoder_pos_embed``), with or without the decoder; timm's encoder names are
  the same;
- ``maskmill``: our own export (``mae.safetensors``: ``encoder.*``, ``decoder.*``; or
  ``encoder.safetensors``).

What a renaming alone gets wrong, mapped here: the conv patch projection ``[D, C, p, p]`` is our
Linear over a patch flattened (row, col, channel); HF's three q, k, v Linears are our one fused
``qkv``; the position tables are the checkpoint's own (HF's sin-cos orders its halves otherwise
than ours), put in our buffers, bicubically interpolated when the grid differs (another
resolution or patch count); HF's LayerNorm eps (``config.json``, 1e-12 by default) is kept.
Files are read with safetensors or ``torch.load(weights_only=True)``, never unpickled whole.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class InitError(ValueError):
    """The checkpoint cannot start this model: unknown layout, shapes that differ, or tensors
    left unloaded that the user has not accepted (``pretrain.init_accept``)."""


@dataclass(frozen=True)
class Loaded:
    layout: str
    loaded: list[str]  # our names
    missing: list[str]  # ours the file did not have (accepted by prefix)
    unused: list[str]  # the file's that mean nothing to our model


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a checkpoint file or saved folder, and its HF config (or ``{}``)."""
    path = Path(path)
    config = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        found = [p for p in ("model.safetensors", "mae.safetensors", "encoder.safetensors")
                 if (path / p).is_file()]  # fmt: skip
        if not found:
            raise InitError(f"{path}: no model.safetensors, mae.safetensors or encoder.safetensors")
        path = path / found[0]
    if not path.is_file():
        raise InitError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path)), config
    state = torch.load(path, map_location="cpu", weights_only=True)  # no code unpickled
    return (state.get("model", state) if isinstance(state, dict) else state), config


def layout_of(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if any(k.startswith(("vit.", "embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "maskmill"
    if "patch_embed.proj.weight" in keys:
        return "mae"
    raise InitError(f"not a known layout (HF ViTMAE / ViT, the MAE repository's, maskmill's): "
                    f"its first tensors are {sorted(keys)[:4]}")  # fmt: skip


_HF_LAYER = {  # HF layer part (transformers 5, then 4) -> MAE's
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_HF_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "query": 0, "key": 1, "value": 2}


def hf_to_mae(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF ViTMAE / ViT tensors under the MAE repository's names, and the HF names left over."""
    out, qkv, unused = {}, {}, []
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
        "decoder.mask_token": "mask_token",
        "decoder.decoder_pos_embed": "decoder_pos_embed",
    }
    for name, tensor in state.items():
        key = name.removeprefix("vit.")
        layer = re.match(r"(decoder\.decoder_layers|decoder\.decoder_encoder\.layer|layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$", key)  # fmt: skip
        if key in fixed:
            out[fixed[key]] = tensor
        elif m := re.match(
            r"decoder\.(decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)$", key
        ):
            out[f"{m[1]}.{m[2]}"] = tensor
        elif layer:
            blocks = "decoder_blocks" if layer[1].startswith("decoder") else "blocks"
            part, kind = (
                layer[3].removeprefix("attention.attention.").removeprefix("attention."),
                layer[4],
            )
            if part in _HF_QKV:
                qkv.setdefault((blocks, layer[2], kind), [None] * 3)[_HF_QKV[part]] = tensor
            elif layer[3] in _HF_LAYER:
                out[f"{blocks}.{layer[2]}.{_HF_LAYER[layer[3]]}.{kind}"] = tensor
            else:
                unused.append(name)
        else:
            unused.append(name)
    for (blocks, i, kind), parts in qkv.items():
        out[f"{blocks}.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out, unused


def mae_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The MAE repository's tensors under our names (position tables apart), and what is left."""
    out, unused = {}, []
    for name, t in state.items():
        if name == "patch_embed.proj.weight":  # [D, C, p, p] -> [D, p*p*C] over (row, col, channel)
            out["encoder.patch_embed.weight"] = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
        elif name == "patch_embed.proj.bias":
            out["encoder.patch_embed.bias"] = t
        elif name in ("cls_token", "pos_embed") or name.startswith(("norm.", "blocks.")):
            out[f"encoder.{name}"] = t
        elif name in ("mask_token", "decoder_pos_embed"):
            out[f"decoder.{name.removeprefix('decoder_')}"] = t
        elif name.startswith(("decoder_embed.", "decoder_norm.", "decoder_pred.")):
            part = name.removeprefix("decoder_")
            out[f"decoder.{part}"] = t
        elif name.startswith("decoder_blocks."):
            out[f"decoder.blocks.{name.removeprefix('decoder_blocks.')}"] = t
        else:
            unused.append(name)
    renamed = {}
    for name, t in out.items():
        name = name.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")
        renamed[name] = t
    return renamed, unused


def positions_for(table: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """A stored position table ``[1, 1 + n, D]`` (cls row first) as ours ``[1, N, D]`` for
    ``grid``: the cls row dropped, the rest bicubically resized when its square grid differs
    (MAE's and HF's ``interpolate_pos_encoding``)."""
    table = table[:, 1:] if table.shape[1] != math.prod(grid) else table
    n = table.shape[1]
    if n == math.prod(grid):
        return table
    side = math.isqrt(n)
    if side * side != n or len(grid) != 2:
        raise InitError(f"position table of {n} tokens cannot be resized to the grid {grid}")
    dim = table.shape[-1]
    square = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, math.prod(grid), dim).to(table.dtype)


def load_published(model: nn.Module, path: str | Path, accept: list[str] = ()) -> Loaded:
    """Load the checkpoint at ``path`` into our MAE ``model`` (see the module docstring).
    Ours left unloaded must each start with one of ``accept`` (``decoder.`` for an encoder-only
    file), else :class:`InitError` names them; shapes must agree."""
    state, config = read_checkpoint(path)
    layout = layout_of(state)
    unused: list[str] = []
    if layout == "hf":
        state, unused = hf_to_mae(state)
    if layout in ("hf", "mae"):
        state, more = mae_to_ours(state)
        unused += more
    ours = model.state_dict()
    positions = {"encoder.pos_embed": model.encoder, "decoder.pos_embed": model.decoder}
    for name, module in positions.items():  # buffers, not in the state dict
        if name in state:
            module.pos_embed = positions_for(state.pop(name), tuple(module_grid(model))).clone()
    unused += [k for k in state if k not in ours]
    wrong = [f"{k} {tuple(state[k].shape)} vs ours {tuple(ours[k].shape)}"
             for k in state if k in ours and state[k].shape != ours[k].shape]  # fmt: skip
    if wrong:
        raise InitError(f"{path}: shapes differ: {'; '.join(wrong[:4])}")
    missing = sorted(k for k in ours if k not in state)
    refused = [k for k in missing if not any(k.startswith(a) for a in accept)]
    if refused:
        raise InitError(
            f"{path}: {len(refused)} of the model's tensors are not in it ({', '.join(refused[:4])}"
            f"{', ...' if len(refused) > 4 else ''}); accept them by prefix, e.g. "
            "pretrain.init_accept=[decoder.], to start those from scratch"
        )
    model.load_state_dict({**ours, **{k: v for k, v in state.items() if k in ours}})
    eps = config.get("layer_norm_eps")
    if eps is not None:  # HF's default 1e-12; MAE's (and ours) 1e-6
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
    return Loaded(layout, sorted(k for k in state if k in ours), missing, sorted(unused))


def module_grid(model: nn.Module) -> tuple[int, ...]:
    return model.encoder.geometry.grid
