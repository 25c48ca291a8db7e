"""Masked autoencoder with a ViT encoder that sees only the visible patches (He et al., 2021).

Reads top to bottom: transformer block -> encoder -> decoder -> the autoencoder and its loss.
Patches are embedded with a linear layer after patchifying (the same map as MAE's strided conv),
so only visible patches are gathered and embedded: at 75-95% masking the encoder's cost falls with
the ratio.

The decoder reconstructs only masked patches, in either of two forms: MAE's (self-attention over
visible and mask tokens) or CrossMAE's (mask tokens cross-attend to the visible tokens and not to
each other). While training it may reconstruct a random fraction of the masked patches; at 75-95%
masking the decoder is most of a step's cost, and these are its two levers.

Attention: fused ``scaled_dot_product_attention`` on CUDA and in fp32; in bf16 on CPU two matrix
products around a softmax, which measured 1.4-3.9x faster than the fused CPU kernel at ViT-B's
sizes, forward and backward (in fp32 the fused kernel wins; ``python -m benchmarks.attention_kernels``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.masking import Mask, masked_ids
from training.patches import patchify, sincos_pos_embed_2d


class Attention(nn.Module):
    """Multi-head self-attention, or cross-attention to ``context`` when built with ``cross``."""

    def __init__(self, dim: int, heads: int, impl: str = "auto", cross: bool = False):
        super().__init__()
        self.heads = heads
        self.impl = impl
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, dim * 2)
        else:
            self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        if context is None:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(context).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` over ``[B, H, N, d]`` heads (see the module docstring)."""
    if impl == "sdpa" or (impl == "auto" and (q.is_cuda or q.dtype == torch.float32)):
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    # In the input's dtype: torch's CPU softmax takes its max and sum in fp32 even for bf16, and
    # probabilities stored in bf16 are what fused kernels feed their second product too.
    return scores.softmax(dim=-1) @ v


class Block(nn.Module):
    """Pre-norm transformer block; ``drop_path`` is used when fine-tuning."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
        attention: str = "auto",
        cross: bool = False,
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6) if cross else None
        self.attn = Attention(dim, heads, attention, cross)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = None if self.norm_context is None else self.norm_context(context)
        x = x + _drop_path(self.attn(self.norm1(x), ctx), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class ViTEncoder(nn.Module):
    """ViT with a cls token and fixed 2-D sin-cos positions; runs on any subset of patches."""

    def __init__(self, cfg: ModelConfig, drop_path: float = 0.0):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Linear(cfg.patch_size**2 * 3, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(cfg.embed_dim, grid)[None], persistent=False
        )
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r, cfg.attention) for r in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(self, patches: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``patches`` ``[B, N, p*p*3]`` -> tokens ``[B, 1 + K, D]`` (cls first).

        With ``ids_keep`` only those K patches are embedded and encoded.
        """
        pos = self.pos_embed.expand(patches.shape[0], -1, -1)
        if ids_keep is not None:
            patches = _gather_tokens(patches, ids_keep)
            pos = _gather_tokens(pos, ids_keep)
        x = self.patch_embed(patches) + pos.to(patches.dtype)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` of normalised images (no masking)."""
        tokens = self.forward(patchify(images, self.patch_size))
        return tokens[:, 0] if self.cfg.pool == "cls" else tokens[:, 1:].mean(dim=1)


class MAEDecoder(nn.Module):
    """Light transformer that predicts the pixels of the patches it is asked for."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg = cfg.resolved()
        grid = cfg.image_size // cfg.patch_size
        dim = cfg.decoder_embed_dim
        self.cross = cfg.decoder_type == "cross"
        self.embed = nn.Linear(cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.mlp_ratio, 0.0, cfg.attention, self.cross)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, cfg.patch_size**2 * 3)

    def forward(
        self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor
    ) -> torch.Tensor:
        """Encoder tokens ``[B, 1 + K, D]`` of patches ``ids_keep`` -> pixel predictions
        ``[B, S, p*p*3]`` of patches ``ids_pred``. Attention ignores token order, so tokens are
        placed by their position embeddings alone, with no un-shuffling."""
        x = self.embed(latent)
        pos = self.pos_embed.to(x.dtype).expand(x.shape[0], -1, -1)
        visible = torch.cat([x[:, :1], x[:, 1:] + _gather_tokens(pos, ids_keep)], dim=1)
        queries = self.mask_token.to(x.dtype) + _gather_tokens(pos, ids_pred)
        if self.cross:
            for block in self.blocks:
                queries = block(queries, visible)
        elif ids_keep.shape[1] == pos.shape[1]:  # nothing masked: each token predicts itself
            for block in self.blocks:
                visible = block(visible)
            queries = visible[:, 1:]
        else:
            x = torch.cat([visible, queries], dim=1)
            for block in self.blocks:
                x = block(x)
            queries = x[:, visible.shape[1] :]
        return self.pred(self.norm(queries))


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.resolved()
        self.encoder = ViTEncoder(self.cfg)
        self.decoder = MAEDecoder(self.cfg)
        init_weights(self)

    def forward(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[B, 3, H, W]`` -> (loss on the reconstructed masked patches,
        predictions ``[B, N, p*p*3]``, zero where nothing was predicted)."""
        patches = patchify(images, self.cfg.patch_size)
        latent = self.encoder(patches, mask.ids_keep)
        fraction = self.cfg.decoder_predict_fraction if self.training else 1.0
        ids_pred = masked_ids(mask, fraction)
        pred = self.decoder(latent, mask.ids_keep, ids_pred)
        target = _gather_tokens(patches, ids_pred)
        loss = reconstruction_loss(pred, target, self.cfg.norm_pix_loss)
        with torch.no_grad():
            full = pred.new_zeros(patches.shape).scatter_(
                1, ids_pred.unsqueeze(-1).expand(-1, -1, pred.shape[-1]), pred
            )
        return loss, full


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error, in fp32, between predicted and target patches ``[B, S, P]``; targets
    normalised per patch when ``norm_pix``. Every patch given counts: the decoder predicts only
    the (masked) patches the loss covers."""
    with torch.no_grad():
        target = norm_pix_target(target.float()) if norm_pix else target.float()
    return F.mse_loss(pred.float(), target)


def norm_pix_target(target: torch.Tensor) -> torch.Tensor:
    """MAE's per-patch target ``(t - mean) / sqrt(var + 1e-6)`` with the unbiased variance, as one
    fused layer norm: with ``P`` values per patch, ``var = var_biased * P / (P - 1)``, so the same
    value is ``layer_norm(t, eps=1e-6 * (P - 1) / P) * sqrt((P - 1) / P)``."""
    p = target.shape[-1]
    shrink = (p - 1) / p
    return F.layer_norm(target, (p,), eps=1e-6 * shrink) * shrink**0.5


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def init_weights(model: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, unit layer norms, small tokens."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith(("cls_token", "mask_token")):
            nn.init.normal_(p, std=0.02)
        if name.endswith("patch_embed.weight"):
            # As MAE: initialise the patch projection like a conv kernel of the same shape.
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            nn.init.uniform_(p, -bound, bound)


def encoder_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms and tokens (as MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(("cls_token", "mask_token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
