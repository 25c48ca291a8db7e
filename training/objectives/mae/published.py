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
- ``hf-videomae``: HF ``VideoMAEForPreTraining`` (``videomae.*``, ``encoder_to_decoder``,
  ``decoder.decoder_layers.N``), ``VideoMAEModel`` or ``VideoMAEForVideoClassification``, with
  the hub's ``q_bias``/``v_bias`` or transformers 5's ``query.bias``/``value.bias``;
- ``maskmill``: our own export (``mae.safetensors``: ``encoder.*``, ``decoder.*``; or
  ``encoder.safetensors``).

What a renaming alone gets wrong, mapped here: the conv patch projection ``[D, C, p, p]`` is our
Linear over a patch flattened (row, col, channel); HF's three q, k, v Linears are our one fused
``qkv``; the position tables are the checkpoint's own (HF's sin-cos orders its halves otherwise
than ours), put in our buffers, bicubically interpolated when the grid differs (another
resolution or patch count); HF's LayerNorm eps (``config.json``, 1e-12 by default) is kept.
VideoMAE's differ more, each mapped: its tubelet projection is a ``Conv3d`` ``[D, C, t, p, p]``
(our Linear over (frame, row, col, channel)); its attention has no key bias and, in the hub's
files, separate ``q_bias``/``v_bias`` (loaded as zeros they would shift every query: mteb
#5094); ``encoder_to_decoder`` has no bias; its positions are not stored but a 1-D sin-cos table
over the flattened tubelet index (made here, spatially bicubic and temporally linear when the
grid differs); it has no cls token and, with ``use_mean_pooling``, no final norm, so the model
must say ``cls_token: false`` and ``final_norm: false`` (refused by key otherwise); its
decoder's last norm keeps torch's eps (1e-5).
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


VIDEOMAE_DECODER_NORM_EPS = 1e-5  # HF VideoMAEDecoder.norm: nn.LayerNorm(hidden) as torch makes it


def layout_of(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    projection = state.get("embeddings.patch_embeddings.projection.weight")
    if any(k.startswith(("videomae.", "encoder_to_decoder.")) for k in keys) or (
        projection is not None and projection.ndim == 5
    ):
        return "hf-videomae"
    if any(k.startswith(("vit.", "embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "maskmill"
    if "patch_embed.proj.weight" in keys:
        return "mae"
    raise InitError(f"not a known layout (HF ViTMAE / ViT / VideoMAE, the MAE repository's, "
                    f"maskmill's): "
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
        # VideoMAE's key has no bias: a zero one computes the same
        like = next(p for p in parts if p is not None)
        parts = [torch.zeros_like(like) if p is None else p for p in parts]
        out[f"{blocks}.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out, unused


def videomae_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF VideoMAE's tensors under HF ViTMAE's names, its missing biases as zeros (see the
    module docstring), so :func:`hf_to_mae` maps them on."""
    out = {}
    for name, t in state.items():
        key = name.removeprefix("videomae.")
        key = re.sub(r"\.q_bias$", ".query.bias", re.sub(r"\.v_bias$", ".value.bias", key))
        key = {"encoder_to_decoder.weight": "decoder.decoder_embed.weight",
               "mask_token": "decoder.mask_token"}.get(key, key)  # fmt: skip
        key = re.sub(r"^decoder\.norm\.", "decoder.decoder_norm.", key)
        out[re.sub(r"^decoder\.head\.", "decoder.decoder_pred.", key)] = t
    if "decoder.decoder_embed.weight" in out:
        weight = out["decoder.decoder_embed.weight"]
        out["decoder.decoder_embed.bias"] = weight.new_zeros(weight.shape[0])
    for name, weight in list(out.items()):  # qv_bias: false leaves no bias at all
        if name.endswith(".attention.attention.query.weight") and name[:-6] + "bias" not in out:
            for part in ("query", "value"):
                out[name[:-12] + f"{part}.bias"] = weight.new_zeros(weight.shape[0])
    return out


def videomae_positions(n: int, dim: int) -> torch.Tensor:
    """``[1, n, dim]`` VideoMAE's fixed table (HF ``get_sinusoid_encoding_table``): position
    ``i`` over the flattened tubelet index, channel ``2j`` ``sin(i / 10000^(2j/dim))`` and
    ``2j+1`` its cosine."""
    angle = (
        torch.arange(n, dtype=torch.float64)[:, None]
        / 10000 ** (2 * (torch.arange(dim) // 2) / dim).double()
    )
    table = angle.clone()
    table[:, 0::2], table[:, 1::2] = angle[:, 0::2].sin(), angle[:, 1::2].cos()
    return table.float()[None]


def mae_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The MAE repository's tensors under our names (position tables apart), and what is left."""
    out, unused = {}, []
    for name, t in state.items():
        if name == "patch_embed.proj.weight":  # [D, C, (t,) p, p] -> [D, (t*)p*p*C], channel last
            out["encoder.patch_embed.weight"] = t.movedim(1, -1).reshape(t.shape[0], -1)
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


def positions_for(
    table: torch.Tensor, grid: tuple[int, ...], source: tuple[int, ...] | None = None
) -> torch.Tensor:
    """A stored position table ``[1, (1 +) n, D]`` (a cls row first, if any) over the grid
    ``source`` as ours ``[1, N, D]`` for ``grid``: the cls row dropped, the rest resized when
    the grids differ (MAE's and HF's ``interpolate_pos_encoding``: bicubic over rows and
    columns; frames linearly). Without ``source``, a square grid of the table's rows."""
    table = (
        table[:, 1:] if table.shape[1] not in (math.prod(grid), math.prod(source or ())) else table
    )
    n, dim = table.shape[1:]
    if source is None:
        if n == math.prod(grid):
            return table
        side = math.isqrt(n)
        source = (side, side)
    if math.prod(source) != n or len(source) != len(grid) or len(grid) not in (2, 3):
        raise InitError(f"position table of {n} tokens cannot be resized to the grid {grid}")
    if tuple(source) == tuple(grid):
        return table
    x = table.reshape(-1, *source[-2:], dim).permute(0, 3, 1, 2).float()  # [frames, D, rows, cols]
    x = F.interpolate(x, size=grid[-2:], mode="bicubic", align_corners=False)
    if len(grid) == 3 and source[0] != grid[0]:  # [rows*cols, D, frames] resized along time
        flat = x.permute(2, 3, 1, 0).reshape(-1, dim, source[0])
        flat = F.interpolate(flat, size=grid[0], mode="linear", align_corners=False)
        x = flat.reshape(*grid[-2:], dim, grid[0]).permute(3, 2, 0, 1)
    return x.permute(0, 2, 3, 1).reshape(1, math.prod(grid), dim).to(table.dtype)


def load_published(model: nn.Module, path: str | Path, accept: list[str] = ()) -> Loaded:
    """Load the checkpoint at ``path`` into our MAE ``model`` (see the module docstring).
    Ours left unloaded must each start with one of ``accept`` (``decoder.`` for an encoder-only
    file), else :class:`InitError` names them; shapes must agree."""
    state, config = read_checkpoint(path)
    layout = layout_of(state)
    unused: list[str] = []
    if layout == "hf-videomae":
        _refuse_other_videomae_shape(model, state, path)
        state = videomae_to_hf(state)
    if layout in ("hf", "hf-videomae"):
        state, unused = hf_to_mae(state)
    if layout in ("hf", "hf-videomae", "mae"):
        state, more = mae_to_ours(state)
        unused += more
    if layout == "hf-videomae":
        state.update(_videomae_tables(state, config, module_grid(model)))
    positions = {"encoder.pos_embed": model.encoder, "decoder.pos_embed": model.decoder}
    source = _videomae_grid(config) if layout == "hf-videomae" else None
    for name, module in positions.items():  # the published table, resized to our grid
        if name in state:
            table = positions_for(state.pop(name), tuple(module_grid(model)), source)
            module.pos_embed = table.to(module.pos_embed.dtype).clone()
    ours = model.state_dict()  # after the tables: with stored_positions they are ours to load
    for name, module in positions.items():
        if name in ours:
            state[name] = module.pos_embed
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
    eps = config.get("layer_norm_eps", 1e-12 if layout == "hf-videomae" else None)
    if eps is not None:  # HF's default 1e-12; MAE's (and ours) 1e-6
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
    if layout == "hf-videomae":
        model.decoder.norm.eps = VIDEOMAE_DECODER_NORM_EPS
    return Loaded(layout, sorted(k for k in state if k in ours), missing, sorted(unused))


def _refuse_other_videomae_shape(model: nn.Module, state: dict, path) -> None:
    """VideoMAE's encoder has no cls token, and a final norm only without mean pooling: the
    model must be built the same way (``pretrain.model``), said by key."""
    has_norm = any(k.removeprefix("videomae.").startswith("layernorm.") for k in state)
    wrong = []
    if model.encoder.cls_token is not None:
        wrong.append("cls_token: false (VideoMAE has no cls token)")
    if has_norm != (not isinstance(model.encoder.norm, nn.Identity)):
        wrong.append(f"final_norm: {str(has_norm).lower()} (the file has "
                     f"{'a' if has_norm else 'no'} final layernorm: use_mean_pooling "
                     f"{str(not has_norm).lower()})")  # fmt: skip
    if wrong:
        raise InitError(f"{path} is VideoMAE's layout: set pretrain.model.{' and '.join(wrong)}")


def _videomae_grid(config: dict) -> tuple[int, int, int] | None:
    """The (frames, rows, cols) token grid of a VideoMAE ``config.json``; None without one."""
    if not config:
        return None
    size = config.get("image_size", 224)
    rows, cols = (size, size) if isinstance(size, int) else size
    patch = config.get("patch_size", 16)
    return (
        config.get("num_frames", 16) // config.get("tubelet_size", 2),
        rows // patch,
        cols // patch,
    )


def _videomae_tables(state: dict, config: dict, grid: tuple[int, ...]) -> dict:
    """VideoMAE's position tables, which its files do not hold, over the checkpoint's grid
    (ours when it has no ``config.json``): the encoder's, and the decoder's with a decoder."""
    n = math.prod(_videomae_grid(config) or grid)
    tables = {
        "encoder.pos_embed": videomae_positions(n, state["encoder.patch_embed.weight"].shape[0])
    }
    if "decoder.embed.weight" in state:
        tables["decoder.pos_embed"] = videomae_positions(n, state["decoder.embed.weight"].shape[0])
    return tables


def module_grid(model: nn.Module) -> tuple[int, ...]:
    return model.encoder.geometry.grid
