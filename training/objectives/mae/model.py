"""Masked autoencoder with a transformer encoder that sees only the visible tokens (He et al.,
2021).

Reads top to bottom: encoder -> decoder -> the autoencoder and its loss (the transformer block is
``training.transformer``'s). The model sees tokens, not pixels: the modality turns a batch into
``[B, N, P]`` token values (image patches, spectrogram patches, tubelets) on a grid it declares
(``TokenGeometry``), and the model embeds them with a linear layer (the same map as MAE's strided
conv) plus fixed sin-cos positions of that grid. Only visible tokens are gathered and embedded,
so at 75-95% masking the encoder's cost falls with the ratio.

The decoder reconstructs only masked tokens, in either of two forms: MAE's (self-attention over
visible and mask tokens) or CrossMAE's (mask tokens cross-attend to the visible tokens and not to
each other). While training it may reconstruct a random fraction of the masked tokens; at 75-95%
masking the decoder is most of a step's cost, and these are its two levers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.modalities import TokenGeometry
from training.objectives.mae.masking import HardPatchDraw, Mask, hard_patch_mask, masked_ids
from training.positions import sincos_positions
from training.transformer import Block, gather_tokens, init_weights

PAD_ID = 0  # the padding id of id tokens (data_prep.text.tokenizer's [PAD])


class ViTEncoder(nn.Module):
    """ViT with a cls token and fixed sin-cos positions of the token grid; runs on any subset of
    tokens."""

    def __init__(self, cfg: ModelConfig, geometry: TokenGeometry, drop_path: float = 0.0):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.geometry = geometry
        # Value tokens (patches, tubelets) are projected; token ids (text) index a table.
        self.patch_embed = (
            nn.Embedding(geometry.vocab_size, cfg.embed_dim)
            if geometry.vocab_size
            else nn.Linear(geometry.values_per_token, cfg.embed_dim)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        self.register_buffer(
            "pos_embed",
            sincos_positions(cfg.embed_dim, geometry.grid)[None],
            persistent=cfg.stored_positions,
        )
        rates = torch.linspace(0, drop_path, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r, cfg.attention) for r in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6) if cfg.final_norm else nn.Identity()

    def forward(
        self,
        tokens: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        padding: bool | None = None,
    ) -> torch.Tensor:
        """Token values ``[B, N, P]`` -> encoded ``[B, 1 + K, D]`` (cls first).

        With ``ids_keep`` only those K tokens are embedded and encoded. ``padding`` (id tokens):
        whether any is the padding id, when the caller knows it from the host (None: asked of
        the tokens, a read of the device). Without a cls token (``cls_token: false``, VideoMAE's
        encoder) the tokens attend to each other only and row 0 is their mean, so every caller
        reads the same ``[B, 1 + K, D]``."""
        pos = self.pos_embed.expand(tokens.shape[0], -1, -1)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
            pos = gather_tokens(pos, ids_keep)
        x = self.patch_embed(tokens)
        if self.geometry.vocab_size:
            x = x * self.cfg.embed_dim**0.5  # see init_weights: as large as the positions
        x = x + pos.to(x.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        key_bias = self._padding_bias(tokens, padding)
        for block in self.blocks:
            x = block(x, key_bias=key_bias)
        x = self.norm(x)
        return x if self.cls_token is not None else torch.cat([x.mean(1, keepdim=True), x], 1)

    def _padding_bias(self, tokens: torch.Tensor, padding: bool | None) -> torch.Tensor | None:
        """``[B, 1, 1, 1 + N]``: -inf at padding ids (text; the cls slot is never padding); None
        without padding, so the attention runs unmasked (the fused kernel)."""
        if not self.geometry.vocab_size or padding is False:
            return None
        if self.cls_token is not None:
            tokens = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)
        pad = tokens == PAD_ID
        if padding is None and not pad.any():
            return None
        return torch.zeros(pad.shape, device=tokens.device).masked_fill(pad, float("-inf"))[
            :, None, None
        ]

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` of unmasked tokens ``[B, N, P]`` (or ids ``[B, N]``)."""
        encoded = self.forward(tokens)
        return encoded[:, 0] if self.cfg.pool == "cls" else self.mean_pool(encoded, tokens)

    def mean_pool(self, encoded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The mean of the encoded tokens ``[B, 1 + N, D]`` (cls left out), padding ids too."""
        if not self.geometry.vocab_size:
            return encoded[:, 1:].mean(dim=1)
        real = (tokens != PAD_ID).unsqueeze(-1).to(encoded.dtype)
        return (encoded[:, 1:] * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)


class MAEDecoder(nn.Module):
    """Light transformer that predicts the values of the tokens it is asked for."""

    def __init__(self, cfg: ModelConfig, geometry: TokenGeometry):
        super().__init__()
        cfg = cfg.resolved()
        dim = cfg.decoder_embed_dim
        self.cross = cfg.decoder_type == "cross"
        self.cls = cfg.cls_token  # without one, the encoder's row 0 is a mean: not decoded
        self.embed = nn.Linear(cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer(
            "pos_embed", sincos_positions(dim, geometry.grid)[None], persistent=cfg.stored_positions
        )
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.mlp_ratio, 0.0, cfg.attention, self.cross)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, geometry.values_per_token)

    def forward(
        self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor
    ) -> torch.Tensor:
        """Encoder output ``[B, 1 + K, D]`` of tokens ``ids_keep`` -> value predictions
        ``[B, S, P]`` of tokens ``ids_pred``."""
        return self.pred(self.features(latent, ids_keep, ids_pred))

    def features(
        self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's last hidden states ``[B, S, d]`` of tokens ``ids_pred``, before the value
        projection. Attention ignores token order, so tokens are placed by their position
        embeddings alone, with no un-shuffling."""
        x = self.embed(latent)
        pos = self.pos_embed.to(x.dtype).expand(x.shape[0], -1, -1)
        visible = x[:, 1:] + gather_tokens(pos, ids_keep)
        if self.cls:
            visible = torch.cat([x[:, :1], visible], dim=1)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, ids_pred)
        if self.cross:
            for block in self.blocks:
                queries = block(queries, visible)
        elif ids_keep.shape[1] == pos.shape[1]:  # nothing masked: each token predicts itself
            for block in self.blocks:
                visible = block(visible)
            queries = visible[:, int(self.cls) :]
        else:
            x = torch.cat([visible, queries], dim=1)
            for block in self.blocks:
                x = block(x)
            queries = x[:, visible.shape[1] :]
        return self.norm(queries)


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder + loss. ``predict_loss`` adds HPM's loss predictor: a linear head on the
    decoder's hidden states that learns which tokens reconstruct worst, and picks the hidden
    tokens of a ``HardPatchDraw`` (``training.objectives.mae.masking``)."""

    def __init__(self, cfg: ModelConfig, geometry: TokenGeometry, predict_loss: bool = False):
        super().__init__()
        self.cfg = cfg.resolved()
        self.geometry = geometry
        self.encoder = ViTEncoder(self.cfg, geometry)
        self.decoder = MAEDecoder(self.cfg, geometry)
        self.loss_head = nn.Linear(self.cfg.decoder_embed_dim, 1) if predict_loss else None
        init_weights(self)

    def forward(self, tokens: torch.Tensor, mask: Mask | HardPatchDraw) -> torch.Tensor:
        """Token values ``[B, N, P]`` -> the loss on the reconstructed masked tokens. A mask of
        ``V * B`` rows trains each sample under ``V`` masks (rows ``i * V ... i * V + V - 1``);
        the tokens are shared, the encoder runs once per view."""
        return self._loss_and_predictions(tokens, mask)[0]

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, predictions ``[B, N, P]``, zero where nothing was predicted): for pictures and
        tests; training does not build the full-size tensor."""
        loss, pred, ids_pred = self._loss_and_predictions(tokens, mask)
        full = pred.new_zeros(tokens.shape).scatter_(
            1, ids_pred.unsqueeze(-1).expand(-1, -1, pred.shape[-1]), pred
        )
        return loss, full

    def _loss_and_predictions(self, tokens: torch.Tensor, mask: Mask | HardPatchDraw):
        views = mask_rows(mask) // tokens.shape[0]
        if isinstance(mask, HardPatchDraw):
            # HPM scores every token of the unmasked sample; its mask hides the worst predicted.
            mask = hard_patch_mask(mask, self.predicted_loss(tokens).repeat_interleave(views, 0))
        if views > 1:
            tokens = tokens.repeat_interleave(views, 0)
        latent = self.encoder(tokens, mask.ids_keep)
        fraction = self.cfg.decoder_predict_fraction if self.training else 1.0
        ids_pred = masked_ids(mask, fraction)
        target = gather_tokens(tokens, ids_pred)
        if self.loss_head is None:
            pred = self.decoder(latent, mask.ids_keep, ids_pred)
            return reconstruction_loss(pred, target, self.cfg.norm_pix_loss), pred, ids_pred
        hidden = self.decoder.features(latent, mask.ids_keep, ids_pred)
        pred = self.decoder.pred(hidden)
        per_token = token_losses(pred, target, self.cfg.norm_pix_loss)
        ranking = loss_ranking_loss(self.loss_head(hidden).squeeze(-1).float(), per_token.detach())
        return per_token.mean() + ranking, pred, ids_pred

    @torch.no_grad()
    def predicted_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` the loss head's score of every token of unmasked samples: the encoder and
        decoder see every token once (HPM scores with an EMA teacher; this model scores itself,
        which keeps no second copy of the weights under ZeRO)."""
        b, n = tokens.shape[:2]
        every = torch.arange(n, device=tokens.device).expand(b, n)
        hidden = self.decoder.features(self.encoder(tokens), every, every)
        return self.loss_head(hidden).squeeze(-1).float()


def mask_rows(mask: Mask | HardPatchDraw) -> int:
    return (mask.noise if isinstance(mask, HardPatchDraw) else mask.ids_keep).shape[0]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error, in fp32, between predicted and target tokens ``[B, S, P]``; targets
    normalised per token when ``norm_pix`` (MAE's per-patch norm). Every token given counts: the
    decoder predicts only the (masked) tokens the loss covers."""
    return F.mse_loss(pred.float(), loss_target(target, norm_pix))


def token_losses(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """``[B, S]`` the squared error of each reconstructed token (its mean is
    :func:`reconstruction_loss`), what HPM's loss head learns to rank."""
    return (pred.float() - loss_target(target, norm_pix)).pow(2).mean(dim=-1)


@torch.no_grad()
def loss_target(target: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """The fp32 target tokens a loss compares with: normalised per token when ``norm_pix``."""
    return norm_pix_target(target.float()) if norm_pix else target.float()


def loss_ranking_loss(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """HPM's objective for the loss head, over every pair of reconstructed tokens of a sample:
    binary cross-entropy of ``predicted[j] - predicted[i]`` against whether token ``j``'s loss
    exceeds token ``i``'s (pairs of equal loss left out). Only the order is learnt, so the
    head need not follow the loss's scale as it falls."""
    diff = predicted.unsqueeze(1) - predicted.unsqueeze(2)
    above = actual.unsqueeze(1) > actual.unsqueeze(2)
    valid = above | (actual.unsqueeze(1) < actual.unsqueeze(2))
    bce = F.binary_cross_entropy_with_logits(diff, above.float(), reduction="none")
    return (bce * valid).sum() / valid.sum().clamp(min=1)


def norm_pix_target(target: torch.Tensor) -> torch.Tensor:
    """MAE's per-patch target ``(t - mean) / sqrt(var + 1e-6)`` with the unbiased variance, as one
    fused layer norm: with ``P`` values per patch, ``var = var_biased * P / (P - 1)``, so the same
    value is ``layer_norm(t, eps=1e-6 * (P - 1) / P) * sqrt((P - 1) / P)``."""
    p = target.shape[-1]
    shrink = (p - 1) / p
    return F.layer_norm(target, (p,), eps=1e-6 * shrink) * shrink**0.5
