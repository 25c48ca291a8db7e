"""Transformer pieces shared by every objective and modality: attention, the pre-norm block,
token gathering and MAE's initialisation.

Attention: fused ``scaled_dot_product_attention`` on CUDA and in fp32; in bf16 on CPU two matrix
products around a softmax, which measured 1.4-3.9x faster than the fused CPU kernel at ViT-B's
sizes, forward and backward (in fp32 the fused kernel wins; ``python -m benchmarks.attention_kernels``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


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

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        if context is None:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(context).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, self.impl, key_bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    impl: str = "auto",
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ / √d + key_bias) v`` over ``[B, H, N, d]`` heads (see the module
    docstring); ``key_bias`` ``[B, 1, 1, N]`` is added to every query's scores (-inf: a padding
    token no one attends to)."""
    if impl == "sdpa" or (impl == "auto" and (q.is_cuda or q.dtype == torch.float32)):
        bias = None if key_bias is None else key_bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if key_bias is not None:
        scores = scores + key_bias.to(scores.dtype)
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
        # [B, 2] uniform draws deciding which samples drop the attention and MLP branches this
        # forward (set by a fine-tuning model per step, so that the drops belong to the samples,
        # not to a rank's random state); None: drawn here.
        self.path_draws: torch.Tensor | None = None
        # Activation checkpointing (checkpoint_blocks): keep only the block's input for the
        # backward pass and run the block again there.
        self.checkpointed = False

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.checkpointed and self.training and torch.is_grad_enabled():
            # Non-reentrant: works under ZeRO's hooks and torch.compile, and replays the
            # random state, so drop path draws the same in the recomputation.
            return torch.utils.checkpoint.checkpoint(
                self._forward, x, context, key_bias, use_reentrant=False
            )
        return self._forward(x, context, key_bias)

    def _forward(
        self, x: torch.Tensor, context: torch.Tensor | None, key_bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx = None if self.norm_context is None else self.norm_context(context)
        pd = self.path_draws
        draws = (None, None) if pd is None else (pd[:, 0], pd[:, 1])
        attn = self.attn(self.norm1(x), ctx, key_bias)
        x = x + drop_path(attn, self.drop_path, self.training, draws[0])
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, draws[1])


def checkpoint_blocks(model: nn.Module) -> int:
    """Turn on activation checkpointing in every transformer block of ``model`` (encoder and
    decoder); returns how many. A block then keeps its input alone for the backward pass
    (``[B, T, D]``) instead of every intermediate (~6x that plus the attention and MLP widths)
    and runs its forward again there: ~1/3 more compute for much less activation memory
    (benchmarks/activation_checkpointing.py)."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.checkpointed = True
    return len(blocks)


def drop_path(
    x: torch.Tensor, p: float, training: bool, draws: torch.Tensor | None = None
) -> torch.Tensor:
    """Stochastic depth: drop a sample's residual branch with probability ``p`` (sample ``i``
    when ``draws[i] < p``, given uniform ``draws`` ``[B]``)."""
    if p == 0.0 or not training:
        return x
    if draws is None:
        draws = torch.rand(x.shape[0], device=x.device)
    keep = (draws.to(x.device) >= p).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    return x * keep / (1 - p)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` ``[B, K]`` of each sample's tokens ``[B, N, D]`` -> ``[B, K, D]``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def init_weights(model: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, unit layer norms, small tokens."""
    tables = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            # Token ids (text): N(0, 1/d), read scaled by √d (the Transformer's), so a token's
            # embedding is as large as its sin-cos position and the tied head starts near 1/V.
            nn.init.normal_(m.weight, std=m.weight.shape[1] ** -0.5)
            tables.add(id(m.weight))
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith(("cls_token", "mask_token")):
            nn.init.normal_(p, std=0.02)
        if name.endswith("patch_embed.weight") and id(p) not in tables:
            # As MAE: initialise the token projection like a conv kernel of the same shape.
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            nn.init.uniform_(p, -bound, bound)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
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
